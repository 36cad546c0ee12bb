//! A job's ledger: each input file, its counters, its problems, and the
//! rejected records. Written in bounded batches while the job runs, read
//! back by streaming (a job may have millions of files).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_schema::DatasetId;
use rocksdb::{
    Direction, IngestExternalFileOptions, IteratorMode, Options, SstFileWriter, WriteBatch,
};

use super::gather::Gathering;
use super::keys::meta;
use super::publish::sst_error;
use super::{META_CF, META_TARGET_FILE_BYTES, Store, StoreError, meta_cf_options, table_options};
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

/// Writer options matching the meta column family's table format. Static
/// because an `SstFileWriter` borrows its options for its whole life.
static LEDGER_SST_OPTIONS: LazyLock<Options> = LazyLock::new(|| {
    let mut opts = meta_cf_options();
    opts.set_block_based_table_factory(&table_options(None));
    opts
});

/// What a [`LedgerWriter`] writes: one entry per file of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerPart {
    /// Each file's path, size and modification time.
    Files,
    /// Each file's counts.
    Counts,
}

impl LedgerPart {
    fn tag(self) -> u8 {
        match self {
            LedgerPart::Files => meta::FILE,
            LedgerPart::Counts => meta::COUNTS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            LedgerPart::Files => "files",
            LedgerPart::Counts => "counts",
        }
    }

    /// A dataset's entries of this part, its files under half the meta
    /// target size.
    fn gathering(self, dataset: DatasetId) -> Gathering {
        // The range's end is exclusive, but no key of the tag equals it.
        let (first, last) = meta::dataset_range(self.tag(), dataset);
        Gathering {
            cf_name: META_CF,
            first,
            last,
            small_bytes: META_TARGET_FILE_BYTES as usize / 2,
            limit: LEDGER_SMALL_FILES_LIMIT,
        }
    }
}

/// A part of a job's ledger on its way in: one entry per file, in
/// ascending file order, written to SST files in a scratch directory and
/// ingested together by [`finish`](Self::finish). A job's entries of one
/// part are a key range of their own, so the files go straight to the
/// last level and are rewritten only when a dataset's small ones are
/// gathered (`gather`): through the memtable, every key was flushed and
/// then compacted in the background (over a million small files, the meta
/// column family's compactions took 1.8 s of a 13 s job's wall time).
/// Puts, not merge operands: counts written twice are still the job's
/// counts.
pub struct LedgerWriter<'a> {
    store: &'a Store,
    part: LedgerPart,
    dataset: DatasetId,
    job: u32,
    dir: PathBuf,
    current: Option<(SstFileWriter<'static>, PathBuf)>,
    files: Vec<PathBuf>,
    last: Option<u32>,
}

impl<'a> LedgerWriter<'a> {
    /// Files are written under `dir` (created if missing): the job's
    /// scratch, on the store's file system, so ingesting moves them.
    pub fn new(
        store: &'a Store,
        part: LedgerPart,
        dataset: DatasetId,
        job: u32,
        dir: PathBuf,
    ) -> Self {
        Self {
            store,
            part,
            dataset,
            job,
            dir,
            current: None,
            files: Vec::new(),
            last: None,
        }
    }

    /// Whether `files` may come next: strictly ascending, after the last
    /// file written.
    pub fn takes(&self, files: impl IntoIterator<Item = u32>) -> bool {
        let mut previous = self.last;
        files.into_iter().all(|file| {
            let ascends = previous.is_none_or(|p| p < file);
            previous = Some(file);
            ascends
        })
    }

    /// Writes `file`'s counts (a [`LedgerPart::Counts`] writer).
    pub fn add_counts(&mut self, file: u32, counts: FileCounts) -> Result<(), StoreError> {
        debug_assert_eq!(self.part, LedgerPart::Counts);
        self.put(file, &counts.to_bytes())
    }

    /// Writes `file`'s entry (a [`LedgerPart::Files`] writer).
    pub fn add_file(&mut self, file: &InputFile) -> Result<(), StoreError> {
        debug_assert_eq!(self.part, LedgerPart::Files);
        self.put(file.seq, &encode_file(file))
    }

    /// Files come in ascending order, each once.
    fn put(&mut self, file: u32, value: &[u8]) -> Result<(), StoreError> {
        if !self.takes([file]) {
            return Err(StoreError::Catalog(format!(
                "ledger {} of job {} out of order: file {file} after {}",
                self.part.name(),
                self.job,
                self.last.unwrap_or_default()
            )));
        }
        self.last = Some(file);
        if self.current.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let name = format!("ledger-{}-{:05}.sst", self.part.name(), self.files.len());
            let path = self.dir.join(name);
            let writer = SstFileWriter::create(&LEDGER_SST_OPTIONS);
            writer.open(&path).map_err(|e| sst_error(&path, e))?;
            self.current = Some((writer, path));
        }
        let (writer, path) = self.current.as_mut().expect("opened above");
        let key = meta::file_scoped(self.part.tag(), self.dataset, self.job, file);
        writer.put(key, value).map_err(|e| sst_error(path, e))?;
        if writer.file_size() >= META_TARGET_FILE_BYTES {
            self.finish_file()?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), StoreError> {
        if let Some((mut writer, path)) = self.current.take() {
            writer.finish().map_err(|e| sst_error(&path, e))?;
            self.files.push(path);
        }
        Ok(())
    }

