//! Keys cut into order-preserving integer digits, so that sorting compares
//! integers instead of bytes even when keys share long prefixes.
//!
//! A digit covers `width` key bytes from `depth`: those bytes zero-padded,
//! big-endian, then one byte saying how many key bytes are left from
//! `depth`, capped at `width + 1` ("more than this digit holds"). For two
//! keys equal before `depth`, comparing their digits agrees with memcmp
//! whenever the digits differ, and equal digits mean either that the keys
//! are equal (both end inside the digit) or that both go on past it, equal
//! so far. The length byte is what zero padding alone cannot tell: `ab`
//! from `ab\0`.
//!
//! A sort by digits is exact: sort by the first digit, then each group of
//! equal digits by the next one, until groups are single keys or keys that
//! are wholly equal. URLs (`https://`), absolute paths and timestamped log
//! lines all share their first bytes; a single fixed prefix decided nothing
//! for them, and the sort fell back to comparing whole keys.

/// Key bytes in a deeper digit (the level-0 digit holds
/// [`FIRST_DIGIT_KEY_BYTES`] beside the partition).
pub const DIGIT_KEY_BYTES: usize = 7;
/// Key bytes in the first digit, whose top 16 bits are the partition.
pub const FIRST_DIGIT_KEY_BYTES: usize = 5;

/// The digit of `key` covering `width` bytes (at most 7) from `depth`, in
/// the low `8 * (width + 1)` bits.
pub fn key_digit(key: &[u8], depth: usize, width: usize) -> u64 {
    debug_assert!(width <= DIGIT_KEY_BYTES);
    let rest = key.get(depth..).unwrap_or_default();
    // One 8-byte load when the key has them: a copy of a variable length
    // was a call to memcpy per digit, 5% of an ingest of URLs.
    let bytes = match rest.first_chunk::<8>() {
        Some(bytes) => *bytes,
        None => {
            let mut bytes = [0u8; 8];
            bytes[..rest.len()].copy_from_slice(rest);
            bytes
        }
    };
    let value = u64::from_be_bytes(bytes) >> (8 * (8 - width));
    let left = rest.len().min(width + 1) as u64;
    (value << 8) | left
}

/// True if every key with this digit (of `width` bytes) ends inside it:
/// keys with equal such digits, and equal before it, are equal.
pub fn ends_within(digit: u64, width: usize) -> bool {
    (digit & 0xff) as usize <= width
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    fn keys() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes, zeros among them, so that long shared
        // prefixes and zero padding are common.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(b'/'), any::<u8>()],
            0..20,
        )
    }

    proptest! {
        /// Digits at any depth never contradict memcmp of keys that are
        /// equal before that depth; equal digits mean equal keys or keys
        /// that both go on.
        #[test]
        fn digits_agree_with_memcmp(
            shared in keys(), a in keys(), b in keys(), width in 1usize..=7,
        ) {
            let (ka, kb) = ([&shared[..], &a].concat(), [&shared[..], &b].concat());
            let depth = shared.len();
            let (da, db) = (key_digit(&ka, depth, width), key_digit(&kb, depth, width));
            match da.cmp(&db) {
                Ordering::Equal if ends_within(da, width) => prop_assert_eq!(&ka, &kb),
                Ordering::Equal => {
                    prop_assert!(a.len() > width && b.len() > width);
                    prop_assert_eq!(&a[..width], &b[..width]);
                }
                by_digit => prop_assert_eq!(by_digit, ka.cmp(&kb)),
            }
        }
    }

    #[test]
    fn length_separates_what_padding_cannot() {
        assert!(key_digit(b"ab", 0, 7) < key_digit(b"ab\0", 0, 7));
        assert!(ends_within(key_digit(b"abcdefg", 0, 7), 7));
        assert!(!ends_within(key_digit(b"abcdefgh", 0, 7), 7));
        assert_eq!(key_digit(b"abc", 5, 7), 0, "past the end: an empty rest");
        assert!(key_digit(b"", 0, 5) < key_digit(b"\0", 0, 5));
    }
}
