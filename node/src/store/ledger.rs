//! A job's ledger: each input file, its counters, its problems, and the
//! rejected records. Written in bounded batches while the job runs, read
//! back by streaming (a job may have millions of files).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_schema::DatasetId;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::keys::meta;
use super::{Store, StoreError};
use crate::input::shard::InputFile;
use crate::quarantine::{FileProblem, RejectedRecord};

/// Per-file record counters. `read = unique + duplicates + rejected`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounts {
    pub read: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl FileCounts {
    const ENCODED_LEN: usize = 32;

    fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        for (i, v) in [self.read, self.unique, self.duplicates, self.rejected]
            .into_iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let field = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        Self {
            read: field(0),
            unique: field(1),
            duplicates: field(2),
            rejected: field(3),
        }
    }

    pub fn add(&mut self, other: FileCounts) {
        self.read += other.read;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
    }

    pub fn reconciles(&self) -> bool {
        self.read == self.unique + self.duplicates + self.rejected
    }
}

/// One file of a job as `quern stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub seq: u32,
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
    pub counts: FileCounts,
    pub problems: Vec<FileProblem>,
}

/// `size u64 | modified ns i64 (i64::MIN when unknown) | path bytes`.
fn encode_file(file: &InputFile) -> Vec<u8> {
    let modified = file
        .modified
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(i64::MIN, |d| d.as_nanos() as i64);
    let mut out = Vec::with_capacity(16 + file.path.as_os_str().len());
    out.extend_from_slice(&file.size.to_be_bytes());
    out.extend_from_slice(&modified.to_be_bytes());
    out.extend_from_slice(file.path.as_os_str().as_bytes());
    out
}

fn decode_file(bytes: &[u8]) -> Option<(u64, Option<SystemTime>, PathBuf)> {
    let size = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let modified = i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    let modified =
        (modified != i64::MIN).then(|| UNIX_EPOCH + Duration::from_nanos(modified as u64));
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[16..]));
    Some((size, modified, path))
}

/// A raw meta key and value.
type MetaEntry = (Box<[u8]>, Box<[u8]>);

/// Problems without a place sort last among a file's problems.
const NO_OFFSET: u64 = u64::MAX;

impl Store {
    pub(super) fn write_batch(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.db().write(batch).map_err(|e| self.rocks_error(e))
    }

    pub fn put_files(
        &self,
        dataset: DatasetId,
        job: u32,
        files: &[InputFile],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for file in files {
            let key = meta::file_scoped(meta::FILE, dataset, job, file.seq);
            batch.put_cf(self.meta_cf(), key, encode_file(file));
        }
        self.write_batch(batch)
    }

    /// Adds to files' counters (merge operands, so writers never read).
    pub fn add_file_counts(
        &self,
        dataset: DatasetId,
        job: u32,
        counts: impl IntoIterator<Item = (u32, FileCounts)>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (file, c) in counts {
            let key = meta::file_scoped(meta::COUNTS, dataset, job, file);
            batch.merge_cf(self.meta_cf(), key, c.to_bytes());
        }
        self.write_batch(batch)
    }

    pub fn put_problem(
        &self,
        dataset: DatasetId,
        job: u32,
        file: u32,
        problem: &FileProblem,
    ) -> Result<(), StoreError> {
        let mut key = meta::file_scoped(meta::PROBLEM, dataset, job, file);
        key.extend_from_slice(&problem.offset.unwrap_or(NO_OFFSET).to_be_bytes());
        let value = serde_json::to_vec(problem).expect("problems serialize");
        self.db()
            .put_cf(self.meta_cf(), key, value)
            .map_err(|e| self.rocks_error(e))
    }

    pub fn put_rejections(
        &self,
        dataset: DatasetId,
        job: u32,
        rejected: &[RejectedRecord],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for r in rejected {
            let value = serde_json::to_vec(r).expect("rejections serialize");
            batch.put_cf(
                self.meta_cf(),
                meta::rejected(dataset, job, r.file, r.offset),
                value,
            );
        }
        self.write_batch(batch)
    }

