//! `quern-datagen`: writes reproducible benchmark datasets.
//!
//! ```text
//! quern-datagen lines --out /tmp/g --files 10 --size 200MiB --dup 0.3 --seed 1
//! quern-datagen urls --out /tmp/u --files 10 --size 200MiB --dup 0.3 --compress plain,gzip
//! quern-datagen smallfiles --out /tmp/s --files 1000000 --size 1KiB
//! quern-datagen tsv --out /tmp/t --files 4 --records 1000000 --key-field 2
//! quern-datagen inventory --out /tmp/i --files 10 --records 1000000 --relisted 0.1
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bench::datagen::{
    Compression, DatasetTotals, InventorySpec, LinesSpec, Shape, ShapeSpec, SmallFilesSpec,
    TsvSpec, write_inventory_dataset, write_lines_dataset, write_shape_dataset, write_small_files,
    write_tsv_dataset,
};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Generate deterministic datasets for Quern benchmarks and tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Line files, optionally compressed, with duplicates and edge cases.
    Lines {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = LinesSpec::sample().files)]
        files: usize,
        /// Approximate uncompressed size per file: 4096, 256KiB, 200MiB, 1G.
        #[arg(long, default_value = "256KiB", value_parser = parse_size)]
        size: u64,
        /// Shortest record in bytes, excluding the newline.
        #[arg(long, default_value_t = LinesSpec::sample().min_len)]
        min_len: usize,
        /// Longest record in bytes, excluding the newline.
        #[arg(long, default_value_t = LinesSpec::sample().max_len)]
        max_len: usize,
        /// Fraction of records repeating an earlier record.
        #[arg(long, default_value_t = LinesSpec::sample().duplicate_ratio)]
        dup: f64,
        /// Add empty/CRLF/NUL/non-UTF-8/whitespace lines and special files.
        #[arg(long)]
        edge_cases: bool,
        /// Compression cycled over files, e.g. plain,gzip,zstd.
        #[arg(long, value_delimiter = ',', default_value = "plain")]
        compress: Vec<Compression>,
        #[arg(long, default_value_t = LinesSpec::sample().seed)]
        seed: u64,
    },
    /// URLs, mostly sharing the `https://www.` prefix, with skewed domains.
    Urls(ShapeArgs),
    /// Absolute paths in a deep tree with skewed fan-out, mostly under /srv.
    Paths(ShapeArgs),
    /// Log lines of several services, timestamps growing through each file.
    Logs(ShapeArgs),
    /// Many small files of lines, at most 1000 entries per directory.
    Smallfiles {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = SmallFilesSpec::sample().files)]
        files: u64,
        /// Approximate size per file.
        #[arg(long, default_value = "1KiB", value_parser = parse_size)]
        size: u64,
        /// Fraction of records repeating an earlier record.
        #[arg(long, default_value_t = SmallFilesSpec::sample().duplicate_ratio)]
        dup: f64,
        #[arg(long, default_value_t = SmallFilesSpec::sample().seed)]
        seed: u64,
    },
    /// A file inventory: path, size, mtime and md5 per line, keyed by path.
    Inventory {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = InventorySpec::sample().files)]
        files: usize,
        /// Records per file.
        #[arg(long, default_value_t = InventorySpec::sample().records_per_file)]
        records: u64,
        /// Fraction of records listing an earlier path again, changed.
        #[arg(long, default_value_t = InventorySpec::sample().relisted_ratio)]
        relisted: f64,
        #[arg(long, default_value_t = InventorySpec::sample().seed)]
        seed: u64,
    },
    /// Tab-separated records with repeated keys, for keyed ingest.
    Tsv {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = TsvSpec::sample().files)]
        files: usize,
        /// Records per file.
        #[arg(long, default_value_t = TsvSpec::sample().records_per_file)]
        records: u64,
        /// Fields per record (at least 2).
        #[arg(long, default_value_t = TsvSpec::sample().fields)]
        fields: usize,
        /// 1-based position of the key field.
        #[arg(long, default_value_t = TsvSpec::sample().key_field)]
        key_field: usize,
        /// Fraction of records repeating an earlier key.
        #[arg(long, default_value_t = TsvSpec::sample().duplicate_key_ratio)]
        dup: f64,
        #[arg(long, default_value_t = TsvSpec::sample().seed)]
        seed: u64,
    },
}

/// The options of the real-shaped line datasets (whose sample specs differ
/// only in their shape).
#[derive(Args)]
struct ShapeArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = ShapeSpec::sample(Shape::Urls).files)]
    files: usize,
    /// Approximate uncompressed size per file: 4096, 256KiB, 200MiB, 1G.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    size: u64,
    /// Fraction of records repeating an earlier record (below 1 for logs).
    #[arg(long, default_value_t = ShapeSpec::sample(Shape::Urls).duplicate_ratio)]
    dup: f64,
    /// Compression cycled over files, e.g. plain,gzip,zstd.
    #[arg(long, value_delimiter = ',', default_value = "plain")]
    compress: Vec<Compression>,
    #[arg(long, default_value_t = ShapeSpec::sample(Shape::Urls).seed)]
    seed: u64,
}

