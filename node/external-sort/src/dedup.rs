//! Exact dedup of a sorted stream: the first record of each key wins.
//!
//! Streams arrive in merge order (partition, key, position), so the first
//! record of a key is the one with the smallest position: its first
//! occurrence in input order. No probabilistic filter anywhere: a record is
//! dropped only after comparing its full key with the previous one.
//!
//! The previous record of a stream is still in hand, in the same batch,
//! for every record but a batch's first: only a batch's last key is
//! copied ([`CarriedKey`]), not every new key (that copy was 6% of the
//! CPU of an ingest of log lines). Writers of a sorted stream (a spilled
//! run, the final merge's batches) drop repeats as they push, with
//! [`repeats_last`], so duplicates are never copied.

use proto_schema::{BatchView, Record};

/// The key of the last record of a batch that has been handed on, to
/// compare the next batch's first record with.
#[derive(Default)]
pub struct CarriedKey {
    last: Option<(u16, Vec<u8>)>,
}

impl CarriedKey {
    /// Remembers `record`'s key in place of the one before.
    pub fn keep(&mut self, record: &Record<'_>) {
        match &mut self.last {
            Some((partition, key)) => {
                *partition = record.partition;
                key.clear();
                key.extend_from_slice(record.key);
            }
            None => self.last = Some((record.partition, record.key.to_vec())),
        }
    }

    /// True if `record` has the remembered key.
    pub fn same_key(&self, record: &Record<'_>) -> bool {
        matches!(&self.last, Some((partition, key))
            if *partition == record.partition && key.as_slice() == record.key)
    }
}

/// True if `record`, next in merge order after the records pushed into
/// `batch`, repeats the key of the last of them, or, `batch` being empty,
/// the key `carried` over from the batch before.
pub fn repeats_last(batch: &impl BatchView, carried: &CarriedKey, record: &Record<'_>) -> bool {
    match batch.len() {
        0 => carried.same_key(record),
        n => batch.record(n - 1).same_key(record),
    }
}

/// The dedup of a stream handed over in batches.
#[derive(Default)]
pub struct FirstOccurrence {
    carried: CarriedKey,
}

impl FirstOccurrence {
    /// True if record `index` of `batch` is the first of its key. Batches
    /// must come in merge order, and each batch's records be asked in
    /// order, every one of them.
    pub fn is_first(&mut self, batch: &impl BatchView, index: usize) -> bool {
        let record = batch.record(index);
        let repeat = match index {
            0 => self.carried.same_key(&record),
            _ => batch.record(index - 1).same_key(&record),
        };
        if index + 1 == batch.len() {
            self.carried.keep(&record);
        }
        !repeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::{Position, RecordBatch};
    use std::collections::BTreeMap;

    proptest! {
        /// Keeps exactly one record per key, the one with the smallest
        /// position, however the stream is cut into batches (the first
        /// record of a batch compared with the carried key).
        #[test]
        fn keeps_the_first_occurrence_of_each_key(mut records in proptest::collection::vec(
            (0u16..3, proptest::collection::vec(0u8..3, 0..4), 0u32..5, 0u64..50), 0..200),
            batch_size in 1usize..8) {
            records.sort();
            records.dedup_by(|a, b| a.2 == b.2 && a.3 == b.3);
            let mut dedup = FirstOccurrence::default();
            let mut kept = Vec::new();
            for chunk in records.chunks(batch_size) {
                let mut batch = RecordBatch::new();
                for (partition, key, file, offset) in chunk {
                    let position = Position { file: *file, offset: *offset };
                    batch.push(Record { partition: *partition, key, value: b"", position });
                }
                for i in 0..batch.len() {
                    if dedup.is_first(&batch, i) {
                        let r = batch.record(i);
                        kept.push((r.partition, r.key.to_vec(), r.position));
                    }
                }
            }
            let mut want: BTreeMap<(u16, Vec<u8>), Position> = BTreeMap::new();
            for (partition, key, file, offset) in &records {
                let p = Position { file: *file, offset: *offset };
                want.entry((*partition, key.clone())).and_modify(|q| *q = (*q).min(p)).or_insert(p);
            }
            let want: Vec<_> = want.into_iter().map(|((p, k), pos)| (p, k, pos)).collect();
            prop_assert_eq!(kept, want);
        }
    }
}
