//! Streaming a dataset out in key order.
//!
//! Store keys are `dataset | partition | key`, so each partition is sorted
//! by key but the dataset as a whole is not: export k-way merges one
//! iterator per partition, all reading the same snapshot. Memory is one
//! block per partition, whatever the dataset's size.
//!
//! A dataset may be spread over several stores (`export_all`: the nodes'
//! stores `quern dev --nodes N` leaves, each owning some partitions): their
//! merges are merged again, and a key held by more than one store (its
//! partition moved between jobs) is written once.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};

use proto_schema::{BatchView, Record, RecordBatch};
use rocksdb::{DBRawIterator, ReadOptions, Snapshot};

use crate::config::Format;
use crate::store::catalog::DatasetInfo;
use crate::store::keys::{self, DATA_KEY_PREFIX_LEN};
use crate::store::{Store, StoreError};
use external_sort::SortError;
use external_sort::merge::{KMerge, MergeOrder, SortedSource};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    #[error(transparent)]
    Corrupt(#[from] SortError),
}

/// One partition's records, in key order.
struct PartitionCursor<'a> {
    partition: u16,
    iter: DBRawIterator<'a>,
    /// The store's directory, to name it in errors.
    store: &'a Path,
}

impl PartitionCursor<'_> {
    /// Refuses an entry whose value is not a first-seen value: exported as
    /// it stands, a `tsv` record would silently come out empty.
    fn check(&self) -> Result<(), SortError> {
        let (Some(key), Some(value)) = (self.iter.key(), self.iter.value()) else {
            return Ok(());
        };
        match keys::parse_data_value(value) {
            Some(_) => Ok(()),
            None => Err(SortError::CorruptRun {
                path: self.store.to_path_buf(),
                detail: format!(
                    "partition {}, key {:?}: {} bytes are not a first-seen value",
                    self.partition,
                    String::from_utf8_lossy(&key[DATA_KEY_PREFIX_LEN..]),
                    value.len()
                ),
            }),
        }
    }
}

impl SortedSource for PartitionCursor<'_> {
    fn current(&self) -> Option<Record<'_>> {
        let (key, value) = (self.iter.key()?, self.iter.value()?);
        // Checked on arrival (`check`): an unreadable value never gets here.
        let (seen, value) = keys::parse_data_value(value)?;
        let position = seen.position;
        Some(Record {
            partition: self.partition,
            key: &key[DATA_KEY_PREFIX_LEN..],
            value,
            position,
        })
    }

    fn advance(&mut self) -> Result<(), SortError> {
        self.iter.next();
        self.check()
    }
}

/// Partitions hold disjoint keys, so the key alone orders the merge.
const BY_KEY: MergeOrder = MergeOrder::Key;

/// Threads that each merge a share of the partitions. Reading RocksDB and
/// merging 64 iterators is the export's cost, on one core; split over
/// two, a final two-way merge of their outputs is cheap.
const MERGE_THREADS: u16 = 2;

/// Bytes of records a half merge hands over at a time, and how many such
/// batches may wait: the export's memory beyond RocksDB's blocks.
const HANDOFF_BYTES: usize = 256 * 1024;
const HANDOFF_BATCHES: usize = 2;

/// Writes every record of `dataset` to `out` in key order, one per line:
/// the key for `lines` datasets (byte-identical to `LC_ALL=C sort -u` of
/// the inputs), the whole first-seen record for `tsv`. Returns the count.
pub fn export(
    store: &Store,
    dataset: &DatasetInfo,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    export_all(&[(store, dataset)], out)
}

/// [`export`] of one dataset held by several stores, each with its own
/// `DatasetInfo` of it (the same name, format and partitions). Where
/// stores hold the same key, the record first seen is written.
pub fn export_all(
    stores: &[(&Store, &DatasetInfo)],
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let Some((_, first)) = stores.first() else {
        return Ok(0);
    };
    let format = first.format;
    let written = for_each_record(stores, |record| write_line(format, &record, out))?;
    out.flush()?;
    Ok(written)
}

