//! Exact early dedup in the scanner: a small cache of the keys it sent
//! recently, with their positions.
//!
//! A record whose key the cache holds at an earlier position can never be
//! the first occurrence of its key, so the scanner drops it there and then
//! (counting it as a duplicate, or for a record another node owns, sending
//! that node a count), instead of carrying it through batches, the
//! shuffle, a run, a sort and a spill only to drop it in the merge. Nothing is guessed: a hit
//! compares the whole key, and a miss just lets the record through to the
//! exact dedup downstream (so the cache may forget whatever it likes).
//! Real text repeats itself locally: this machine's own man pages, docs
//! and headers are 77% duplicates, mostly short lines met again a few
//! files later, and log files repeat lines next to each other.
//!
//! On data whose repeats are far apart, the cache hits rarely and only
//! costs: when fewer than one lookup in [`MIN_HIT_RATIO`] hits over a
//! window, it stands aside for a while, then samples again.

use proto_schema::Position;

/// Keys longer than this are not cached: they would take the room of many
/// short ones, and long records repeat less.
const MAX_CACHED_KEY: usize = 256;
/// Bytes of a slot: hash, position, and where the key is.
const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
/// Lookups over which the hit ratio is judged.
const WINDOW: u32 = 1 << 16;
/// The cache stands aside while fewer than one lookup in this many hits.
const MIN_HIT_RATIO: u32 = 64;
/// Records let through unlooked-at before sampling again.
const STAND_ASIDE: u32 = 1 << 20;

#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    position: Position,
    /// The key is `arena[start..start + len]`, if `generation` is current.
    start: u32,
    len: u32,
    generation: u32,
}

/// What the scanner does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The same key was met at an earlier position: a duplicate.
    Before,
    /// Send it on; the exact dedup downstream decides.
    NotBefore,
}

/// A direct-mapped cache of keys, bounded in bytes: its slots and its
/// arena of key bytes, which is emptied (all slots with it) when full.
pub struct RecentKeys {
    slots: Vec<Slot>,
    arena: Vec<u8>,
    arena_capacity: usize,
    /// Slots of older generations are empty.
    generation: u32,
    looked: u32,
    hits: u32,
    /// Records still to let through before sampling again.
    aside: u32,
}

impl RecentKeys {
    /// A cache holding at most `bytes` (half slots, half key bytes).
    pub fn new(bytes: usize) -> Self {
        let slots = 1usize << (bytes / 2 / SLOT_BYTES).max(1).ilog2();
        let arena_capacity = bytes.saturating_sub(slots * SLOT_BYTES);
        Self {
            slots: vec![Slot::default(); slots],
            arena: Vec::with_capacity(arena_capacity),
            arena_capacity,
            generation: 1,
            looked: 0,
            hits: 0,
            aside: 0,
        }
    }

    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * SLOT_BYTES + self.arena.capacity()
    }

    /// Looks `key` (with its `hash`) up and remembers it at `position`.
    pub fn check(&mut self, hash: u64, key: &[u8], position: Position) -> Seen {
        if self.aside > 0 {
            self.aside -= 1;
            return Seen::NotBefore;
        }
        let seen = self.look_up(hash, key, position);
        self.looked += 1;
        self.hits += u32::from(seen == Seen::Before);
        if self.looked == WINDOW {
            if self.hits < WINDOW / MIN_HIT_RATIO {
                self.aside = STAND_ASIDE;
            }
            (self.looked, self.hits) = (0, 0);
        }
        seen
    }

    fn look_up(&mut self, hash: u64, key: &[u8], position: Position) -> Seen {
        let index = (hash as usize) & (self.slots.len() - 1);
        let slot = self.slots[index];
        let arena = &self.arena;
        let same_key = || arena[slot.start as usize..][..slot.len as usize] == *key;
        if slot.generation == self.generation && slot.hash == hash && same_key() {
            if slot.position < position {
                return Seen::Before;
            }
            // Met earlier in the input than the cached one: keep this one.
            self.slots[index].position = position;
            return Seen::NotBefore;
        }
        if key.len() <= MAX_CACHED_KEY {
            if self.arena.len() + key.len() > self.arena_capacity {
                self.arena.clear();
                self.generation += 1;
            }
            self.slots[index] = Slot {
                hash,
                position,
                start: self.arena.len() as u32,
                len: key.len() as u32,
                generation: self.generation,
            };
            self.arena.extend_from_slice(key);
        }
        Seen::NotBefore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::key_hash as xxh3_64;
    use std::collections::HashMap;

    fn at(offset: u64) -> Position {
        Position { file: 0, offset }
    }

    proptest! {
        /// A record is called a duplicate only if its key was met before
        /// at an earlier position, whatever the cache size, hash
        /// collisions (a hash of few bits) and the order of positions.
        #[test]
        fn only_true_repeats_are_dropped(
            records in proptest::collection::vec((proptest::collection::vec(0u8..3, 0..6), 0u64..400), 0..600),
            bytes in 64usize..4096,
            hash_bits in prop_oneof![Just(2u32), Just(64u32)],
        ) {
            let mut cache = RecentKeys::new(bytes);
            let mut earliest: HashMap<Vec<u8>, u64> = HashMap::new();
            for (key, offset) in &records {
                let hash = xxh3_64(key) & (u64::MAX >> (64 - hash_bits));
                let seen = cache.check(hash, key, at(*offset));
                let before = earliest.get(key).copied();
                if seen == Seen::Before {
                    prop_assert!(before.is_some_and(|b| b < *offset), "{key:?} at {offset}");
                }
                earliest.entry(key.clone()).and_modify(|b| *b = (*b).min(*offset)).or_insert(*offset);
                prop_assert!(cache.bytes() <= bytes.max(2 * SLOT_BYTES));
            }
        }
    }

    /// Lines that come back a few lines later, as in real text, are caught
    /// (all of them here: a few keys in thousands of slots).
    #[test]
    fn near_repeats_are_caught() {
        let mut cache = RecentKeys::new(1 << 20);
        let lines: [&[u8]; 4] = [b".PP", b"#include <stdio.h>", b"}", b""];
        let mut caught = 0;
        for round in 0..10u64 {
            for (i, line) in lines.iter().enumerate() {
                let seen = cache.check(xxh3_64(line), line, at(round * 10 + i as u64));
                caught += u32::from(seen == Seen::Before);
            }
        }
        assert_eq!(caught, 9 * 4);
        // The same key at an earlier position is not a repeat, and takes
        // the cached one's place.
        assert_eq!(cache.check(xxh3_64(b"}"), b"}", at(0)), Seen::NotBefore);
        assert_eq!(cache.check(xxh3_64(b"}"), b"}", at(1)), Seen::Before);
    }

    #[test]
    fn stands_aside_when_it_does_not_pay_and_samples_again() {
        let mut cache = RecentKeys::new(1 << 16);
        let key = |i: u64| i.to_be_bytes();
        // Distinct keys: no hits over a window.
        for i in 0..u64::from(WINDOW) {
            let k = key(i);
            assert_eq!(cache.check(xxh3_64(&k), &k, at(i)), Seen::NotBefore);
        }
        // Standing aside, even a repeat goes through unlooked-at.
        let k = key(0);
        assert_eq!(cache.check(xxh3_64(&k), &k, at(1 << 40)), Seen::NotBefore);
        for i in 1..STAND_ASIDE {
            cache.check(0, b"", at(i.into()));
        }
        // Sampling again: a repeat is caught.
        let k = b"again";
        cache.check(xxh3_64(k), k, at(1));
        assert_eq!(cache.check(xxh3_64(k), k, at(2)), Seen::Before);
    }
}
