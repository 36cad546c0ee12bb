//! Point lookups of ascending keys through one iterator.
//!
//! A submission chunk lists paths in order, and the catalogue keeps them in
//! the same order: the entry for the next path is usually the next key.
//! Stepping to it costs far less than a lookup of its own (no filter
//! probe, no index search per level), so the iterator steps forward a few
//! keys and seeks only when the next key is further away: scattered keys
//! cost a seek each, never a walk over what lies between them.

use rocksdb::{DB, DBRawIterator, ReadOptions};

/// Keys stepped over before seeking instead.
const STEPS: usize = 4;

pub struct SortedLookup<'a> {
    entries: DBRawIterator<'a>,
    positioned: bool,
}

impl<'a> SortedLookup<'a> {
    /// Lookups of keys up to `last`, inclusive.
    pub fn new(db: &'a DB, cf: &rocksdb::ColumnFamily, last: &[u8]) -> Self {
        let mut opts = ReadOptions::default();
        // Each block is read once: keep the cache for indexes and filters.
        opts.fill_cache(false);
        let mut bound = last.to_vec();
        bound.push(0);
        opts.set_iterate_upper_bound(bound);
        Self {
            entries: db.raw_iterator_cf_opt(cf, opts),
            positioned: false,
        }
    }

    /// The value stored under `key`; each key must be above the one before.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>, rocksdb::Error> {
        if self.positioned {
            for _ in 0..STEPS {
                match self.entries.key() {
                    Some(at) if at < key => self.entries.next(),
                    _ => break,
                }
            }
        }
        if !self.positioned || self.entries.key().is_some_and(|at| at < key) {
            self.entries.seek(key);
            self.positioned = true;
        }
        self.entries.status()?;
        Ok(match (self.entries.key(), self.entries.value()) {
            (Some(at), Some(value)) if at == key => Some(value),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Ascending lookups find what a map finds, whether the keys are
        /// neighbours, far apart, or missing.
        #[test]
        fn lookups_agree_with_a_map(
            stored in proptest::collection::btree_map(proptest::collection::vec(0u8..6, 1..5), any::<u8>(), 0..200),
            probes in proptest::collection::btree_set(proptest::collection::vec(0u8..6, 1..5), 1..60),
        ) {
            let dir = tempfile::TempDir::new().unwrap();
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), ["entries"]).unwrap();
            let cf = db.cf_handle("entries").unwrap();
            for (key, value) in &stored {
                db.put_cf(cf, key, [*value]).unwrap();
            }
            let probes: BTreeSet<_> = probes;
            let last = probes.last().unwrap();
            let mut lookup = SortedLookup::new(&db, cf, last);
            let found: BTreeMap<Vec<u8>, u8> = probes
                .iter()
                .filter_map(|p| lookup.get(p).unwrap().map(|v| (p.clone(), v[0])))
                .collect();
            let expected: BTreeMap<Vec<u8>, u8> = probes
                .iter()
                .filter_map(|p| stored.get(p).map(|v| (p.clone(), *v)))
                .collect();
            prop_assert_eq!(found, expected);
        }
    }
}
