//! Deterministic dataset generation.
//!
//! Every byte written depends only on the spec (including its seed): the
//! whole dataset is drawn from one [`ChaCha8Rng`] stream, consumed
//! sequentially file after file. ChaCha8 is used rather than `SmallRng`
//! because its output is documented to be stable across platforms and rand
//! versions, so a seed names the same dataset everywhere; bytes are drawn in
//! bulk (one `fill_bytes` per record), which keeps it far from being the
//! bottleneck.
//!
//! Memory stays bounded regardless of output size: records stream through
//! buffered (optionally compressing) writers, and duplicates are drawn from
//! a bounded pool of earlier records (ring plus reservoir, see `pool.rs`;
//! log copies wait in a bounded buffer, see `logs.rs`).
//!
//! Shapes: random printable `lines` (with edge cases), real-shaped URLs,
//! paths and log lines (`shaped.rs`, skewed by `vocab.rs`), many small
//! files of lines (`smallfiles.rs`), keyed TSV and file inventories.

mod alphabet;
mod inventory;
mod lines;
mod logs;
mod paths;
mod pool;
mod shaped;
mod sink;
mod smallfiles;
mod tsv;
mod urls;
mod vocab;

use std::io;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use inventory::{InventorySpec, PATH_LEN, write_inventory_dataset};
pub use lines::{LinesSpec, ensure_sample_dataset, write_lines_dataset};
pub use shaped::{Shape, ShapeSpec, write_shape_dataset};
pub use sink::Compression;
pub use smallfiles::{SmallFilesSpec, write_small_files};
pub use tsv::{TsvSpec, write_tsv_dataset};

/// One file written by a generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    /// Records as `sort` counts them: newlines, plus one if the file is
    /// non-empty and its last byte is not a newline.
    pub records: u64,
    /// Size after decompression (equal to the file size for plain files).
    pub uncompressed_bytes: u64,
    pub compression: Compression,
}

/// Everything a generator wrote, in file order, with totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedDataset {
    pub files: Vec<GeneratedFile>,
    pub records: u64,
    pub uncompressed_bytes: u64,
}

/// Counts over a dataset, for generators that do not list every file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatasetTotals {
    pub files: u64,
    pub records: u64,
    pub uncompressed_bytes: u64,
}

impl DatasetTotals {
    fn add(&mut self, file: &GeneratedFile) {
        self.files += 1;
        self.records += file.records;
        self.uncompressed_bytes += file.uncompressed_bytes;
    }
}

impl GeneratedDataset {
    pub fn totals(&self) -> DatasetTotals {
        DatasetTotals {
            files: self.files.len() as u64,
            records: self.records,
            uncompressed_bytes: self.uncompressed_bytes,
        }
    }

    fn from_files(files: Vec<GeneratedFile>) -> Self {
        let records = files.iter().map(|f| f.records).sum();
        let uncompressed_bytes = files.iter().map(|f| f.uncompressed_bytes).sum();
        Self {
            files,
            records,
            uncompressed_bytes,
        }
    }
}

fn rng_for(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn check_ratio(name: &str, ratio: f64) -> io::Result<()> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(invalid_input(format!(
            "{name} must be in [0, 1], got {ratio}"
        )))
    }
}

/// Shared helpers for reading generated datasets back in tests.
#[cfg(test)]
mod testutil {
    use std::io::Read;

    use super::{Compression, GeneratedFile};

    /// The file's content after decompression.
    pub fn decoded(file: &GeneratedFile) -> Vec<u8> {
        let raw = std::fs::read(&file.path).unwrap();
        match file.compression {
            Compression::Plain => raw,
            Compression::Gzip => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Compression::Zstd => zstd::decode_all(&raw[..]).unwrap(),
        }
    }

    /// Records as `sort` sees them: a final line without '\n' still counts.
    pub fn lines(data: &[u8]) -> Vec<&[u8]> {
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        if data.is_empty() {
            Vec::new()
        } else {
            body.split(|&b| b == b'\n').collect()
        }
    }

    /// `sort`'s record count, computed independently of [`lines`].
    pub fn sort_record_count(data: &[u8]) -> u64 {
        let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
    }
}
