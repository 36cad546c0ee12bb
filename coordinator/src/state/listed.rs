//! What each submission listed, so that a file listed again unchanged costs
//! no write of its own.
//!
//! Every applied chunk (or range) is kept under its last path as two values:
//! - its **paths**, sorted and front-coded (`path_list`), written once, by
//!   the submission that first listed the range with these files;
//! - its **record** in each submission's listing that lists it: whose
//!   paths they are, how many, the `EntriesDigest` of its entries as
//!   listed, and its first path.
//!
//! A later submission's digest range over the same files is checked
//! against the last finished submission's record alone (`digested`) and,
//! accepted, copies the record: a hundred bytes or so, where the paths
//! cost ~50 bytes a file. An unchanged range costs one small write per
//! submission, and its paths are never written again. The chunks of one
//! submission must not overlap in path range (a chunk that does is
//! refused), so the only record that can hold a path is the first whose
//! key is at or after it: one seek, and lookups in path order read each
//! record once.
//!
//! A catalogue entry names the submission that catalogued its version
//! (`since`). A file is live in a finished submission G if G catalogued it,
//! or an earlier one did and G listed it: a file that was gone in between
//! and listed again is catalogued again, as new, so listed by G means
//! listed by every submission since.
//!
//! Diffs read only the last finished submission's listing, and the gone
//! listing also the one before it. Finishing a submission forgets the
//! records of older ones (one range deletion) and the paths that only
//! those records pointed at: a record is copied only from the last
//! finished submission's, so paths the previous submission's record of
//! the same range does not point at, no later record does. Aborting a
//! submission forgets its records and its own paths, two range deletions.
//! Every paths value is pointed at by a kept record, and every record's
//! paths are kept (`check_tidy`, in the tests).

use proto_schema::ids::{DatasetId, JobId};
use rocksdb::{DB, DBPinnableSlice, DBRawIterator, ReadOptions, WriteBatch};

use super::StateError;
use super::keys::{self, CF_LISTED, CF_LISTED_PATHS};
use super::path_list::{self, PathList, Position};
use super::records::CatalogEntry;
use super::sorted_lookup::SortedLookup;

fn cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF_LISTED)
        .expect("column family created at open")
}

fn paths_cf(db: &DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(CF_LISTED_PATHS)
        .expect("column family created at open")
}

/// Bytes of a record before its first path: whose paths, the digest, the
/// number of paths.
const RECORD_HEAD: usize = 8 + 16 + 4;

/// Records that `submission` listed `paths` (sorted, distinct, at least
/// one) whose entries have `digest`: the paths, and the record pointing
/// at them.
pub fn record<'p>(
    batch: &mut WriteBatch,
    db: &DB,
    dataset: DatasetId,
    submission: JobId,
    paths: impl Iterator<Item = &'p [u8]> + Clone,
    digest: [u8; 16],
) {
    let mut count = 0u32;
    let mut first: &[u8] = &[];
    let mut last: &[u8] = &[];
    for path in paths.clone() {
        if count == 0 {
            first = path;
        }
        last = path;
        count += 1;
    }
    assert!(count > 0, "a chunk lists paths");
    let paths_key = keys::listed(dataset, submission, last);
    batch.put_cf(paths_cf(db), paths_key, path_list::encode(paths));
    let mut value = Vec::with_capacity(RECORD_HEAD + first.len());
    value.extend_from_slice(&keys::id(submission));
    value.extend_from_slice(&digest);
    value.extend_from_slice(&count.to_le_bytes());
    value.extend_from_slice(first);
    batch.put_cf(cf(db), key(dataset, submission, last), value);
}

/// Records that `submission` listed what another submission's record,
/// `value` (read with `Record::parse`), holds: the same paths, not
/// written again.
pub fn record_again(
    batch: &mut WriteBatch,
    db: &DB,
    dataset: DatasetId,
    submission: JobId,
    last: &[u8],
    value: &[u8],
) {
    batch.put_cf(cf(db), key(dataset, submission, last), value);
}

