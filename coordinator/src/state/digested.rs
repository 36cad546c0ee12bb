//! Ranges of an inventory sent as digests (`InventoryRange::Digest`),
//! checked against the catalogue.
//!
//! A range is accepted when the files the last finished submission listed
//! between its first and last path are as many as it claims and their
//! catalogue entries, in path order, have its digest: exactly what a
//! `Files` range of the same entries would have found unchanged, entry by
//! entry. Any difference (a changed, new or gone file) leaves it
//! unaccepted, and the submitter sends its files. The check reads at most
//! the claimed count plus `MAX_RANGE_FILES` catalogue entries, whatever
//! lies in the range: past that, it is not accepted.
//!
//! Most ranges are the ranges the last finished submission listed (the
//! submitter cuts them where paths' hashes say, the same way each time):
//! its listing record ending at the same path, with the same first path,
//! count and digest, stands for the same entries, so the range is accepted
//! and the record (not its paths) copied without reading the catalogue.
//! Only a range without such a record is read from the catalogue.
//!
//! One command's ranges ascend, so they are read through one iterator
//! that steps from one range to the next (the files between them are
//! usually none: they would be gone) and seeks only when the next range
//! is further away; a new iterator, or a seek, per range of ~16 files
//! would cost more than reading the range.

use proto_schema::command::{EntriesDigest, MAX_RANGE_FILES};
use proto_schema::ids::{DatasetId, JobId};
use rocksdb::{DB, DBRawIterator, ReadOptions};

use super::StateError;
use super::apply::Aborted;
use super::keys::{self, CF_FILES};
use super::listed::{self, Listing, Record};
use super::records::{CatalogEntry, Stored};
use super::sorted_lookup::SortedLookup;

/// Keys stepped over before seeking instead.
const STEPS: usize = 4;

/// What a digest range claims.
pub struct Claim<'a> {
    pub first: &'a str,
    pub last: &'a str,
    pub files: u32,
    pub digest: [u8; 16],
}

/// How a digest range was found to agree.
pub enum Accepted {
    /// Read from the catalogue: its paths.
    Read(Vec<Vec<u8>>),
    /// The last finished submission's record of the same range, ending at
    /// `last`, to record again.
    Again { last: Vec<u8>, record: Vec<u8> },
}

/// Checks the digest ranges of one command, in ascending order.
pub struct Checker<'a> {
    dataset: DatasetId,
    last_finished: JobId,
    /// The last finished submission's listing records.
    listed: SortedLookup<'a>,
    entries: DBRawIterator<'a>,
    /// The iterator stands at the first catalogue key after this one.
    after: Option<Vec<u8>>,
    last_listing: Listing<'a>,
    aborted: Aborted<'a>,
}

impl<'a> Checker<'a> {
    /// Ranges up to `last` (inclusive) against the catalogue as the
    /// dataset's last finished submission, `last_finished`, listed it.
    pub fn new(db: &'a DB, dataset: DatasetId, last_finished: JobId, last: &str) -> Self {
        let mut opts = ReadOptions::default();
        // Each block is read once: keep the cache for indexes and filters.
        opts.fill_cache(false);
        let mut bound = keys::file(dataset, last);
        bound.push(0);
        opts.set_iterate_upper_bound(bound);
        let cf = db
            .cf_handle(CF_FILES)
            .expect("column family created at open");
        let listed_end = listed::key(dataset, last_finished, last.as_bytes());
        Self {
            dataset,
            last_finished,
            listed: SortedLookup::new(db, listed::column_family(db), &listed_end),
            entries: db.raw_iterator_cf_opt(cf, opts),
            after: None,
            last_listing: Listing::new(db, dataset, last_finished),
            aborted: Aborted::new(db),
        }
    }

    /// How the catalogue agrees with `claim`, if it does.
    pub fn check(&mut self, claim: &Claim<'_>) -> Result<Option<Accepted>, StateError> {
        let key = listed::key(self.dataset, self.last_finished, claim.last.as_bytes());
        if let Some(value) = self.listed.get(&key)? {
            let record = Record::parse(&key, value)?;
            if record.first == claim.first.as_bytes()
                && record.files == claim.files
                && record.digest == claim.digest
            {
                let last = claim.last.as_bytes().to_vec();
                let record = value.to_vec();
                return Ok(Some(Accepted::Again { last, record }));
            }
        }
        self.read(claim).map(|paths| paths.map(Accepted::Read))
    }

    /// The paths `claim` stands for, if the catalogue's entries agree.
    fn read(&mut self, claim: &Claim<'_>) -> Result<Option<Vec<Vec<u8>>>, StateError> {
        let start = keys::file(self.dataset, claim.first);
        let end = keys::file(self.dataset, claim.last);
        self.move_to(&start);
        // Until the range is read whole, where the iterator stands says
        // nothing of the keys before it.
        self.after = None;
        let claimed = claim.files as usize;
        let mut digest = EntriesDigest::new();
        let mut paths = Vec::with_capacity(claimed);
        let mut read = 0;
        while let (Some(key), Some(value)) = (self.entries.key(), self.entries.value()) {
            if key > end.as_slice() {
                break;
            }
            read += 1;
            if read > claimed + MAX_RANGE_FILES {
                return Ok(None);
            }
            let path = keys::file_path(key);
            if let Some(entry) = self.aborted.settle(CatalogEntry::decode(value)?)?
                && self.last_listing.lists(&entry, path)?
            {
                if paths.len() == claimed {
                    return Ok(None);
                }
                digest.add(path, entry.size, entry.mtime_ns, entry.checksum.as_deref());
                paths.push(path.to_vec());
            }
            self.entries.next();
        }
        self.entries.status()?;
        self.after = Some(end);
        Ok((paths.len() == claimed && digest.finish() == claim.digest).then_some(paths))
    }

    /// Moves to the first key at or after `start`: a few steps from where
    /// the last range ended, or a seek.
    fn move_to(&mut self, start: &[u8]) {
        if self.after.as_deref().is_some_and(|after| after < start) {
            for _ in 0..STEPS {
                match self.entries.key() {
                    Some(at) if at < start => self.entries.next(),
                    _ => return,
                }
            }
            if self.entries.key().is_none_or(|at| at >= start) {
                return;
            }
        }
        self.entries.seek(start);
    }
}
