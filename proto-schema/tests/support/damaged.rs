//! Inputs for fuzz targets: a valid encoding damaged, or arbitrary bytes.
//! Shared by the fuzz targets of several crates, which include this file
//! by path.

use proptest::prelude::*;

/// A valid encoding with some bytes flipped, then maybe cut short and
/// extended; or arbitrary bytes.
pub fn damaged(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edits = (
        valid,
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(mut bytes, flips, cut, extra)| {
            if !bytes.is_empty() {
                for (at, flip) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= flip;
                }
                if let Some(at) = cut {
                    bytes.truncate(at.index(bytes.len()));
                }
            }
            bytes.extend(extra);
            bytes
        });
    prop_oneof![
        3 => edits,
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}
