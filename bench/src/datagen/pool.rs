//! Bounded pool of earlier records that duplicates are copied from.
//!
//! A ring keeps the most recent records (near duplicates, including across a
//! file boundary); records evicted from the ring feed a reservoir sample
//! (Algorithm R), so far-away duplicates stay possible however large the
//! dataset grows, without remembering it all.

use rand::Rng;

/// Most recent records kept verbatim.
const RING_RECORDS: usize = 65_536;
/// Uniform sample of records older than the ring.
const RESERVOIR_RECORDS: usize = 4_096;
/// Byte budgets that shrink the pools when records are long, so memory stays
/// bounded even for `--max-len` in the megabytes.
const RING_BYTES: usize = 64 << 20;
const RESERVOIR_BYTES: usize = 16 << 20;
/// "Near" duplicates come from this many most recent records.
const NEAR_RECORDS: usize = 256;

pub(crate) struct Pool {
    /// Slots are overwritten in place (keeping their allocations) once full.
    ring: Vec<Vec<u8>>,
    ring_cap: usize,
    /// Slot the next record goes to; the newest record sits just before it.
    head: usize,
    reservoir: Vec<Vec<u8>>,
    reservoir_cap: usize,
    /// Records evicted from the ring so far: Algorithm R's stream length.
    evicted: u64,
}

impl Pool {
    /// `max_record_len` sizes the pools against their byte budgets.
    pub(crate) fn new(max_record_len: usize) -> Self {
        let len = max_record_len.max(1);
        Self {
            ring: Vec::new(),
            ring_cap: (RING_BYTES / len).clamp(1, RING_RECORDS),
            head: 0,
            reservoir: Vec::new(),
            reservoir_cap: (RESERVOIR_BYTES / len).clamp(1, RESERVOIR_RECORDS),
            evicted: 0,
        }
    }

    pub(crate) fn push<R: Rng>(&mut self, rng: &mut R, record: &[u8]) {
        if self.ring.len() < self.ring_cap {
            self.ring.push(record.to_vec());
        } else {
            self.evict_head(rng);
            let slot = &mut self.ring[self.head];
            slot.clear();
            slot.extend_from_slice(record);
        }
        self.head = (self.head + 1) % self.ring_cap;
    }

    /// Offers the record at `head` (the oldest) to the reservoir. Buffers
    /// are swapped rather than copied; whatever ends up in the ring slot is
    /// about to be overwritten.
    fn evict_head<R: Rng>(&mut self, rng: &mut R) {
        self.evicted += 1;
        let oldest = &mut self.ring[self.head];
        if self.reservoir.len() < self.reservoir_cap {
            self.reservoir.push(std::mem::take(oldest));
        } else {
            let j = rng.random_range(0..self.evicted);
            if j < self.reservoir.len() as u64 {
                std::mem::swap(&mut self.reservoir[j as usize], oldest);
            }
        }
    }

    /// An earlier record: a quarter from the last few hundred, half from the
    /// whole ring, a quarter from the older reservoir (the ring until it has
    /// overflowed). `None` only while the pool is empty.
    pub(crate) fn pick<R: Rng>(&self, rng: &mut R) -> Option<&[u8]> {
        if self.ring.is_empty() {
            return None;
        }
        let len = self.ring.len();
        let record = match rng.random_range(0..4u32) {
            0 => {
                let back = rng.random_range(0..len.min(NEAR_RECORDS));
                &self.ring[(self.head + len - 1 - back) % len]
            }
            3 if !self.reservoir.is_empty() => {
                &self.reservoir[rng.random_range(0..self.reservoir.len())]
            }
            _ => &self.ring[rng.random_range(0..len)],
        };
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::datagen::rng_for;

    fn record(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    fn index(r: &[u8]) -> u32 {
        u32::from_be_bytes(r.try_into().unwrap())
    }

    #[test]
    fn empty_pool_has_nothing_to_pick() {
        let pool = Pool::new(100);
        assert!(pool.pick(&mut rng_for(1)).is_none());
    }

    #[test]
    fn picks_near_and_far_records_once_the_ring_overflows() {
        let mut rng = rng_for(3);
        let mut pool = Pool::new(4);
        let total = (RING_RECORDS * 4) as u32;
        for i in 0..total {
            pool.push(&mut rng, &record(i));
        }
        assert_eq!(pool.ring.len(), RING_RECORDS);
        assert_eq!(pool.reservoir.len(), RESERVOIR_RECORDS);

        let picks: Vec<u32> = (0..10_000)
            .map(|_| index(pool.pick(&mut rng).unwrap()))
            .collect();
        let oldest_in_ring = total - RING_RECORDS as u32;
        let near = picks.iter().filter(|&&i| i >= total - 256).count();
        let far = picks.iter().filter(|&&i| i < oldest_in_ring).count();
        // A quarter each by construction; loose bounds keep this robust.
        assert!((2_000..3_000).contains(&near), "near picks: {near}");
        assert!((2_000..3_000).contains(&far), "far picks: {far}");
        // The reservoir samples the whole evicted history, not just its end.
        let far_halves: HashSet<bool> = picks
            .iter()
            .filter(|&&i| i < oldest_in_ring)
            .map(|&i| i < oldest_in_ring / 2)
            .collect();
        assert_eq!(far_halves.len(), 2);
    }

    #[test]
    fn long_records_shrink_the_pool() {
        let pool = Pool::new(1 << 20);
        assert_eq!(pool.ring_cap, 64);
        assert_eq!(pool.reservoir_cap, 16);
    }
}
