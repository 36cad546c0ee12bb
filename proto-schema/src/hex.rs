//! Hex digits to bytes, strictly: two digits a byte and nothing else.
//! `u8::from_str_radix` would also take a sign (`"+a"` reads as 0x0a).

/// The bytes `text` spells, two hex digits (either case) each; `None` for
/// a pair that is not two hex digits. An odd last digit is not read: the
/// caller checks the length.
pub fn decode(text: &[u8]) -> impl Iterator<Item = Option<u8>> + '_ {
    text.chunks_exact(2).map(|pair| {
        let (high, low) = (DIGITS[pair[0] as usize], DIGITS[pair[1] as usize]);
        ((high | low) & NOT_HEX == 0).then_some(high << 4 | low)
    })
}

/// Marks a byte that is not a hex digit in [`DIGITS`]: a bit no digit's
/// value has, so one test of both digits ORed finds either.
const NOT_HEX: u8 = 0x80;

/// Each byte's value as a hex digit, or `NOT_HEX`: one lookup per digit,
/// since a manifest's checksums are decoded on every line.
const DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10,
            _ => NOT_HEX,
        };
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_hex_digits_are_bytes_and_nothing_else_is() {
        let bytes: Vec<Option<u8>> = decode(b"00fFa9").collect();
        assert_eq!(bytes, [Some(0), Some(255), Some(0xa9)]);
        for bad in [&b"+a"[..], b"-1", b" a", b"g0", b"0x"] {
            assert_eq!(decode(bad).collect::<Vec<_>>(), [None], "{bad:?}");
        }
    }

    #[test]
    fn every_pair_of_bytes_decodes_as_the_standard_library_reads_two_hex_digits() {
        for high in 0..=255u8 {
            for low in 0..=255u8 {
                let pair = [high, low];
                let expected = pair
                    .iter()
                    .all(u8::is_ascii_hexdigit)
                    .then(|| u8::from_str_radix(std::str::from_utf8(&pair).unwrap(), 16).unwrap());
                assert_eq!(decode(&pair).next(), Some(expected), "{pair:?}");
            }
        }
    }
}
