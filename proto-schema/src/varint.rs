//! Unsigned LEB128: seven bits a byte, the low ones first, the high bit
//! set on every byte but the last. Small numbers (lengths, counts, gaps
//! between ascending ids) take one byte instead of four or eight.

/// Why bytes do not hold a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("a number cut short")]
    CutShort,
    #[error("a number over {0} bits")]
    TooWide(u32),
}

/// Appends `n`.
pub fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The number of at most `bits` bits at the start of `bytes`, and the
/// bytes it took.
pub fn get(bytes: &[u8], bits: u32) -> Result<(u64, usize), VarintError> {
    debug_assert!((1..=64).contains(&bits));
    let mut n = 0u64;
    for (i, &byte) in bytes.iter().enumerate() {
        let shift = 7 * i as u32;
        let digit = u64::from(byte & 0x7f);
        // A digit past the width, or bits of it that would shift out.
        if shift >= bits || (bits - shift < 7 && digit >> (bits - shift) != 0) {
            return Err(VarintError::TooWide(bits));
        }
        n |= digit << shift;
        if byte & 0x80 == 0 {
            return Ok((n, i + 1));
        }
    }
    Err(VarintError::CutShort)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every number reads back as written, taking the bytes written,
        /// whatever follows it.
        #[test]
        fn a_number_reads_back_as_written(n in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut bytes = Vec::new();
            put(&mut bytes, n);
            let len = bytes.len();
            prop_assert_eq!(len, (64 - n.leading_zeros()).div_ceil(7).max(1) as usize);
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(get(&bytes, 64), Ok((n, len)));
            let narrow = get(&bytes, 32);
            if n <= u64::from(u32::MAX) {
                prop_assert_eq!(narrow, Ok((n, len)));
            } else {
                prop_assert_eq!(narrow, Err(VarintError::TooWide(32)));
            }
            prop_assert_eq!(get(&bytes[..len - 1], 64), Err(VarintError::CutShort));
        }

        /// No bytes make it panic; whatever it reads fits its width.
        #[test]
        fn any_bytes_give_a_number_of_the_width_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..12), bits in 1u32..=64) {
            if let Ok((n, used)) = get(&bytes, bits) {
                prop_assert!(used <= bytes.len());
                prop_assert!(bits == 64 || n >> bits == 0);
            }
        }
    }

    #[test]
    fn the_edges_of_a_width() {
        let mut bytes = Vec::new();
        put(&mut bytes, u64::MAX);
        assert_eq!(bytes.len(), 10);
        assert_eq!(get(&bytes, 64), Ok((u64::MAX, 10)));
        // Eleven bytes, or a tenth byte above bit 63, are too wide.
        assert_eq!(
            get(&[0xff; 11], 64),
            Err(VarintError::TooWide(64)),
            "eleven bytes"
        );
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get(&over, 64), Err(VarintError::TooWide(64)));
        assert_eq!(get(&[], 8), Err(VarintError::CutShort));
        assert_eq!(get(&[0xff, 0x01], 8), Ok((255, 2)));
        assert_eq!(get(&[0x80, 0x02], 8), Err(VarintError::TooWide(8)));
    }
}
