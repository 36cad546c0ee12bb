//! What each submission listed, so that a file listed again unchanged costs
//! no write of its own.
//!
//! Every applied chunk (or range) stores its paths, sorted and
//! front-coded, as one record keyed by dataset, submission and the chunk's
//! last path, after the `EntriesDigest` of its entries as listed: a later
//! submission's digest range over the same files is checked against that
//! digest alone (`digested`), and copies the record. The
//! chunks of one submission must not overlap in path range (a chunk that
//! does is refused), so the only record that can hold a path is the first
//! whose key is at or after it: one seek, and lookups in path order read
//! each record once.
//!
//! A catalogue entry names the submission that catalogued its version
//! (`since`). A file is live in a finished submission G if G catalogued it,
//! or an earlier one did and G listed it: a file that was gone in between
//! and listed again is catalogued again, as new, so listed by G means
//! listed by every submission since.
//!
//! Diffs read only the last finished submission's listing, and the gone
//! listing also the one before it; finishing a submission forgets older
//! ones, aborting one forgets its own, each with one range deletion.

use proto_schema::ids::{DatasetId, JobId};
use rocksdb::{DB, DBRawIterator, ReadOptions, WriteBatch};

use super::StateError;
use super::keys::{self, CF_LISTED};
use super::path_list::{self, PathList, Position};
use super::records::CatalogEntry;

fn cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF_LISTED)
        .expect("column family created at open")
}

/// Bytes of a record's digest, before its paths.
const DIGEST_BYTES: usize = 16;

/// Records that `submission` listed `paths` (sorted, distinct, at least
/// one) whose entries have `digest`.
pub fn record<'p>(
    batch: &mut WriteBatch,
    db: &DB,
    dataset: DatasetId,
    submission: JobId,
    paths: impl Iterator<Item = &'p [u8]> + Clone,
    digest: [u8; 16],
) {
    let last = paths.clone().last().expect("a chunk lists paths");
    let key = keys::listed(dataset, submission, last);
    let mut value = digest.to_vec();
    value.extend_from_slice(&path_list::encode(paths));
    batch.put_cf(cf(db), key, value);
}

/// Records that `submission` listed what another submission's record,
/// `value` (read with `Record::parse`), holds.
pub fn record_again(
    batch: &mut WriteBatch,
    db: &DB,
    dataset: DatasetId,
    submission: JobId,
    last: &[u8],
    value: &[u8],
) {
    batch.put_cf(cf(db), keys::listed(dataset, submission, last), value);
}

/// A record's key in `submission`'s listing, ending at `last`.
pub fn key(dataset: DatasetId, submission: JobId, last: &[u8]) -> Vec<u8> {
    keys::listed(dataset, submission, last)
}

/// The listing's column family (for lookups through other cursors).
pub fn column_family(db: &DB) -> &rocksdb::ColumnFamily {
    cf(db)
}

/// Forgets what `dataset`'s submissions `from..to` listed.
pub fn forget(batch: &mut WriteBatch, db: &DB, dataset: DatasetId, from: JobId, to: JobId) {
    if from < to {
        batch.delete_range_cf(
            cf(db),
            keys::listed_prefix(dataset, from),
            keys::listed_prefix(dataset, to),
        );
    }
}

/// One chunk's record: its path range, its paths and their digest.
pub struct Record<'a> {
    pub first: &'a [u8],
    pub last: &'a [u8],
    pub paths: PathList<'a>,
    pub digest: [u8; 16],
}

impl<'a> Record<'a> {
    /// The record stored under `key` as `value`.
    pub fn parse(key: &'a [u8], value: &'a [u8]) -> Result<Self, StateError> {
        let corrupt = || StateError::Inconsistent(format!("listing record {key:02x?}"));
        if value.len() < DIGEST_BYTES {
            return Err(corrupt());
        }
        let (digest, paths) = value.split_at(DIGEST_BYTES);
        let paths = PathList::parse(paths)?;
        let first = paths.first()?.ok_or_else(corrupt)?;
        Ok(Record {
            first,
            last: keys::listed_last_path(key),
            paths,
            digest: digest.try_into().expect("16 bytes"),
        })
    }
}

/// One submission's listing, read through a cursor: the record found for
/// one path, and the position reached in it, are kept for the next.
pub struct Listing<'a> {
    dataset: DatasetId,
    submission: JobId,
    records: DBRawIterator<'a>,
    /// Where lookups stand in the current record.
    at: Position,
    /// The path `overlapping` last sought.
    sought: Option<Vec<u8>>,
}

impl<'a> Listing<'a> {
    /// `submission` 0 (none yet) lists nothing.
    pub fn new(db: &'a DB, dataset: DatasetId, submission: JobId) -> Self {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(keys::listed_prefix(dataset, submission));
        let past = JobId(submission.get().saturating_add(1));
        opts.set_iterate_upper_bound(keys::listed_prefix(dataset, past));
        Self {
            dataset,
            submission,
            records: db.raw_iterator_cf_opt(cf(db), opts),
            at: Position::default(),
            sought: None,
        }
    }

    /// Whether the file whose catalogue entry (as it counts) is `entry` is
    /// live in this submission, which finished.
    pub fn lists(&mut self, entry: &CatalogEntry, path: &[u8]) -> Result<bool, StateError> {
        Ok(entry.since == self.submission
            || (entry.since < self.submission && self.contains(path)?))
    }

    /// Whether the submission listed `path`; cheapest for paths in order.
    fn contains(&mut self, path: &[u8]) -> Result<bool, StateError> {
        let holds = |r: &Record<'_>| r.first <= path && path <= r.last;
        if !record_at(&self.records)?.as_ref().is_some_and(holds) {
            self.seek(path)?;
        }
        match record_at(&self.records)?.filter(holds) {
            Some(record) => Ok(record.paths.contains_from(&mut self.at, path)?),
            None => Ok(false),
        }
    }

    /// The first record whose range overlaps `first..=last`, if any.
    /// For ascending ranges past the last record, no seek at all.
    pub fn overlapping(
        &mut self,
        first: &[u8],
        last: &[u8],
    ) -> Result<Option<Record<'_>>, StateError> {
        let past_the_end =
            self.sought.as_deref().is_some_and(|sought| sought <= first) && !self.records.valid();
        if !past_the_end {
            self.seek(first)?;
            self.sought = Some(first.to_vec());
        }
        Ok(record_at(&self.records)?.filter(|r| r.first <= last))
    }

    /// Moves to the first record whose last path is at or after `path`.
    fn seek(&mut self, path: &[u8]) -> Result<(), StateError> {
        self.records
            .seek(keys::listed(self.dataset, self.submission, path));
        self.at = Position::default();
        self.sought = None;
        Ok(self.records.status()?)
    }
}

/// The record the iterator is at, if any.
fn record_at<'r>(records: &'r DBRawIterator<'_>) -> Result<Option<Record<'r>>, StateError> {
    let (Some(key), Some(value)) = (records.key(), records.value()) else {
        return Ok(None);
    };
    Record::parse(key, value).map(Some)
}