/// One record as an export line: the key for `lines`, the record for
/// `tsv`.
pub fn write_line(
    format: Format,
    record: &Record<'_>,
    out: &mut impl Write,
) -> Result<(), ExportError> {
    let line = match format {
        Format::Lines => record.key,
        Format::Tsv { .. } => record.value,
    };
    out.write_all(line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Every record of one dataset held by `stores`, in key order and each
/// key once, handed to `sink` (with values only for `tsv`, where they are
/// the record). Returns the count.
pub fn for_each_record(
    stores: &[(&Store, &DatasetInfo)],
    sink: impl FnMut(Record<'_>) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let snapshots: Vec<_> = stores
        .iter()
        .map(|(store, _)| store.db().snapshot())
        .collect();
    for_each_record_at(stores, &snapshots, sink)
}

/// [`for_each_record`] as of `snapshots`, one per store (a node's export
/// states which jobs its snapshot holds before it reads).
pub fn for_each_record_at(
    stores: &[(&Store, &DatasetInfo)],
    snapshots: &[Snapshot<'_>],
    sink: impl FnMut(Record<'_>) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let Some((_, first)) = stores.first() else {
        return Ok(0);
    };
    assert_eq!(stores.len(), snapshots.len(), "a snapshot per store");
    let keep_values = matches!(first.format, Format::Tsv { .. });
    let db_dirs: Vec<_> = stores.iter().map(|(store, _)| store.db_dir()).collect();
    std::thread::scope(|scope| {
        let mut halves = Vec::new();
        let mut workers = Vec::new();
        for (((store, dataset), snapshot), db_dir) in stores.iter().zip(snapshots).zip(&db_dirs) {
            let (store, dataset) = (*store, *dataset);
            let cursor = |partition: u16| {
                let mut opts = ReadOptions::default();
                opts.set_snapshot(snapshot);
                // A one-pass scan: do not push hot blocks out of the cache.
                opts.fill_cache(false);
                opts.set_readahead_size(1 << 20);
                opts.set_iterate_lower_bound(
                    keys::partition_prefix(dataset.id, partition).to_vec(),
                );
                opts.set_iterate_upper_bound(
                    keys::partition_prefix(dataset.id, partition + 1).to_vec(),
                );
                let mut iter = store.db().raw_iterator_cf_opt(store.data_cf(), opts);
                iter.seek_to_first();
                let cursor = PartitionCursor {
                    partition,
                    iter,
                    store: db_dir,
                };
                cursor.check().map(|()| cursor)
            };
            let threads = MERGE_THREADS.min(dataset.partitions).max(1);
            for t in 0..threads {
                let share = dataset.partitions / threads;
                let first = t * share;
                let last = if t + 1 == threads {
                    dataset.partitions
                } else {
                    first + share
                };
                let cursors = (first..last).map(cursor).collect::<Result<Vec<_>, _>>()?;
                let (send, receive) = std::sync::mpsc::sync_channel(HANDOFF_BATCHES);
                // Read batches go back to be refilled, so their memory is
                // reused rather than allocated and faulted in afresh.
                let (give_back, take_back) = std::sync::mpsc::sync_channel(HANDOFF_BATCHES + 1);
                workers.push(scope.spawn(move || {
                    merge_partitions(store, cursors, keep_values, &send, &take_back)
                }));
                halves.push(Handoff {
                    batches: receive,
                    give_back,
                    batch: RecordBatch::new(),
                    next: 0,
                });
            }
        }
        for half in &mut halves {
            half.refill();
        }
        let written = merge_sources(halves, stores.len() > 1, sink);
        // A worker that failed ended its stream early: its error explains
        // the short output, so it comes first.
        for worker in workers {
            worker.join().expect("export merge thread panicked")?;
        }
        written
    })
}

/// Merges `cursors` and hands their records over in batches until done,
/// or until the receiver has gone (the writer failed).
fn merge_partitions(
    store: &Store,
    cursors: Vec<PartitionCursor<'_>>,
    keep_values: bool,
    send: &SyncSender<RecordBatch>,
    returned: &Receiver<RecordBatch>,
) -> Result<(), ExportError> {
    let mut merge = KMerge::new(cursors, BY_KEY);
    let mut batch = RecordBatch::new();
    loop {
        let done = merge.current().is_none();
        if done || batch.payload_bytes() >= HANDOFF_BYTES {
            let next = returned.try_recv().unwrap_or_default();
            if !batch.is_empty() && send.send(std::mem::replace(&mut batch, next)).is_err() {
                return Ok(());
            }
            if done {
                break;
            }
        }
        let record = merge.current().expect("checked above");
        batch.push(Record {
            value: if keep_values { record.value } else { b"" },
            ..record
        });
        merge.advance()?;
    }
    for cursor in merge.into_sources() {
        cursor.iter.status().map_err(|e| store.rocks_error(e))?;
    }
    Ok(())
}

/// One half merge's output as a sorted source.
struct Handoff {
    batches: Receiver<RecordBatch>,
    give_back: SyncSender<RecordBatch>,
    batch: RecordBatch,
    next: usize,
}

impl Handoff {
    /// Moves to the next batch once this one is read; an ended stream
    /// leaves an empty batch.
    fn refill(&mut self) {
        while self.next >= self.batch.len() {
            match self.batches.recv() {
                Ok(batch) => {
                    let mut read = std::mem::replace(&mut self.batch, batch);
                    read.clear();
                    // Full only if the merge thread has stopped taking them.
                    let _ = self.give_back.try_send(read);
                    self.next = 0;
                }
                Err(_) => {
                    self.batch = RecordBatch::new();
                    self.next = 0;
                    return;
                }
            }
        }
    }
}

impl SortedSource for Handoff {
    fn current(&self) -> Option<Record<'_>> {
        (self.next < self.batch.len()).then(|| self.batch.record(self.next))
    }

    fn advance(&mut self) -> Result<(), SortError> {
        self.next += 1;
        self.refill();
        Ok(())
    }
}

/// Merges `sources`, each in key order, into `sink`: where several hold a
/// key (`across_stores`: stores whose partitions moved between jobs), the
/// record first seen once (the merge orders equal keys by position).
/// Within one store every key is unique. Returns the count. The one merge
/// of every export: of a store's partition merges, of several stores, of
/// nodes' streams (`reads::remote`).
pub fn merge_sources<S: SortedSource>(
    sources: Vec<S>,
    across_stores: bool,
    mut sink: impl FnMut(Record<'_>) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let mut merge = KMerge::new(sources, BY_KEY);
    let mut count = 0u64;
    let (mut last_key, mut written_one) = (Vec::new(), false);
    while let Some(record) = merge.current() {
        if across_stores {
            if written_one && last_key == record.key {
                merge.advance()?;
                continue;
            }
            last_key.clear();
            last_key.extend_from_slice(record.key);
            written_one = true;
        }
        sink(record)?;
        count += 1;
        merge.advance()?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;
    use crate::store::keys::FirstSeen;
    use proto_schema::{Position, partition_of};

    /// A store whose dataset holds `lines`, put straight into the data
    /// column family.
    fn store_with(
        partitions: u16,
        format: Format,
        lines: &[&[u8]],
    ) -> (tempfile::TempDir, Store, DatasetInfo) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let dataset = store.open_dataset("d", format, Some(partitions)).unwrap();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for (i, line) in lines.iter().enumerate() {
            let partition = partition_of(line, partitions);
            keys::data_key(dataset.id, partition, line, &mut key);
            let seen = FirstSeen {
                job: 1,
                position: Position {
                    file: 0,
                    offset: i as u64,
                },
            };
            keys::data_value(seen, line, &mut value);
            store.db().put_cf(store.data_cf(), &key, &value).unwrap();
        }
        (dir, store, dataset)
    }

    fn exported(store: &Store, dataset: &DatasetInfo) -> Result<(u64, Vec<u8>), ExportError> {
        let mut out = Vec::new();
        export(store, dataset, &mut out).map(|n| (n, out))
    }

    /// Whatever the partition count (one merge thread or two, shares of
    /// unequal size), the output is every line once, in byte order.
    #[test]
    fn output_is_sorted_across_partitions_and_threads() {
        let lines: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("line {}", i * 7919 % 5000).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let mut want = lines.clone();
        want.sort();
        let want: Vec<u8> = want
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        for partitions in [1, 2, 3, 64] {
            let (_dir, store, dataset) = store_with(partitions, Format::Lines, &refs);
            let (count, out) = exported(&store, &dataset).unwrap();
            assert_eq!(count, 5000, "{partitions} partitions");
            assert_eq!(out, want, "{partitions} partitions");
        }
    }

    /// Stores holding parts of a dataset export as one: every key once
    /// (the empty one too), in byte order, the first store's where both
    /// hold it.
    #[test]
    fn several_stores_export_as_one_with_each_key_once() {
        let (_a, a, a_dataset) = store_with(4, Format::Lines, &[b"b", b"", b"d", b"x"]);
        let (_b, b, b_dataset) = store_with(3, Format::Lines, &[b"a", b"", b"d", b"z"]);
        let mut out = Vec::new();
        let written = export_all(&[(&a, &a_dataset), (&b, &b_dataset)], &mut out).unwrap();
        assert_eq!((written, out.as_slice()), (6, &b"\na\nb\nd\nx\nz\n"[..]));
    }

    /// A value too short to hold a first-seen position is an error naming
    /// the partition and key, not an empty record.
    #[test]
    fn a_corrupt_value_is_an_error_naming_its_key() {
        let (_dir, store, dataset) =
            store_with(4, Format::Tsv { key_field: 1 }, &[b"a\t1", b"b\t2"]);
        let mut key = Vec::new();
        keys::data_key(dataset.id, partition_of(b"c", 4), b"c", &mut key);
        store.db().put_cf(store.data_cf(), &key, b"short").unwrap();
        let err = exported(&store, &dataset).unwrap_err().to_string();
        assert!(
            err.contains("\"c\"") && err.contains("not a first-seen value"),
            "{err}"
        );
    }
}