    /// The meta entries in `[start, end)`, in key order.
    pub(super) fn meta_range<'a>(
        &'a self,
        start: &[u8],
        end: Vec<u8>,
    ) -> impl Iterator<Item = Result<MetaEntry, StoreError>> + use<'a> {
        self.db()
            .iterator_cf(
                self.meta_cf(),
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|item| item.map_err(|e| self.rocks_error(e)))
            .take_while(move |item| item.as_ref().map_or(true, |(key, _)| **key < *end))
    }

    fn corrupt(&self, what: &str, key: &[u8]) -> StoreError {
        StoreError::Catalog(format!(
            "{what} entry {} in {} is unreadable",
            key.escape_ascii(),
            self.root().display()
        ))
    }

    /// A job's files in input order, with their counters and problems.
    pub fn files(
        &self,
        dataset: DatasetId,
        job: u32,
    ) -> impl Iterator<Item = Result<FileRow, StoreError>> + '_ {
        let (start, end) = meta::job_range(meta::FILE, dataset, job);
        self.meta_range(&start, end).map(move |item| {
            let (key, value) = item?;
            let seq = meta::file_of(&key).ok_or_else(|| self.corrupt("file", &key))?;
            let (size, modified, path) =
                decode_file(&value).ok_or_else(|| self.corrupt("file", &key))?;
            Ok(FileRow {
                seq,
                path,
                size,
                modified,
                counts: self.file_counts(dataset, job, seq)?,
                problems: self.file_problems(dataset, job, seq)?,
            })
        })
    }

    /// Every file of a job with counters, listed here or not (in a
    /// cluster job an owner counts records of files other nodes read), in
    /// file order.
    pub fn counted_files(
        &self,
        dataset: DatasetId,
        job: u32,
    ) -> impl Iterator<Item = Result<(u32, FileCounts), StoreError>> + '_ {
        let (start, end) = meta::job_range(meta::COUNTS, dataset, job);
        self.meta_range(&start, end).map(move |item| {
            let (key, value) = item?;
            let seq = meta::file_of(&key).ok_or_else(|| self.corrupt("counters", &key))?;
            Ok((seq, FileCounts::from_bytes(&value)))
        })
    }

    pub fn file_counts(
        &self,
        dataset: DatasetId,
        job: u32,
        file: u32,
    ) -> Result<FileCounts, StoreError> {
        let key = meta::file_scoped(meta::COUNTS, dataset, job, file);
        let value = self
            .db()
            .get_cf(self.meta_cf(), key)
            .map_err(|e| self.rocks_error(e))?;
        Ok(value.map_or_else(FileCounts::default, |v| FileCounts::from_bytes(&v)))
    }

    fn file_problems(
        &self,
        dataset: DatasetId,
        job: u32,
        file: u32,
    ) -> Result<Vec<FileProblem>, StoreError> {
        let start = meta::file_scoped(meta::PROBLEM, dataset, job, file);
        let end = meta::file_scoped(meta::PROBLEM, dataset, job, file + 1);
        self.meta_range(&start, end)
            .map(|item| {
                let (key, value) = item?;
                serde_json::from_slice(&value).map_err(|_| self.corrupt("problem", &key))
            })
            .collect()
    }

    /// The number of files of a job with at least one problem.
    pub fn problem_file_count(&self, dataset: DatasetId, job: u32) -> Result<u64, StoreError> {
        let (start, end) = meta::job_range(meta::PROBLEM, dataset, job);
        let (mut count, mut last) = (0, None);
        for item in self.meta_range(&start, end) {
            let (key, _) = item?;
            let file = meta::file_of(&key).ok_or_else(|| self.corrupt("problem", &key))?;
            if last.replace(file) != Some(file) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// The path of a job's file.
    pub fn file_path(
        &self,
        dataset: DatasetId,
        job: u32,
        file: u32,
    ) -> Result<Option<PathBuf>, StoreError> {
        let key = meta::file_scoped(meta::FILE, dataset, job, file);
        let value = self
            .db()
            .get_cf(self.meta_cf(), &key)
            .map_err(|e| self.rocks_error(e))?;
        value
            .map(|v| {
                decode_file(&v)
                    .map(|(_, _, path)| path)
                    .ok_or_else(|| self.corrupt("file", &key))
            })
            .transpose()
    }

    /// A job's rejected records in file and offset order.
    pub fn rejections(
        &self,
        dataset: DatasetId,
        job: u32,
    ) -> impl Iterator<Item = Result<RejectedRecord, StoreError>> + '_ {
        let (start, end) = meta::job_range(meta::REJECTED, dataset, job);
        self.meta_range(&start, end).map(|item| {
            let (key, value) = item?;
            serde_json::from_slice(&value).map_err(|_| self.corrupt("rejected record", &key))
        })
    }

    /// Removes a job's ledger (for jobs that left nothing in the store).
    pub(super) fn delete_ledger(&self, dataset: DatasetId, job: u32) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for tag in meta::JOB_SCOPED {
            let (start, end) = meta::job_range(tag, dataset, job);
            batch.delete_range_cf(self.meta_cf(), start, end);
        }
        self.write_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::Rejection;
    use crate::store::Access;

    #[test]
    fn files_counts_problems_and_rejections_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let odd_name = PathBuf::from(std::ffi::OsStr::from_bytes(b"/in/\xff.txt"));
        let files = [
            InputFile {
                seq: 0,
                path: "/in/a".into(),
                size: 10,
                modified: Some(UNIX_EPOCH + Duration::from_nanos(1_500)),
            },
            InputFile {
                seq: 1,
                path: odd_name.clone(),
                size: 0,
                modified: None,
            },
        ];
        store.put_files(DatasetId(1), 1, &files).unwrap();
        let c = |read, unique, duplicates, rejected| FileCounts {
            read,
            unique,
            duplicates,
            rejected,
        };
        store
            .add_file_counts(DatasetId(1), 1, [(0, c(5, 0, 0, 1)), (1, c(1, 1, 0, 0))])
            .unwrap();
        store
            .add_file_counts(DatasetId(1), 1, [(0, c(0, 3, 1, 0))])
            .unwrap();
        let problem = FileProblem {
            offset: Some(7),
            message: "corrupt gzip data".into(),
        };
        store.put_problem(DatasetId(1), 1, 0, &problem).unwrap();
        let rejected = RejectedRecord {
            file: 0,
            offset: 3,
            rejection: Rejection::TooLong { len: 9, max: 4 },
            excerpt: "x".into(),
        };
        store
            .put_rejections(DatasetId(1), 1, std::slice::from_ref(&rejected))
            .unwrap();
        // Another job's ledger stays separate.
        store
            .add_file_counts(DatasetId(1), 2, [(0, c(100, 100, 0, 0))])
            .unwrap();

        let rows: Vec<FileRow> = store
            .files(DatasetId(1), 1)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].counts, rows[0].modified),
            (c(5, 3, 1, 1), files[0].modified)
        );
        assert!(rows[0].counts.reconciles());
        assert_eq!(rows[0].problems, vec![problem]);
        assert_eq!(
            (rows[1].path.clone(), rows[1].modified),
            (odd_name.clone(), None)
        );
        assert_eq!(store.file_path(DatasetId(1), 1, 1).unwrap(), Some(odd_name));

        let seen: Vec<RejectedRecord> = store
            .rejections(DatasetId(1), 1)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seen, vec![rejected]);
        assert_eq!(store.problem_file_count(DatasetId(1), 1).unwrap(), 1);

        store.delete_ledger(DatasetId(1), 1).unwrap();
        assert_eq!(store.files(DatasetId(1), 1).count(), 0);
        assert_eq!(store.problem_file_count(DatasetId(1), 1).unwrap(), 0);
        assert_eq!(store.file_counts(DatasetId(1), 2, 0).unwrap().read, 100);
    }
}
