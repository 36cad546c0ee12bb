//! Random printable ASCII text.

use rand::RngCore;

/// Maps a random byte to printable ASCII (0x20..=0x7E). A 256-entry table
/// lets one `fill_bytes` call produce a whole record; the slight skew (some
/// characters map from three byte values, others from two) does not matter
/// for benchmark data.
const PRINTABLE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = b' ' + (i % 95) as u8;
        i += 1;
    }
    table
};

/// Appends `len` random printable ASCII bytes (never tab or newline) to `buf`.
pub(crate) fn push_printable<R: RngCore>(rng: &mut R, buf: &mut Vec<u8>, len: usize) {
    let start = buf.len();
    buf.resize(start + len, 0);
    let tail = &mut buf[start..];
    rng.fill_bytes(tail);
    for b in tail {
        *b = PRINTABLE[usize::from(*b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_exactly_printable_ascii() {
        let mut seen: Vec<u8> = PRINTABLE.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (0x20..=0x7E).collect::<Vec<u8>>());
    }

    #[test]
    fn appends_requested_length() {
        let mut rng = crate::datagen::rng_for(7);
        let mut buf = b"ab".to_vec();
        push_printable(&mut rng, &mut buf, 100);
        assert_eq!(buf.len(), 102);
        assert!(buf.starts_with(b"ab"));
        assert!(buf.iter().all(|b| (0x20..=0x7E).contains(b)));
    }
}
