//! Reading input: which files, in what order, cut into which shards, and
//! how a shard becomes a stream of records.

pub mod format;
pub mod listing;
pub mod read_buffers;
pub mod records;
pub mod roots;
pub mod shard;
pub mod source;

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use read_buffers::ReadBuffers;
use records::{ReadFailure, RecordReader};
use shard::{InputFile, Shard, ShardRange};
use source::{Compression, FileBytesRead, Source};

/// How much a reader asks of the file system at once.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// File bytes buffered in front of a decompressor (and of the magic-byte
/// check of every whole file).
const DECOMPRESS_INPUT_BYTES: usize = 256 << 10;

/// A shard opened for reading.
pub struct OpenShard {
    pub records: RecordReader,
    pub compression: Compression,
    pub file_bytes: FileBytesRead,
    /// The open file (none for standard input).
    file: Option<Arc<File>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open: {0}")]
    Open(#[from] io::Error),
    #[error(transparent)]
    Read(#[from] ReadFailure),
}

impl OpenShard {
    /// Opens `shard` with buffers from `buffers`, which get them back when
    /// the shard is dropped.
    pub fn open(shard: &Shard, max_record: u64, buffers: &ReadBuffers) -> Result<Self, OpenError> {
        let file = &shard.file;
        let (source, start, mid_record, end) = match shard.range {
            // Standard input has no listed size: it is read to its end.
            ShardRange::Whole if file.is_stdin() => (
                Source::stdin(buffers.take(DECOMPRESS_INPUT_BYTES))?,
                0,
                false,
                None,
            ),
            ShardRange::Whole => {
                let source = Source::open_whole(&file.path, buffers.take(DECOMPRESS_INPUT_BYTES))?;
                // A plain file is read up to its listed size, so a file that
                // grows while we read gives the same records as before it grew
                // (the change is reported separately).
                let end = (source.compression == Compression::Plain).then_some(file.size);
                (source, 0, false, end)
            }
            ShardRange::Bytes { start: 0, end } => {
                (Source::open_plain_at(&file.path, 0)?, 0, false, Some(end))
            }
            ShardRange::Bytes { start, end } => {
                // The byte before `start` says whether a record starts at
                // `start` or the previous shard owns the bytes up to the next
                // newline.
                let mut source = Source::open_plain_at(&file.path, start - 1)?;
                let mut before = [0u8; 1];
                source
                    .reader
                    .read_exact(&mut before)
                    .map_err(|e| ReadFailure::Io {
                        offset: start - 1,
                        source: e,
                        fragment: None,
                    })?;
                (source, start, before[0] != b'\n', Some(end))
            }
        };
        let expected_len =
            (source.compression == Compression::Plain && !file.is_stdin()).then_some(file.size);
        let compression = source.compression;
        let file_bytes = source.file_bytes();
        let open_file = source.file.clone();
        let records = RecordReader::new(
            source.reader,
            start,
            mid_record,
            end,
            expected_len,
            max_record,
            buffers.take(RecordReader::buffer_len(READ_CHUNK_BYTES, max_record)),
        )?;
        Ok(Self {
            records,
            compression,
            file_bytes,
            file: open_file,
        })
    }

    /// Why the file read is not the one listed (`listed`), if it is not:
    /// its size or modification time moved. Asked of the open file, not
    /// its path: a small file's read was mostly path lookups, and this
    /// was the second one.
    pub fn changed_since_listed(&self, listed: &InputFile) -> Option<String> {
        let file = self.file.as_ref()?; // standard input: nothing was listed
        let now = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                return Some(format!(
                    "file changed while being read: it can no longer be examined ({e})"
                ));
            }
        };
        let modified: Option<SystemTime> = now.modified().ok();
        if now.len() != listed.size {
            Some(format!(
                "file changed while being read: {} bytes when listed, {} bytes now",
                listed.size,
                now.len()
            ))
        } else if modified != listed.modified {
            Some("file changed while being read: its modification time moved; re-run the ingest to pick up the new content".into())
        } else {
            None
        }
    }
}
