//! Real-shaped line datasets: URLs, file paths and log lines, whose keys
//! share long prefixes and whose parts follow skewed popularity, as real
//! inputs do (random printable lines, the `lines` shape, share almost
//! nothing). Each shape builds fresh records in its own module; this one
//! holds the spec, writes the files and, for URLs and paths, draws
//! duplicates from the pool of earlier records.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::str::FromStr;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::logs::Logs;
use super::paths::Paths;
use super::pool::Pool;
use super::sink::{Compression, LineWriter, cycled, part_path};
use super::urls::Urls;
use super::{GeneratedDataset, check_ratio, rng_for};

/// What the records look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `https://www.kaka.com/en/products/83721?utm_source=...`
    Urls,
    /// `/srv/data/projects/riko/src/core/utils/main_1234.rs`
    Paths,
    /// `2026-12-06T04:55:12.123456Z host-17 nginx[2231]: GET /api/...`
    Logs,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Urls, Shape::Paths, Shape::Logs];
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Urls => "urls",
            Shape::Paths => "paths",
            Shape::Logs => "logs",
        })
    }
}

impl FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.to_string() == s)
            .ok_or_else(|| format!("unknown shape {s:?} (urls, paths, logs)"))
    }
}

/// A real-shaped dataset. The same spec always produces the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeSpec {
    pub shape: Shape,
    pub files: usize,
    /// Approximate uncompressed size of each file: records are appended
    /// until it is reached.
    pub bytes_per_file: u64,
    /// Fraction of records repeating an earlier record, in the same file or
    /// another one (for logs: below 1, see `logs.rs`).
    pub duplicate_ratio: f64,
    /// Cycled over files; empty means all plain.
    pub compression: Vec<Compression>,
    pub seed: u64,
}

impl ShapeSpec {
    /// 4 plain files of ~256 KiB, 30% duplicates, seed 42.
    pub fn sample(shape: Shape) -> Self {
        Self {
            shape,
            files: 4,
            bytes_per_file: 256 << 10,
            duplicate_ratio: 0.3,
            compression: Vec::new(),
            seed: 42,
        }
    }
}

/// Writes `part-00000.txt`, `part-00001.txt.gz`, ... into `dir`, creating
/// it if needed; every record ends in '\n'.
pub fn write_shape_dataset(dir: &Path, spec: &ShapeSpec) -> io::Result<GeneratedDataset> {
    check_ratio("duplicate_ratio", spec.duplicate_ratio)?;
    fs::create_dir_all(dir)?;
    let rng = rng_for(spec.seed);
    match spec.shape {
        Shape::Urls => write_files(dir, spec, &mut Pooled::new(rng, spec, Urls::new())),
        Shape::Paths => write_files(dir, spec, &mut Pooled::new(rng, spec, Paths::new())),
        Shape::Logs => write_files(dir, spec, &mut Logs::new(rng, spec)?),
    }
}

/// A stream of records spread over a dataset's files.
pub(crate) trait Records {
    /// Called before file `index` (of `files`) gets its first record.
    fn begin_file(&mut self, _index: usize, _files: usize) {}
    /// Writes the next record, or several.
    fn emit(&mut self, out: &mut LineWriter) -> io::Result<()>;
    /// Called once the file has its size, before it is closed.
    fn end_file(&mut self, _out: &mut LineWriter) -> io::Result<()> {
        Ok(())
    }
}

fn write_files(
    dir: &Path,
    spec: &ShapeSpec,
    records: &mut dyn Records,
) -> io::Result<GeneratedDataset> {
    let mut files = Vec::with_capacity(spec.files);
    for i in 0..spec.files {
        let compression = cycled(&spec.compression, i);
        let mut out = LineWriter::create(part_path(dir, i, compression), compression)?;
        records.begin_file(i, spec.files);
        while out.bytes() < spec.bytes_per_file {
            records.emit(&mut out)?;
        }
        records.end_file(&mut out)?;
        files.push(out.finish()?);
    }
    Ok(GeneratedDataset::from_files(files))
}

/// Builds one fresh record of a shape.
pub(crate) trait FreshRecord {
    /// Upper bound of a record's length, to size the duplicate pool.
    const MAX_LEN: usize;
    /// Appends a new record to the empty `record` (never a '\n').
    fn fresh(&mut self, rng: &mut ChaCha8Rng, record: &mut Vec<u8>);
}

/// Fresh records of one shape, with duplicates copied from a bounded pool of
/// earlier ones (near and far, in this file or earlier ones), as `lines`
/// draws them.
struct Pooled<F> {
    rng: ChaCha8Rng,
    fresh: F,
    pool: Pool,
    duplicate_ratio: f64,
    record: Vec<u8>,
}

impl<F: FreshRecord> Pooled<F> {
    fn new(rng: ChaCha8Rng, spec: &ShapeSpec, fresh: F) -> Self {
        Self {
            rng,
            fresh,
            pool: Pool::new(F::MAX_LEN),
            duplicate_ratio: spec.duplicate_ratio,
            record: Vec::with_capacity(F::MAX_LEN),
        }
    }
}

