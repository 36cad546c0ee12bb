//! A sorted set of paths in one value: front-coded, with restart points
//! for binary search.
//!
//! Sorted paths share long prefixes (their directories), so each path costs
//! only the suffix it does not share with the one before. Every
//! `RESTART`th path is stored whole and its offset indexed, so a lookup is
//! a binary search over those and a scan of at most `RESTART` paths,
//! whatever the list's length.
//!
//! Layout: for each path, a varint shared-prefix length (0 at a restart
//! point), a varint suffix length and the suffix; then each restart point's
//! offset (u32 LE); then the number of paths (u32 LE). Read back, every
//! length and offset is checked before use: corrupt bytes give an error,
//! never a panic.

use std::cmp::Ordering;

use proto_schema::varint::{self, VarintError};

/// Paths per restart point.
const RESTART: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("corrupt path list: {0}")]
pub struct CorruptPathList(&'static str);

/// Encodes `paths`, which must be strictly ascending.
pub fn encode<'p>(paths: impl IntoIterator<Item = &'p [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut restarts = Vec::new();
    let mut previous: &[u8] = &[];
    let mut count = 0usize;
    for path in paths {
        debug_assert!(count == 0 || previous < path, "paths must ascend");
        let shared = if count.is_multiple_of(RESTART) {
            restarts.push(u32::try_from(out.len()).expect("a list under 4 GiB"));
            0
        } else {
            previous
                .iter()
                .zip(path)
                .take_while(|(a, b)| a == b)
                .count()
        };
        varint::put(&mut out, shared as u64);
        varint::put(&mut out, (path.len() - shared) as u64);
        out.extend_from_slice(&path[shared..]);
        previous = path;
        count += 1;
    }
    for offset in restarts {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out.extend_from_slice(
        &u32::try_from(count)
            .expect("fewer than 2^32 paths")
            .to_le_bytes(),
    );
    out
}

/// Where a run of lookups in one list stands (see `contains_from`).
#[derive(Default)]
pub struct Position {
    /// Paths decoded: `current` is the last of them.
    decoded: usize,
    current: Vec<u8>,
    /// Offset of the entry after `current`.
    next: usize,
}

/// An encoded list, read in place.
pub struct PathList<'a> {
    entries: &'a [u8],
    restarts: &'a [u8],
    count: usize,
}

impl<'a> PathList<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CorruptPathList> {
        let split = bytes
            .len()
            .checked_sub(4)
            .ok_or(CorruptPathList("shorter than its trailer"))?;
        let count = u32::from_le_bytes(bytes[split..].try_into().expect("4 bytes")) as usize;
        let restarts_len = count.div_ceil(RESTART) * 4;
        let entries_len = split
            .checked_sub(restarts_len)
            .ok_or(CorruptPathList("restart points beyond the value"))?;
        Ok(Self {
            entries: &bytes[..entries_len],
            restarts: &bytes[entries_len..split],
            count,
        })
    }

    /// How many paths the list holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest path, `None` for an empty list.
    pub fn first(&self) -> Result<Option<&'a [u8]>, CorruptPathList> {
        if self.count == 0 {
            return Ok(None);
        }
        self.restart_path(0).map(Some)
    }

    pub fn contains(&self, path: &[u8]) -> Result<bool, CorruptPathList> {
        self.contains_from(&mut Position::default(), path)
    }

    /// Whether the list holds `path`, moving `at` to the first path at or
    /// after it. Lookups of ascending paths from one position step through
    /// the list, decoding each path at most once; a path further ahead
    /// than the next restart point is reached by binary search.
    pub fn contains_from(&self, at: &mut Position, path: &[u8]) -> Result<bool, CorruptPathList> {
        let restarts = self.restarts.len() / 4;
        if restarts == 0 {
            return Ok(false);
        }
        if at.decoded == 0 || at.current.as_slice() > path {
            self.jump(at, path, 0)?;
        } else {
            let next = at.decoded.div_ceil(RESTART);
            if next < restarts && self.restart_path(next)? <= path {
                self.jump(at, path, next)?;
            }
        }
        loop {
            match at.current.as_slice().cmp(path) {
                Ordering::Equal => return Ok(true),
                Ordering::Greater => return Ok(false),
                Ordering::Less if at.decoded == self.count => return Ok(false),
                Ordering::Less => {
                    let (shared, suffix, next) = self.entry(at.next)?;
                    if shared > at.current.len() {
                        return Err(CorruptPathList("shared prefix longer than the path before"));
                    }
                    at.current.truncate(shared);
                    at.current.extend_from_slice(suffix);
                    at.next = next;
                    at.decoded += 1;
                }
            }
        }
    }

    /// Moves `at` to the last restart point from `from` on whose path is
    /// at or before `path` (to restart point `from` if there is none).
    fn jump(&self, at: &mut Position, path: &[u8], from: usize) -> Result<(), CorruptPathList> {
        let (mut lo, mut hi) = (from, self.restarts.len() / 4);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.restart_path(mid)? <= path {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (shared, whole, next) = self.entry(self.restart_offset(lo)?)?;
        if shared != 0 {
            return Err(CorruptPathList("a restart point shares a prefix"));
        }
        at.current.clear();
        at.current.extend_from_slice(whole);
        at.next = next;
        at.decoded = lo * RESTART + 1;
        Ok(())
    }

    fn restart_offset(&self, i: usize) -> Result<usize, CorruptPathList> {
        let bytes = self
            .restarts
            .get(i * 4..i * 4 + 4)
            .ok_or(CorruptPathList("restart point out of range"))?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize)
    }

    /// The path at restart point `i`, stored whole.
    fn restart_path(&self, i: usize) -> Result<&'a [u8], CorruptPathList> {
        match self.entry(self.restart_offset(i)?)? {
            (0, path, _) => Ok(path),
            _ => Err(CorruptPathList("a restart point shares a prefix")),
        }
    }

    /// The entry at `offset`: shared prefix length, suffix, next offset.
    fn entry(&self, offset: usize) -> Result<(usize, &'a [u8], usize), CorruptPathList> {
        let (shared, offset) = varint(self.entries, offset)?;
        let (len, offset) = varint(self.entries, offset)?;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.entries.len())
            .ok_or(CorruptPathList("suffix beyond the entries"))?;
        Ok((shared, &self.entries[offset..end], end))
    }
}