/// The key of a record in `submission`'s listing, ending at `last`.
pub fn key(dataset: DatasetId, submission: JobId, last: &[u8]) -> Vec<u8> {
    keys::listed(dataset, submission, last)
}

/// The listing's column family (for lookups through other cursors).
pub fn column_family(db: &DB) -> &rocksdb::ColumnFamily {
    cf(db)
}

/// Forgets what `dataset`'s submission `submission` (aborted) listed: its
/// records, and its own paths, which only its records point at.
pub fn forget_aborted(batch: &mut WriteBatch, db: &DB, dataset: DatasetId, submission: JobId) {
    for cf in [cf(db), paths_cf(db)] {
        batch.delete_range_cf(
            cf,
            keys::listed_prefix(dataset, submission),
            keys::listed_prefix(dataset, submission.next()),
        );
    }
}

/// Forgets the records of `dataset`'s submissions before `kept` (the
/// previous finished submission, whose listing the gone listing still
/// reads), and the paths they point at that `kept`'s record of the same
/// range does not. Reads every forgotten record: one listing's worth.
pub fn forget_before(
    batch: &mut WriteBatch,
    db: &DB,
    dataset: DatasetId,
    kept: JobId,
) -> Result<(), StateError> {
    let start = keys::listed_prefix(dataset, JobId(0));
    let end = keys::listed_prefix(dataset, kept);
    let mut opts = ReadOptions::default();
    // Read once, to be deleted: keep the cache for what stays.
    opts.fill_cache(false);
    opts.set_iterate_lower_bound(start);
    opts.set_iterate_upper_bound(end);
    let mut forgotten = db.raw_iterator_cf_opt(cf(db), opts);
    forgotten.seek_to_first();
    let kept_end = keys::listed_prefix(dataset, kept.next());
    // Each forgotten submission's records ascend: one cursor for each.
    let mut kept_records: Option<(JobId, SortedLookup<'_>)> = None;
    while let (Some(key), Some(value)) = (forgotten.key(), forgotten.value()) {
        let record = Record::parse(key, value)?;
        let of = keys::listed_submission(key).ok_or_else(|| corrupt(key))?;
        if kept_records.as_ref().is_none_or(|(at, _)| *at != of) {
            kept_records = Some((of, SortedLookup::new(db, cf(db), &kept_end)));
        }
        let (_, lookup) = kept_records.as_mut().expect("made above");
        let kept_key = self::key(dataset, kept, record.last);
        let still_pointed_at = match lookup.get(&kept_key)? {
            Some(value) => Record::parse(&kept_key, value)?.paths_of == record.paths_of,
            None => false,
        };
        if !still_pointed_at {
            let paths = keys::listed(dataset, record.paths_of, record.last);
            batch.delete_cf(paths_cf(db), paths);
        }
        forgotten.next();
    }
    forgotten.status()?;
    batch.delete_range_cf(cf(db), start, end);
    Ok(())
}

fn corrupt(key: &[u8]) -> StateError {
    StateError::Inconsistent(format!("listing record {key:02x?}"))
}

/// One range's record: its path range, how many paths, whose paths they
/// are and their entries' digest.
pub struct Record<'a> {
    pub first: &'a [u8],
    pub last: &'a [u8],
    pub files: u32,
    pub digest: [u8; 16],
    /// The submission under which the paths are kept.
    pub paths_of: JobId,
}

impl<'a> Record<'a> {
    /// The record stored under `key` as `value`.
    pub fn parse(key: &'a [u8], value: &'a [u8]) -> Result<Self, StateError> {
        let Some((head, first)) = value.split_at_checked(RECORD_HEAD) else {
            return Err(corrupt(key));
        };
        let (paths_of, rest) = head.split_at(8);
        let (digest, files) = rest.split_at(16);
        let files = u32::from_le_bytes(files.try_into().expect("4 bytes"));
        let last = keys::listed_last_path(key);
        if files == 0 || first.is_empty() || first > last {
            return Err(corrupt(key));
        }
        Ok(Record {
            first,
            last,
            files,
            digest: digest.try_into().expect("16 bytes"),
            paths_of: JobId(keys::decode_u64(paths_of).expect("8 bytes")),
        })
    }
}

