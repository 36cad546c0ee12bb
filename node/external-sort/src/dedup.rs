//! Exact dedup of a sorted stream: the first record of each key wins.
//!
//! Streams arrive in merge order (partition, key, position), so the first
//! record of a key is the one with the smallest position: its first
//! occurrence in input order. No probabilistic filter anywhere: a record is
//! dropped only after comparing its full key with the previous one.

use proto_schema::Record;

#[derive(Default)]
pub struct FirstOccurrence {
    last: Option<(u16, Vec<u8>)>,
}

impl FirstOccurrence {
    /// True for the first record of each key; records must come in merge
    /// order.
    pub fn is_first(&mut self, record: &Record<'_>) -> bool {
        if let Some((partition, key)) = &mut self.last {
            if *partition == record.partition && key.as_slice() == record.key {
                return false;
            }
            *partition = record.partition;
            key.clear();
            key.extend_from_slice(record.key);
        } else {
            self.last = Some((record.partition, record.key.to_vec()));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::Position;
    use std::collections::BTreeMap;

    proptest! {
        /// Keeps exactly one record per key, the one with the smallest
        /// position.
        #[test]
        fn keeps_the_first_occurrence_of_each_key(mut records in proptest::collection::vec(
            (0u16..3, proptest::collection::vec(0u8..3, 0..4), 0u32..5, 0u64..50), 0..200)) {
            records.sort();
            records.dedup_by(|a, b| a.2 == b.2 && a.3 == b.3);
            let mut dedup = FirstOccurrence::default();
            let mut kept = Vec::new();
            for (partition, key, file, offset) in &records {
                let position = Position { file: *file, offset: *offset };
                if dedup.is_first(&Record { partition: *partition, key, value: b"", position }) {
                    kept.push((*partition, key.clone(), position));
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
