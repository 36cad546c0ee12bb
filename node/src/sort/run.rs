//! An in-memory run: batches gathered as they arrive, sorted by permuting a
//! compact index, never by moving record bytes.

use std::cmp::Ordering;

use proto_schema::{BatchView, Record, RecordBatch};

use super::merge::SortedSource;
use crate::batch_pool::BatchPool;

/// One index entry: 8 bytes of the sort key up front so most comparisons
/// never touch the record bytes, then where the record lives.
#[derive(Clone, Copy)]
struct Entry {
    prefix: u64,
    batch: u32,
    record: u32,
}

const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Partition in the top 16 bits, then the first 6 key bytes, zero-padded.
/// Comparing prefixes agrees with [`Record::merge_order`] whenever they
/// differ: a zero pad sorts a shorter key first, as memcmp does.
fn sort_prefix(record: &Record<'_>) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..2].copy_from_slice(&record.partition.to_be_bytes());
    let n = record.key.len().min(6);
    bytes[2..2 + n].copy_from_slice(&record.key[..n]);
    u64::from_be_bytes(bytes)
}

/// Records gathered for one run.
#[derive(Default)]
pub struct RunBuffer {
    batches: Vec<RecordBatch>,
    records: usize,
    heap_bytes: usize,
    /// Kept from the previous run, emptied, so its memory is reused.
    index: Vec<Entry>,
}

impl RunBuffer {
    pub fn push(&mut self, batch: RecordBatch) {
        self.records += batch.len();
        self.heap_bytes += batch.heap_bytes();
        self.batches.push(batch);
    }

    /// Memory the run holds, including the index sorting will build.
    pub fn bytes(&self) -> usize {
        self.heap_bytes + self.records * ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Sorts the run into merge order.
    pub fn sort(self) -> SortedRun {
        let mut index = self.index;
        index.reserve_exact(self.records);
        for (b, batch) in self.batches.iter().enumerate() {
            for r in 0..batch.len() {
                index.push(Entry {
                    prefix: sort_prefix(&batch.record(r)),
                    batch: b as u32,
                    record: r as u32,
                });
            }
        }
        let batches = &self.batches;
        let record = |e: &Entry| batches[e.batch as usize].record(e.record as usize);
        index.sort_unstable_by(|a, b| match a.prefix.cmp(&b.prefix) {
            Ordering::Equal => record(a).merge_order(&record(b)),
            unequal => unequal,
        });
        SortedRun {
            batches: self.batches,
            index,
            next: 0,
        }
    }
}

impl SortedRun {
    /// Empties the run for reuse: its batches go back to `pool`, and the
    /// index and batch list keep their memory for the next run.
    pub fn recycle(self, pool: &BatchPool) -> RunBuffer {
        let mut batches = self.batches;
        pool.give_all(batches.drain(..));
        let mut index = self.index;
        index.clear();
        RunBuffer {
            batches,
            records: 0,
            heap_bytes: 0,
            index,
        }
    }
}

/// A sorted run, read front to back.
pub struct SortedRun {
    batches: Vec<RecordBatch>,
    index: Vec<Entry>,
    next: usize,
}

impl SortedSource for SortedRun {
    fn current(&self) -> Option<Record<'_>> {
        self.index
            .get(self.next)
            .map(|e| self.batches[e.batch as usize].record(e.record as usize))
    }

    fn advance(&mut self) -> Result<(), super::SortError> {
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::Position;

    proptest! {
        /// The prefix never contradicts the full order.
        #[test]
        fn prefix_agrees_with_merge_order(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..9),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..9),
            pa in 0u16..3, pb in 0u16..3,
        ) {
            let ra = Record { partition: pa, key: &a, value: b"", position: Position { file: 0, offset: 0 } };
            let rb = Record { partition: pb, key: &b, value: b"", position: Position { file: 0, offset: 1 } };
            let by_prefix = sort_prefix(&ra).cmp(&sort_prefix(&rb));
            if by_prefix != Ordering::Equal {
                prop_assert_eq!(by_prefix, ra.merge_order(&rb));
            }
        }

        /// Sorting batches equals sorting all records with the full order.
        #[test]
        fn sorts_like_the_reference(records in proptest::collection::vec(
            (0u16..3, proptest::collection::vec(0u8..3, 0..8), 0u32..4, 0u64..100), 0..200),
            batch_size in 1usize..30,
        ) {
            let mut buffer = RunBuffer::default();
            for chunk in records.chunks(batch_size) {
                let mut batch = RecordBatch::new();
                for (partition, key, file, offset) in chunk {
                    batch.push(Record { partition: *partition, key, value: b"v", position: Position { file: *file, offset: *offset } });
                }
                buffer.push(batch);
            }
            let mut run = buffer.sort();
            let mut got = Vec::new();
            while let Some(r) = run.current() {
                got.push((r.partition, r.key.to_vec(), r.position));
                run.advance().unwrap();
            }
            let mut want: Vec<_> = records.iter().map(|(p, k, f, o)| (*p, k.clone(), Position { file: *f, offset: *o })).collect();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