    /// Ingests every file written (atomically, moving them).
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.finish_file()?;
        if self.files.is_empty() {
            return Ok(());
        }
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let store = self.store;
        store
            .db()
            .ingest_external_file_cf_opts(store.meta_cf(), &opts, std::mem::take(&mut self.files))
            .map_err(|e| store.rocks_error(e))?;
        let files = store.gather_small_files(&self.part.gathering(self.dataset))?;
        metrics::gauge!(LEDGER_SMALL_FILES_METRIC, "part" => self.part.name()).set(files as f64);
        Ok(())
    }
}

/// Small files of one part (file entries, file counts) one dataset may
/// have before they are compacted together: each job ingests its own
/// (`gather`).
pub const LEDGER_SMALL_FILES_LIMIT: usize = 8;

/// Gauge of the small ledger files of the dataset last written, by part.
pub const LEDGER_SMALL_FILES_METRIC: &str = "quern_store_ledger_small_files";

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

    /// Counts are puts: a job's counts written again stay its counts (the
    /// merge operands they were would have doubled them); a file out of
    /// order is refused before anything is ingested.
    #[test]
    fn counts_written_twice_stay_and_out_of_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let counts = FileCounts {
            read: 3,
            unique: 2,
            duplicates: 1,
            rejected: 0,
        };
        let writer = |job| {
            let scratch = dir.path().join("s");
            LedgerWriter::new(&store, LedgerPart::Counts, DatasetId(1), job, scratch)
        };
        for _ in 0..2 {
            let mut writer = writer(4);
            writer.add_counts(0, counts).unwrap();
            writer.add_counts(9, counts).unwrap();
            writer.finish().unwrap();
        }
        assert_eq!(store.file_counts(DatasetId(1), 4, 9).unwrap(), counts);
        let mut writer = writer(5);
        writer.add_counts(2, counts).unwrap();
        let err = writer.add_counts(2, counts).unwrap_err().to_string();
        assert!(err.contains("out of order: file 2 after 2"), "{err}");
        drop(writer);
        assert_eq!(
            store.file_counts(DatasetId(1), 5, 2).unwrap(),
            FileCounts::default()
        );
    }

    /// Each job's file entries and counts arrive as files of their own,
    /// which RocksDB would keep for good: past the limit they are
    /// compacted together, so a long-lived store's files (and table
    /// readers) do not grow with jobs.
    #[test]
    fn each_jobs_ledger_files_are_gathered_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let counts = |job: u32| FileCounts {
            read: u64::from(job) + 1,
            unique: u64::from(job) + 1,
            duplicates: 0,
            rejected: 0,
        };
        let entry = |job: u32, seq: u32| InputFile {
            seq,
            path: format!("/in/{job}/{seq}").into(),
            size: u64::from(job),
            modified: None,
        };
        let jobs = 3 * LEDGER_SMALL_FILES_LIMIT as u32;
        for part in [LedgerPart::Files, LedgerPart::Counts] {
            let mut most = 0;
            for job in 0..jobs {
                let scratch = dir.path().join("s");
                let mut writer = LedgerWriter::new(&store, part, DatasetId(1), job, scratch);
                for seq in [0, 7] {
                    match part {
                        LedgerPart::Files => writer.add_file(&entry(job, seq)).unwrap(),
                        LedgerPart::Counts => writer.add_counts(seq, counts(job)).unwrap(),
                    }
                }
                writer.finish().unwrap();
                let files = store.small_files(&part.gathering(DatasetId(1))).unwrap();
                most = most.max(files.len());
            }
            assert!(
                (2..=LEDGER_SMALL_FILES_LIMIT).contains(&most),
                "{part:?} files peaked at {most}, limit {LEDGER_SMALL_FILES_LIMIT}"
            );
        }
        for job in 0..jobs {
            assert_eq!(
                store.file_counts(DatasetId(1), job, 7).unwrap(),
                counts(job)
            );
            let paths: Vec<PathBuf> = store
                .files(DatasetId(1), job)
                .map(|row| row.unwrap().path)
                .collect();
            assert_eq!(paths, [entry(job, 0).path, entry(job, 7).path]);
        }
    }

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
        let scratch = dir.path().join("scratch");
        let write_counts = |job, counts: &[(u32, FileCounts)]| {
            let mut writer = LedgerWriter::new(
                &store,
                LedgerPart::Counts,
                DatasetId(1),
                job,
                scratch.clone(),
            );
            for &(file, c) in counts {
                writer.add_counts(file, c).unwrap();
            }
            writer.finish().unwrap();
        };
        write_counts(1, &[(0, c(5, 3, 1, 1)), (1, c(1, 1, 0, 0))]);
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
        write_counts(2, &[(0, c(100, 100, 0, 0))]);

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
