//! Stable key → partition mapping. Every node and every version must compute
//! the same partition for a key, because the partition is part of the store key
//! (`dataset | partition | key`) and decides which node owns a record.

use xxhash_rust::xxh3::xxh3_64;

/// The partition of `key` among `partitions` virtual partitions.
///
/// XXH3-64 (seed 0) is a published, frozen algorithm, so the mapping never
/// changes under us. `partitions` must be at least 1.
pub fn partition_of(key: &[u8], partitions: u16) -> u16 {
    partition_of_hash(key_hash(key), partitions)
}

/// The hash a key's partition is taken from, for callers that use it
/// for more than the partition.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The partition of a key whose [`key_hash`] is `hash`.
pub fn partition_of_hash(hash: u64, partitions: u16) -> u16 {
    debug_assert!(partitions > 0, "partition count must be positive");
    (hash % u64::from(partitions)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mapping_is_frozen() {
        // If these change, every existing store is silently re-partitioned.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(
            partition_of(b"", 64),
            (0x2D06_8005_38D3_94C2u64 % 64) as u16
        );
        assert_eq!(partition_of(b"hello", 64), (xxh3_64(b"hello") % 64) as u16);
    }

    #[test]
    fn spreads_keys_evenly() {
        let partitions = 64u16;
        let mut counts = vec![0u32; partitions as usize];
        for i in 0..64_000u32 {
            counts[partition_of(format!("key-{i}").as_bytes(), partitions) as usize] += 1;
        }
        // 1000 expected per partition; a uniform hash stays well within ±20%.
        for (p, c) in counts.iter().enumerate() {
            assert!((800..1200).contains(c), "partition {p} got {c} keys");
        }
    }

    proptest! {
        #[test]
        fn always_in_range_and_deterministic(key in proptest::collection::vec(any::<u8>(), 0..64), partitions in 1u16..=u16::MAX) {
            let p = partition_of(&key, partitions);
            prop_assert!(p < partitions);
            prop_assert_eq!(p, partition_of(&key, partitions));
        }
    }
}