impl ShapeArgs {
    fn write(self, shape: Shape) -> Result<(PathBuf, DatasetTotals)> {
        let spec = ShapeSpec {
            shape,
            files: self.files,
            bytes_per_file: self.size,
            duplicate_ratio: self.dup,
            compression: self.compress,
            seed: self.seed,
        };
        let dataset = write_shape_dataset(&self.out, &spec)
            .with_context(|| format!("writing {shape} dataset to {}", self.out.display()))?;
        Ok((self.out, dataset.totals()))
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>().map(|b| b.as_u64())
}

fn main() -> Result<()> {
    let started = Instant::now();
    let (out, totals) = match Cli::parse().command {
        Command::Lines {
            out,
            files,
            size,
            min_len,
            max_len,
            dup,
            edge_cases,
            compress,
            seed,
        } => {
            let spec = LinesSpec {
                files,
                bytes_per_file: size,
                min_len,
                max_len,
                duplicate_ratio: dup,
                edge_cases,
                compression: compress,
                seed,
            };
            let dataset = write_lines_dataset(&out, &spec)
                .with_context(|| format!("writing lines dataset to {}", out.display()))?;
            (out, dataset.totals())
        }
        Command::Urls(args) => args.write(Shape::Urls)?,
        Command::Paths(args) => args.write(Shape::Paths)?,
        Command::Logs(args) => args.write(Shape::Logs)?,
        Command::Smallfiles {
            out,
            files,
            size,
            dup,
            seed,
        } => {
            let spec = SmallFilesSpec {
                files,
                bytes_per_file: size,
                duplicate_ratio: dup,
                seed,
            };
            let totals = write_small_files(&out, &spec)
                .with_context(|| format!("writing small files to {}", out.display()))?;
            (out, totals)
        }
        Command::Inventory {
            out,
            files,
            records,
            relisted,
            seed,
        } => {
            let spec = InventorySpec {
                files,
                records_per_file: records,
                relisted_ratio: relisted,
                seed,
            };
            let dataset = write_inventory_dataset(&out, &spec)
                .with_context(|| format!("writing inventory to {}", out.display()))?;
            (out, dataset.totals())
        }
        Command::Tsv {
            out,
            files,
            records,
            fields,
            key_field,
            dup,
            seed,
        } => {
            let spec = TsvSpec {
                files,
                records_per_file: records,
                fields,
                key_field,
                duplicate_key_ratio: dup,
                seed,
            };
            let dataset = write_tsv_dataset(&out, &spec)
                .with_context(|| format!("writing TSV dataset to {}", out.display()))?;
            (out, dataset.totals())
        }
    };
    println!(
        "{}",
        summary(&out, &totals, started.elapsed().as_secs_f64())
    );
    Ok(())
}

fn summary(out: &Path, totals: &DatasetTotals, seconds: f64) -> String {
    let seconds = seconds.max(1e-9);
    format!(
        "{}: {} files, {} records, {} bytes ({}) uncompressed in {seconds:.2}s ({}/s, {:.0} files/s)",
        out.display(),
        totals.files,
        totals.records,
        totals.uncompressed_bytes,
        ByteSize(totals.uncompressed_bytes),
        ByteSize((totals.uncompressed_bytes as f64 / seconds) as u64),
        totals.files as f64 / seconds,
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sizes_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("200MiB"), Ok(200 << 20));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn parses_compression_lists() {
        let cli = Cli::try_parse_from([
            "quern-datagen",
            "lines",
            "--out",
            "/tmp/x",
            "--compress",
            "plain,gzip,zstd",
        ])
        .unwrap();
        let Command::Lines { compress, size, .. } = cli.command else {
            panic!("expected lines");
        };
        assert_eq!(
            compress,
            [Compression::Plain, Compression::Gzip, Compression::Zstd]
        );
        assert_eq!(size, 256 << 10);
    }

    #[test]
    fn parses_each_shape_with_the_shared_options() {
        for shape in ["urls", "paths", "logs"] {
            let cli = Cli::try_parse_from([
                "quern-datagen",
                shape,
                "--out",
                "/tmp/x",
                "--files",
                "3",
                "--size",
                "1MiB",
                "--dup",
                "0.2",
            ])
            .unwrap();
            let (Command::Urls(args) | Command::Paths(args) | Command::Logs(args)) = cli.command
            else {
                panic!("expected a shape");
            };
            assert_eq!((args.files, args.size, args.dup), (3, 1 << 20, 0.2));
            assert_eq!(args.compress, [Compression::Plain]);
        }
    }
}