/// One submission's listing, read through a cursor: the record found for
/// one path, its paths, and the position reached in them, are kept for
/// the next.
pub struct Listing<'a> {
    db: &'a DB,
    dataset: DatasetId,
    submission: JobId,
    records: DBRawIterator<'a>,
    /// The paths of the record the cursor is at, once read.
    paths: Option<DBPinnableSlice<'a>>,
    /// Where lookups stand in those paths.
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
            db,
            dataset,
            submission,
            records: db.raw_iterator_cf_opt(cf(db), opts),
            paths: None,
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
    pub fn contains(&mut self, path: &[u8]) -> Result<bool, StateError> {
        let holds = |r: &Record<'_>| r.first <= path && path <= r.last;
        if !record_at(&self.records)?.as_ref().is_some_and(holds) {
            self.seek(path)?;
        }
        let Some(record) = record_at(&self.records)?.filter(holds) else {
            return Ok(false);
        };
        if self.paths.is_none() {
            let key = keys::listed(self.dataset, record.paths_of, record.last);
            let paths = self.db.get_pinned_cf(paths_cf(self.db), &key)?;
            self.paths = Some(paths.ok_or_else(|| {
                StateError::Inconsistent(format!("listing paths {key:02x?}, which a record names"))
            })?);
        }
        let paths = PathList::parse(self.paths.as_deref().expect("read above"))?;
        Ok(paths.contains_from(&mut self.at, path)?)
    }

    /// Whether a record's range overlaps `first..=last`. For ascending
    /// ranges past the last record, no seek at all.
    pub fn overlaps(&mut self, first: &[u8], last: &[u8]) -> Result<bool, StateError> {
        let past_the_end =
            self.sought.as_deref().is_some_and(|sought| sought <= first) && !self.records.valid();
        if !past_the_end {
            self.seek(first)?;
            self.sought = Some(first.to_vec());
        }
        Ok(record_at(&self.records)?.is_some_and(|r| r.first <= last))
    }

    /// Moves to the first record whose last path is at or after `path`.
    fn seek(&mut self, path: &[u8]) -> Result<(), StateError> {
        self.records.seek(key(self.dataset, self.submission, path));
        self.paths = None;
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

/// Checks that `dataset`'s listing holds records of the submissions
/// `kept` only, that every record's paths are there, and that every
/// paths value is pointed at by a record: nothing dangles, nothing
/// leaks.
#[cfg(test)]
pub fn check_tidy(db: &DB, dataset: DatasetId, kept: &[JobId]) -> Result<(), String> {
    use std::collections::BTreeSet;

    let mut pointed_at = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let prefix = keys::dataset_prefix(dataset);
    let of_dataset = |cf| {
        db.prefix_iterator_cf(cf, prefix)
            .map(|item| item.map_err(|e| e.to_string()))
            .take_while(|item| item.as_ref().is_ok_and(|(key, _)| key.starts_with(&prefix)))
    };
    for item in of_dataset(cf(db)) {
        let (key, value) = item?;
        let submission = keys::listed_submission(&key).ok_or("a short key")?;
        if !kept.contains(&submission) {
            return Err(format!("a record of submission {submission:?}, not kept"));
        }
        let record = Record::parse(&key, &value).map_err(|e| e.to_string())?;
        pointed_at.insert((record.paths_of, record.last.to_vec()));
    }
    for item in of_dataset(paths_cf(db)) {
        let (key, value) = item?;
        let submission = keys::listed_submission(&key).ok_or("a short key")?;
        let list = PathList::parse(&value).map_err(|e| e.to_string())?;
        if list.is_empty() {
            return Err("an empty paths value".into());
        }
        paths.insert((submission, keys::listed_last_path(&key).to_vec()));
    }
    if let Some(dangling) = pointed_at.difference(&paths).next() {
        return Err(format!("a record points at paths not kept: {dangling:?}"));
    }
    if let Some(leaked) = paths.difference(&pointed_at).next() {
        return Err(format!("paths no record points at: {leaked:?}"));
    }
    Ok(())
}
