//! Hex digits to bytes, strictly: two digits a byte and nothing else.
//! `u8::from_str_radix` would also take a sign (`"+a"` reads as 0x0a).

/// The bytes `text` spells, two hex digits (either case) each; `None` for
/// a pair that is not two hex digits. An odd last digit is not read: the
/// caller checks the length.
pub fn decode(text: &[u8]) -> impl Iterator<Item = Option<u8>> + '_ {
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
}

fn digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

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
}