/// A length (at most 32 bits) at `offset` and the offset after it.
fn varint(bytes: &[u8], offset: usize) -> Result<(usize, usize), CorruptPathList> {
    match varint::get(&bytes[offset.min(bytes.len())..], 32) {
        Ok((n, used)) => Ok((n as usize, offset + used)),
        Err(VarintError::CutShort) => Err(CorruptPathList("length beyond the entries")),
        Err(VarintError::TooWide(_)) => Err(CorruptPathList("length over 32 bits")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn encoded(paths: &BTreeSet<Vec<u8>>) -> Vec<u8> {
        encode(paths.iter().map(Vec::as_slice))
    }

    #[test]
    fn an_empty_list_holds_nothing() {
        let bytes = encode([]);
        let list = PathList::parse(&bytes).unwrap();
        assert_eq!(list.first().unwrap(), None);
        assert!(!list.contains(b"").unwrap());
        assert!(!list.contains(b"a").unwrap());
    }

    #[test]
    fn shared_prefixes_are_stored_once() {
        let paths: BTreeSet<Vec<u8>> = (0..1000)
            .map(|i| format!("/srv/archive/ingest-a/access/2025-01-01/h00/part-{i:010}.log.zst"))
            .map(String::into_bytes)
            .collect();
        let raw: usize = paths.iter().map(Vec::len).sum();
        let bytes = encoded(&paths);
        assert!(bytes.len() * 4 < raw, "{} of {raw} bytes", bytes.len());
    }

    proptest! {
        /// Membership and the first path agree with the set encoded, for
        /// paths in the list, between them and around them.
        #[test]
        fn lookups_agree_with_the_set(
            paths in proptest::collection::btree_set(proptest::collection::vec(0u8..4, 0..8), 0..80),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..8), 0..40),
        ) {
            let bytes = encoded(&paths);
            let list = PathList::parse(&bytes).unwrap();
            prop_assert_eq!(list.first().unwrap(), paths.first().map(Vec::as_slice));
            for path in paths.iter().chain(&probes) {
                prop_assert_eq!(list.contains(path).unwrap(), paths.contains(path), "{:?}", path);
            }
            // Through one position: in ascending order, and in any order.
            let ascending: BTreeSet<&Vec<u8>> = paths.iter().chain(&probes).collect();
            for run in [ascending.into_iter().collect::<Vec<_>>(), probes.iter().collect()] {
                let mut at = Position::default();
                for path in run {
                    prop_assert_eq!(list.contains_from(&mut at, path).unwrap(), paths.contains(path), "{:?}", path);
                }
            }
        }

        /// Damaged bytes give answers or errors, never a panic.
        #[test]
        fn damaged_lists_never_panic(
            paths in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..12), 1..60),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            probe in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            let bytes = encoded(&paths);
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= flip;
            let truncated = &bytes[..cut.index(bytes.len())];
            for damaged in [flipped.as_slice(), truncated] {
                if let Ok(list) = PathList::parse(damaged) {
                    let _ = list.first();
                    let _ = list.contains(&probe);
                    let mut at = Position::default();
                    for path in &paths {
                        let _ = list.contains(path);
                        let _ = list.contains_from(&mut at, path);
                    }
                }
            }
        }
    }
}
