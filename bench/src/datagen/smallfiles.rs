//! Many small files of lines: per-file overhead (open, walk, shard, ledger)
//! rather than bytes. A million files are spread over directories of at
//! most [`FAN_OUT`] entries, so creating and walking them stays practical.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::lines::{LinesGenerator, LinesSpec};
use super::sink::{Compression, LineWriter};
use super::{DatasetTotals, check_ratio};

/// Entries per directory, at most.
const FAN_OUT: u64 = 1_000;
/// Buffer per file: a small file is written in one call, and the buffer is
/// small enough that the allocator recycles it (a megabyte would be
/// mapped and unmapped for every file).
const BUFFER_BYTES: usize = 64 << 10;

/// A many-small-files dataset. The same spec always produces the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SmallFilesSpec {
    pub files: u64,
    /// Approximate size of each file (records of the `lines` kind, 20-120
    /// bytes, are appended until it is reached).
    pub bytes_per_file: u64,
    /// Fraction of records repeating an earlier record, mostly from other
    /// files (a file holds a dozen records).
    pub duplicate_ratio: f64,
    pub seed: u64,
}

impl SmallFilesSpec {
    /// 2,500 files of ~1 KiB, 30% duplicates, seed 42.
    pub fn sample() -> Self {
        Self {
            files: 2_500,
            bytes_per_file: 1 << 10,
            duplicate_ratio: 0.3,
            seed: 42,
        }
    }
}

/// Writes `files` plain files under `dir`: `000/000000.txt` ...
/// `999/999999.txt` for a million (`000.txt` ... with no subdirectory for
/// at most 1000; a directory level more per factor of 1000).
/// Zero-padded names make the walk's name order the generation order.
/// Every record ends in '\n'. No file is synced: a benchmark's data needs
/// no durability, and a million fsyncs would take longer than the rest.
pub fn write_small_files(dir: &Path, spec: &SmallFilesSpec) -> io::Result<DatasetTotals> {
    check_ratio("duplicate_ratio", spec.duplicate_ratio)?;
    let lines = LinesSpec {
        files: 1,
        bytes_per_file: spec.bytes_per_file,
        duplicate_ratio: spec.duplicate_ratio,
        edge_cases: false,
        compression: Vec::new(),
        seed: spec.seed,
        ..LinesSpec::sample()
    };
    let mut generator = LinesGenerator::new(&lines);
    let levels = levels(spec.files);
    let mut totals = DatasetTotals::default();
    for index in 0..spec.files {
        let path = small_file_path(dir, index, levels);
        // Each leaf directory starts at a multiple of FAN_OUT.
        if index % FAN_OUT == 0 {
            fs::create_dir_all(path.parent().expect("a file has a parent"))?;
        }
        let mut out = LineWriter::with_buffer(path, Compression::Plain, BUFFER_BYTES)?;
        generator.fill_file(&mut out, false, false)?;
        totals.add(&out.finish()?);
    }
    Ok(totals)
}

/// Base-[`FAN_OUT`] digits needed to number `files` files (at least one).
fn levels(files: u64) -> u32 {
    let mut levels = 1;
    while FAN_OUT.pow(levels) < files {
        levels += 1;
    }
    levels
}

/// The higher digits of `index` name its directories, the whole index its
/// file.
fn small_file_path(dir: &Path, index: u64, levels: u32) -> PathBuf {
    let mut path = dir.to_path_buf();
    for level in (1..levels).rev() {
        path.push(format!("{:03}", index / FAN_OUT.pow(level) % FAN_OUT));
    }
    let width = 3 * levels as usize;
    path.push(format!("{index:0width$}.txt"));
    path
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::datagen::testutil::lines;

    /// Files under a directory, depth first in name order, as quern walks.
    fn files_in_name_order(dir: &Path) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        entries
            .into_iter()
            .flat_map(|p| {
                if p.is_dir() {
                    files_in_name_order(&p)
                } else {
                    vec![p]
                }
            })
            .collect()
    }

    #[test]
    fn levels_grow_per_factor_of_the_fan_out() {
        assert_eq!(levels(0), 1);
        assert_eq!(levels(1_000), 1);
        assert_eq!(levels(1_001), 2);
        assert_eq!(levels(1_000_000), 2);
        assert_eq!(levels(1_000_001), 3);
        let p = small_file_path(Path::new("d"), 123_456, 2);
        assert_eq!(p, Path::new("d/123/123456.txt"));
    }

    #[test]
    fn spreads_files_over_small_directories_in_generation_order() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SmallFilesSpec::sample();
        let totals = write_small_files(dir.path(), &spec).unwrap();
        let files = files_in_name_order(dir.path());
        assert_eq!(totals.files, 2_500);
        assert_eq!(files.len(), 2_500);
        let top: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(top.len(), 3);
        for (i, path) in files.iter().enumerate() {
            assert_eq!(path, &small_file_path(dir.path(), i as u64, 2));
            assert!(fs::read_dir(path.parent().unwrap()).unwrap().count() as u64 <= FAN_OUT);
        }
        let (mut records, mut bytes) = (0, 0);
        for path in &files {
            let data = fs::read(path).unwrap();
            assert!(data.len() as u64 >= spec.bytes_per_file && data.len() < 1_200);
            assert_eq!(data.last(), Some(&b'\n'));
            records += lines(&data).len() as u64;
            bytes += data.len() as u64;
        }
        assert_eq!(
            (totals.records, totals.uncompressed_bytes),
            (records, bytes)
        );
    }

    #[test]
    fn same_spec_gives_same_bytes_and_the_asked_duplicates() {
        let contents = |spec: &SmallFilesSpec| {
            let dir = tempfile::tempdir().unwrap();
            write_small_files(dir.path(), spec).unwrap();
            files_in_name_order(dir.path())
                .iter()
                .map(|p| fs::read(p).unwrap())
                .collect::<Vec<_>>()
        };
        let spec = SmallFilesSpec::sample();
        let first = contents(&spec);
        assert_eq!(first, contents(&spec));
        assert_ne!(first, contents(&SmallFilesSpec { seed: 7, ..spec }));

        let all: Vec<&[u8]> = first.iter().flat_map(|c| lines(c)).collect();
        let distinct: HashSet<&[u8]> = all.iter().copied().collect();
        let observed = 1.0 - distinct.len() as f64 / all.len() as f64;
        assert!((observed - 0.3).abs() < 0.02, "observed {observed}");
    }
}
