//! The digest of a range of inventory entries (`InventoryRange::Digest`):
//! what a submitter computes over the entries it would send, and what
//! every replica computes over its catalogue's live entries in the same
//! range. Equal digests (and counts) mean equal entries, so the entries
//! need not travel through the Raft log.
//!
//! XXH3-128 is a published, frozen algorithm; each entry is hashed as its
//! path's length and bytes, size, mtime and checksum (a tag, its length
//! and bytes), all integers little-endian, so no two different entry
//! sequences share an input.

use xxhash_rust::xxh3::Xxh3;

/// A running digest of entries, added in path order.
#[derive(Clone, Default)]
pub struct EntriesDigest {
    hasher: Xxh3,
}

impl EntriesDigest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: &[u8], size: u64, mtime_ns: i64, checksum: Option<&[u8]>) {
        self.hasher.update(&(path.len() as u64).to_le_bytes());
        self.hasher.update(path);
        self.hasher.update(&size.to_le_bytes());
        self.hasher.update(&mtime_ns.to_le_bytes());
        match checksum {
            None => self.hasher.update(&[0]),
            Some(sum) => {
                self.hasher.update(&[1]);
                self.hasher.update(&(sum.len() as u64).to_le_bytes());
                self.hasher.update(sum);
            }
        }
    }

    pub fn finish(&self) -> [u8; 16] {
        self.hasher.digest128().to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(entries: &[(&str, u64, i64, Option<&[u8]>)]) -> [u8; 16] {
        let mut digest = EntriesDigest::new();
        for &(path, size, mtime, sum) in entries {
            digest.add(path.as_bytes(), size, mtime, sum);
        }
        digest.finish()
    }

    /// Submitters and replicas of other builds must agree: a change that
    /// moves a bit fails here.
    #[test]
    fn the_digest_is_frozen() {
        let digest = of(&[("/a/b", 10, -1, Some(&[1, 2])), ("/a/c", 0, 5, None)]);
        assert_eq!(
            u128::from_le_bytes(digest),
            0xe538860652185ae4_e3c49aa345a36131,
            "{:#x}",
            u128::from_le_bytes(digest)
        );
    }

    #[test]
    fn every_field_and_boundary_counts() {
        let base = of(&[("/a/b", 10, 1, Some(&[1]))]);
        for other in [
            of(&[("/a/c", 10, 1, Some(&[1]))]),
            of(&[("/a/b", 11, 1, Some(&[1]))]),
            of(&[("/a/b", 10, 2, Some(&[1]))]),
            of(&[("/a/b", 10, 1, Some(&[2]))]),
            of(&[("/a/b", 10, 1, None)]),
            of(&[("/a/b", 10, 1, Some(&[]))]),
            of(&[("/a/b", 10, 1, Some(&[1])), ("/a/c", 10, 1, Some(&[1]))]),
            of(&[]),
        ] {
            assert_ne!(other, base);
        }
        // Where one path ends and the next begins is part of the input.
        assert_ne!(
            of(&[("/a", 1, 1, None), ("b", 1, 1, None)]),
            of(&[("/ab", 1, 1, None)])
        );
    }
}
