//! RocksDB merge operators. Both are associative and commutative, so the
//! order in which RocksDB combines operands (and any replay or duplicate
//! delivery) never changes the result.

use rocksdb::MergeOperands;

use super::keys::POSITION_LEN;

pub const FIRST_SEEN_NAME: &str = "quern.first_seen.v1";
pub const ADD_COUNTS_NAME: &str = "quern.add_counts.v1";

/// Data column family: of all values written for a key, keep the one with
/// the smallest position (its first occurrence). Values start with their
/// big-endian position, so this is the bytewise-smallest position prefix;
/// among equal positions (the same record written twice) any copy will do.
pub fn keep_first_seen(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    existing
        .into_iter()
        .chain(operands)
        .min_by(|a, b| position_prefix(a).cmp(position_prefix(b)))
        .map(<[u8]>::to_vec)
}

fn position_prefix(value: &[u8]) -> &[u8] {
    &value[..value.len().min(POSITION_LEN)]
}

/// Meta column family: counters are arrays of little-endian u64, added
/// element by element.
pub fn add_counts(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut sum: Vec<u64> = Vec::new();
    for value in existing.into_iter().chain(operands) {
        let counts = value
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
        for (i, count) in counts.enumerate() {
            if i == sum.len() {
                sum.push(0);
            }
            sum[i] = sum[i].wrapping_add(count);
        }
    }
    Some(sum.iter().flat_map(|c| c.to_le_bytes()).collect())
}