impl<F: FreshRecord> Records for Pooled<F> {
    fn emit(&mut self, out: &mut LineWriter) -> io::Result<()> {
        if self.rng.random_bool(self.duplicate_ratio)
            && let Some(earlier) = self.pool.pick(&mut self.rng)
        {
            return out.write_line(earlier);
        }
        self.record.clear();
        self.fresh.fresh(&mut self.rng, &mut self.record);
        debug_assert!(self.record.len() <= F::MAX_LEN && !self.record.contains(&b'\n'));
        out.write_line(&self.record)?;
        self.pool.push(&mut self.rng, &self.record);
        Ok(())
    }
}

/// Checks every shape must pass; each shape's module adds its own.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::hash_map::Entry;
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::datagen::testutil::{decoded, lines};

    pub(crate) fn spec(shape: Shape) -> ShapeSpec {
        ShapeSpec {
            bytes_per_file: 128 << 10,
            ..ShapeSpec::sample(shape)
        }
    }

    /// Each file's decoded lines, after generating `spec` into a temp dir.
    pub(crate) fn generate(spec: &ShapeSpec) -> Vec<Vec<Vec<u8>>> {
        let dir = tempfile::tempdir().unwrap();
        let dataset = write_shape_dataset(dir.path(), spec).unwrap();
        dataset
            .files
            .iter()
            .map(|f| lines(&decoded(f)).into_iter().map(<[u8]>::to_vec).collect())
            .collect()
    }

    /// Same spec, same bytes; another seed, other bytes.
    pub(crate) fn assert_deterministic(shape: Shape) {
        let spec = ShapeSpec {
            compression: vec![Compression::Plain, Compression::Gzip, Compression::Zstd],
            ..spec(shape)
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = write_shape_dataset(a.path(), &spec).unwrap();
        let second = write_shape_dataset(b.path(), &spec).unwrap();
        assert_eq!(first.files.len(), 4);
        for (x, y) in first.files.iter().zip(&second.files) {
            assert_eq!(x.path.file_name(), y.path.file_name());
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
        }
        assert_eq!(first.records, second.records);
        assert_ne!(
            generate(&spec)[0],
            generate(&ShapeSpec { seed: 43, ..spec })[0]
        );
    }

    /// The asked share of records repeat an earlier one, both within a
    /// file and across files; files reach their size.
    pub(crate) fn assert_duplicates_as_asked(shape: Shape) {
        for ratio in [0.0, 0.3, 0.6] {
            let spec = ShapeSpec {
                duplicate_ratio: ratio,
                ..spec(shape)
            };
            let files = generate(&spec);
            let all: Vec<&[u8]> = files.iter().flatten().map(Vec::as_slice).collect();
            let distinct: HashSet<&[u8]> = all.iter().copied().collect();
            let observed = 1.0 - distinct.len() as f64 / all.len() as f64;
            assert!(
                (observed - ratio).abs() < 0.02,
                "{shape}: asked {ratio}, observed {observed}"
            );
            // Repeats of a record in the file it first appeared in, and in others.
            let mut first_file: HashMap<&[u8], usize> = HashMap::new();
            let (mut same_file, mut other_file) = (0, 0);
            for (i, file) in files.iter().enumerate() {
                let bytes: usize = file.iter().map(|l| l.len() + 1).sum();
                assert!(
                    bytes as u64 >= spec.bytes_per_file,
                    "{shape}: file {i} short"
                );
                for line in file {
                    match first_file.entry(line) {
                        Entry::Vacant(e) => {
                            e.insert(i);
                        }
                        Entry::Occupied(e) if *e.get() == i => same_file += 1,
                        Entry::Occupied(_) => other_file += 1,
                    }
                }
            }
            if ratio > 0.0 {
                assert!(same_file > 0, "{shape}: no duplicates within a file");
                assert!(other_file > 0, "{shape}: no duplicates across files");
            }
        }
    }

    /// Neighbouring records in sorted order share a prefix this long on
    /// average: the point of real-shaped data.
    pub(crate) fn mean_shared_prefix(shape: Shape) -> f64 {
        let mut all: Vec<Vec<u8>> = generate(&spec(shape)).into_iter().flatten().collect();
        all.sort_unstable();
        all.dedup();
        let shared: usize = all
            .windows(2)
            .map(|w| w[0].iter().zip(&w[1]).take_while(|(a, b)| a == b).count())
            .sum();
        shared as f64 / (all.len() - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_names_round_trip() {
        for shape in Shape::ALL {
            assert_eq!(shape.to_string().parse::<Shape>(), Ok(shape));
        }
        assert!("lines".parse::<Shape>().is_err());
    }

    #[test]
    fn rejects_a_ratio_outside_zero_to_one() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ShapeSpec {
            duplicate_ratio: 1.5,
            ..ShapeSpec::sample(Shape::Urls)
        };
        let err = write_shape_dataset(dir.path(), &spec).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
