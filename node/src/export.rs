//! Streaming a dataset out in key order.
//!
//! Store keys are `dataset | partition | key`, so each partition is sorted
//! by key but the dataset as a whole is not: export k-way merges one
//! iterator per partition, all reading the same snapshot. Memory is one
//! block per partition, whatever the dataset's size.

use std::io::Write;

use proto_schema::{Position, Record};
use rocksdb::{DBRawIterator, ReadOptions};

use crate::config::Format;
use crate::sort::SortError;
use crate::sort::merge::{KMerge, MergeOrder, SortedSource, bytes_prefix};
use crate::store::catalog::DatasetInfo;
use crate::store::keys::{self, DATA_KEY_PREFIX_LEN};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("store entry for key {key} in partition {partition} is corrupt")]
    Corrupt { partition: u16, key: String },
}

/// One partition's records, in key order.
struct PartitionCursor<'a> {
    partition: u16,
    iter: DBRawIterator<'a>,
}

impl SortedSource for PartitionCursor<'_> {
    fn current(&self) -> Option<Record<'_>> {
        let (key, value) = (self.iter.key()?, self.iter.value()?);
        // A value too short to parse is reported by `export` before it
        // reads the record; here it reads as empty.
        let (position, value) = keys::parse_data_value(value)
            .map_or((Position { file: 0, offset: 0 }, &[][..]), |(seen, v)| {
                (seen.position, v)
            });
        Some(Record {
            partition: self.partition,
            key: &key[DATA_KEY_PREFIX_LEN..],
            value,
            position,
        })
    }

    fn advance(&mut self) -> Result<(), SortError> {
        self.iter.next();
        Ok(())
    }
}

/// Partitions hold disjoint keys, so the key alone orders the merge.
const BY_KEY: MergeOrder = MergeOrder {
    compare: |a, b| a.key.cmp(b.key),
    prefix: |r| bytes_prefix(r.key),
};

/// Writes every record of `dataset` to `out` in key order, one per line:
/// the key for `lines` datasets (byte-identical to `LC_ALL=C sort -u` of
/// the inputs), the whole first-seen record for `tsv`. Returns the count.
pub fn export(
    store: &Store,
    dataset: &DatasetInfo,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let snapshot = store.db().snapshot();
    let mut cursors = Vec::with_capacity(dataset.partitions as usize);
    for partition in 0..dataset.partitions {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snapshot);
        // A one-pass scan: do not push hot blocks out of the cache.
        opts.fill_cache(false);
        opts.set_readahead_size(1 << 20);
        opts.set_iterate_lower_bound(keys::partition_prefix(dataset.id, partition).to_vec());
        opts.set_iterate_upper_bound(keys::partition_prefix(dataset.id, partition + 1).to_vec());
        let mut iter = store.db().raw_iterator_cf_opt(store.data_cf(), opts);
        iter.seek_to_first();
        cursors.push(PartitionCursor { partition, iter });
    }
    let mut merge = KMerge::new(cursors, BY_KEY);
    let mut count = 0u64;
    while let Some(record) = merge.current() {
        let line = match dataset.format {
            Format::Lines => record.key,
            Format::Tsv { .. } => record.value,
        };
        out.write_all(line)?;
        out.write_all(b"\n")?;
        count += 1;
        merge
            .advance()
            .expect("partition cursors do not fail to advance");
    }
    for cursor in merge.into_sources() {
        cursor.iter.status().map_err(|e| store.rocks_error(e))?;
    }
    out.flush()?;
    Ok(count)
}
