//! Shards: what one scan reads, a whole file or a byte range of a large
//! plain file, and how a listed file is cut into them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::listing::STDIN;
use super::source::{self, Compression};

/// A file of the job's input, as it was when listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Position in input order within the job.
    pub seq: u32,
    pub path: PathBuf,
    /// 0 for standard input, whose size is unknown until it is read.
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl InputFile {
    /// Whether this is standard input rather than a file. The walk never
    /// lists a file under the bare name `-` (a glob match `-` becomes `./-`).
    pub fn is_stdin(&self) -> bool {
        self.path.as_os_str() == STDIN
    }
}

/// The part of a file one scan covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRange {
    /// The whole file, decompressed if it is compressed.
    Whole,
    /// Records of a plain file that start in `[start, end)`.
    Bytes { start: u64, end: u64 },
}

/// A node's unit of scanning: a whole file, or a byte range of a large
/// plain file.
#[derive(Debug, Clone)]
pub struct Shard {
    pub file: Arc<InputFile>,
    pub range: ShardRange,
}

impl Shard {
    /// The file bytes this shard covers, as listed (compressed bytes for a
    /// compressed file).
    pub fn listed_bytes(&self) -> u64 {
        match self.range {
            ShardRange::Whole => self.file.size,
            ShardRange::Bytes { start, end } => end - start,
        }
    }
}

/// Cuts a file into shards: plain files larger than `split_bytes` into
/// ranges scanned in parallel; compressed and small files, and standard
/// input (which can be read only once, in order), whole.
pub fn plan_shards(file: Arc<InputFile>, split_bytes: u64) -> impl Iterator<Item = Shard> {
    let size = file.size;
    // A file we cannot open now is scanned whole, and the scan reports why.
    let split = size > split_bytes
        && !file.is_stdin()
        && source::sniff(&file.path).is_ok_and(|c| c == Compression::Plain);
    let count = if split { size.div_ceil(split_bytes) } else { 1 };
    (0..count).map(move |i| Shard {
        file: file.clone(),
        range: if split {
            ShardRange::Bytes {
                start: i * split_bytes,
                end: ((i + 1) * split_bytes).min(size),
            }
        } else {
            ShardRange::Whole
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    #[test]
    fn standard_input_is_never_split() {
        let input = |path: &str| InputFile {
            seq: 0,
            path: PathBuf::from(path),
            size: 5000,
            modified: None,
        };
        assert!(input("-").is_stdin());
        assert!(!input("./-").is_stdin());
        // Never split, and never sniffed (which would open a file named `-`).
        let ranges: Vec<_> = plan_shards(Arc::new(input("-")), 10)
            .map(|s| s.range)
            .collect();
        assert_eq!(ranges, vec![ShardRange::Whole]);
    }

    #[test]
    fn large_plain_files_split_and_compressed_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        fs::write(&plain, vec![b'x'; 2500]).unwrap();
        let file = |path: &Path| {
            Arc::new(InputFile {
                seq: 0,
                path: path.to_path_buf(),
                size: fs::metadata(path).unwrap().len(),
                modified: None,
            })
        };
        let ranges: Vec<_> = plan_shards(file(&plain), 1000).map(|s| s.range).collect();
        assert_eq!(
            ranges,
            vec![
                ShardRange::Bytes {
                    start: 0,
                    end: 1000
                },
                ShardRange::Bytes {
                    start: 1000,
                    end: 2000
                },
                ShardRange::Bytes {
                    start: 2000,
                    end: 2500
                },
            ]
        );
        let zst = dir.path().join("z");
        fs::write(&zst, zstd::encode_all(&vec![b'x'; 5000][..], 1).unwrap()).unwrap();
        let mut big = (*file(&zst)).clone();
        big.size = 5000;
        let ranges: Vec<_> = plan_shards(Arc::new(big), 10).map(|s| s.range).collect();
        assert_eq!(ranges, vec![ShardRange::Whole]);
    }
}
