//! Gathering the small SST files that jobs ingest into ranges of their own.
//!
//! A job's record (in `data`) and a job's file counts (in `meta`) arrive
//! as SST files covering a key range nothing else writes. RocksDB puts such
//! a file on the last level and, since nothing overlaps it, never compacts
//! it: a long-lived store would gain a file, and its table reader's memory,
//! per job. Once a range holds more than a limit of small files, they are
//! compacted together.

use rocksdb::{BottommostLevelCompaction, CompactOptions};

use super::{Store, StoreError};

/// A live file's first and last keys.
type KeySpan = (Vec<u8>, Vec<u8>);

/// Which files of a column family to gather, and when.
pub(super) struct Gathering {
    /// The column family's name, as `live_files` reports it.
    pub cf_name: &'static str,
    /// The range's first and last keys (inclusive).
    pub first: Vec<u8>,
    pub last: Vec<u8>,
    /// Files smaller than this are gathered; larger ones are left as they
    /// are unless they lie between small ones.
    pub small_bytes: usize,
    /// Small files the range may hold before they are gathered.
    pub limit: usize,
}

impl Store {
    /// Compacts the small files lying wholly inside `range` together once
    /// there are more than its limit of them; returns how many small files
    /// it holds afterwards.
    pub(super) fn gather_small_files(&self, range: &Gathering) -> Result<usize, StoreError> {
        let mut small = self.small_files(range)?;
        if small.len() > range.limit {
            let first = small.iter().map(|(start, _)| start).min().cloned();
            let last = small.iter().map(|(_, end)| end).max().cloned();
            let mut opts = CompactOptions::default();
            // They are on the last level, which a range compaction skips
            // unless forced.
            opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
            let cf = self
                .db()
                .cf_handle(range.cf_name)
                .expect("the store's column families are opened with it");
            self.db().compact_range_cf_opt(cf, first, last, &opts);
            small = self.small_files(range)?;
        }
        Ok(small.len())
    }

    /// The first and last keys of each small live file inside `range`.
    pub(super) fn small_files(&self, range: &Gathering) -> Result<Vec<KeySpan>, StoreError> {
        let inside = |key: &[u8]| key >= &range.first[..] && key <= &range.last[..];
        let files = self.db().live_files().map_err(|e| self.rocks_error(e))?;
        Ok(files
            .into_iter()
            .filter(|f| f.column_family_name == range.cf_name && f.size < range.small_bytes)
            .filter_map(|f| match (f.start_key, f.end_key) {
                (Some(start), Some(end)) if inside(&start) && inside(&end) => Some((start, end)),
                _ => None,
            })
            .collect())
    }
}
