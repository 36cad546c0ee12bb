//! Writing a job's records as SST files and publishing them atomically.
//!
//! Each lane writes its own SST files (lanes own disjoint partition ranges,
//! so their files never overlap). At the end the job adds one more file
//! holding its job record and ingests all of them in a single
//! `IngestExternalFile` call: RocksDB applies that atomically, so a job is
//! either entirely in the store or not at all, and a killed job leaves
//! nothing to clean up but its scratch directory.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proto_schema::Record;
use rocksdb::{IngestExternalFileOptions, Options, SstFileWriter};

use super::catalog::{JobInfo, JobTotals, WriteMode};
use super::keys::{self, FirstSeen};
use super::{Store, StoreError, data_cf_options, table_options};

/// Writer options matching the data column family's table format. Static
/// because an `SstFileWriter` borrows its options for its whole life.
static SST_OPTIONS: LazyLock<Options> = LazyLock::new(|| {
    let mut opts = data_cf_options();
    opts.set_block_based_table_factory(&table_options(None));
    opts
});

fn sst_error(path: &Path, source: rocksdb::Error) -> StoreError {
    StoreError::Rocks {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes one lane's records, in store-key order, into SST files of about
/// `target_bytes` or `max_keys` each, whichever comes first.
pub struct SstSink {
    dir: PathBuf,
    lane: usize,
    dataset: u32,
    job: u32,
    mode: WriteMode,
    target_bytes: u64,
    max_keys: u64,
    /// Keys in the current file.
    file_keys: u64,
    current: Option<(SstFileWriter<'static>, PathBuf)>,
    files: Vec<PathBuf>,
    keys_written: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl SstSink {
    pub fn new(dir: PathBuf, lane: usize, job: &JobInfo, target_bytes: u64, max_keys: u64) -> Self {
        Self {
            dir,
            lane,
            dataset: job.dataset,
            job: job.id,
            mode: job.write_mode,
            target_bytes,
            max_keys,
            file_keys: 0,
            current: None,
            files: Vec::new(),
            keys_written: 0,
            key: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Adds a record. Records must come in merge order, one per key.
    pub fn write(&mut self, record: &Record<'_>) -> Result<(), StoreError> {
        if self.current.is_none() {
            let path = self
                .dir
                .join(format!("lane{}-{:05}.sst", self.lane, self.files.len()));
            let writer = SstFileWriter::create(&SST_OPTIONS);
            writer.open(&path).map_err(|e| sst_error(&path, e))?;
            self.current = Some((writer, path));
        }
        let (writer, path) = self.current.as_mut().expect("opened above");
        keys::data_key(self.dataset, record.partition, record.key, &mut self.key);
        let first_seen = FirstSeen {
            job: self.job,
            position: record.position,
        };
        keys::data_value(first_seen, record.value, &mut self.value);
        match self.mode {
            WriteMode::Put => writer.put(&self.key, &self.value),
            WriteMode::Merge => writer.merge(&self.key, &self.value),
        }
        .map_err(|e| sst_error(path, e))?;
        self.keys_written += 1;
        self.file_keys += 1;
        if writer.file_size() >= self.target_bytes || self.file_keys >= self.max_keys {
            self.finish_file()?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), StoreError> {
        if let Some((mut writer, path)) = self.current.take() {
            writer.finish().map_err(|e| sst_error(&path, e))?;
            self.files.push(path);
            self.file_keys = 0;
        }
        Ok(())
    }

    /// Closes the last file; returns the files and the number of keys.
    pub fn finish(mut self) -> Result<(Vec<PathBuf>, u64), StoreError> {
        self.finish_file()?;
        Ok((std::mem::take(&mut self.files), self.keys_written))
    }
}

impl Store {
    /// Makes a job's records visible, all at once: its lanes' SST files plus
    /// its job record, in one atomic ingest. The job's ledger is made
    /// durable first, so a committed job always has its ledger.
    pub fn publish_job(
        &self,
        job: &JobInfo,
        mut files: Vec<PathBuf>,
        totals: &JobTotals,
        scratch: &Path,
    ) -> Result<(), StoreError> {
        let record_path = scratch.join("job-record.sst");
        let mut writer = SstFileWriter::create(&SST_OPTIONS);
        writer
            .open(&record_path)
            .map_err(|e| sst_error(&record_path, e))?;
        let record = serde_json::to_vec(totals).expect("totals serialize");
        writer
            .put(keys::job_record_key(job.dataset, job.id), record)
            .and_then(|()| writer.finish())
            .map_err(|e| sst_error(&record_path, e))?;
        files.push(record_path);

        self.db().flush_wal(true).map_err(|e| self.rocks_error(e))?;
        let mut opts = IngestExternalFileOptions::default();
        // The files are ours and on the same file system: link, don't copy.
        opts.set_move_files(true);
        self.db()
            .ingest_external_file_cf_opts(self.data_cf(), &opts, files)
            .map_err(|e| self.rocks_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::store::Access;
    use crate::store::catalog::JobState;
    use proto_schema::Position;

    fn write_job(store: &Store, scratch: &Path, keys: &[(&[u8], u64)]) -> JobInfo {
        let ds = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store.begin_job(&ds, vec![]).unwrap();
        let mut sink = SstSink::new(scratch.to_path_buf(), 0, &job, 1 << 20, u64::MAX);
        for (key, offset) in keys {
            let position = Position {
                file: 0,
                offset: *offset,
            };
            sink.write(&Record {
                partition: 0,
                key,
                value: b"",
                position,
            })
            .unwrap();
        }
        let (files, written) = sink.finish().unwrap();
        assert_eq!(written, keys.len() as u64);
        let totals = JobTotals {
            read: keys.len() as u64,
            unique: keys.len() as u64,
            ..JobTotals::default()
        };
        store.publish_job(&job, files, &totals, scratch).unwrap();
        store
            .end_job(&job, JobState::Committed, Some(totals))
            .unwrap()
    }

    #[test]
    fn later_jobs_never_replace_first_occurrences() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let scratch = store.tmp_dir();
        let first = write_job(&store, &scratch, &[(b"a", 10), (b"b", 20)]);
        assert_eq!(first.write_mode, WriteMode::Put);
        let second = write_job(&store, &scratch, &[(b"a", 0), (b"c", 5)]);
        assert_eq!(second.write_mode, WriteMode::Merge);

        let get = |key: &[u8]| {
            let mut k = Vec::new();
            keys::data_key(1, 0, key, &mut k);
            let v = store.db().get_cf(store.data_cf(), &k).unwrap().unwrap();
            let (seen, _) = keys::parse_data_value(&v).unwrap();
            (seen.job, seen.position.offset)
        };
        assert_eq!(
            get(b"a"),
            (1, 10),
            "job 1 saw it first, though at a larger offset"
        );
        assert_eq!(get(b"b"), (1, 20));
        assert_eq!(get(b"c"), (2, 5));
        assert_eq!(store.committed_totals(1, 2).unwrap().unwrap().read, 2);
        // The moved files are gone from the scratch directory.
        let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn files_are_cut_at_the_key_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let ds = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store.begin_job(&ds, vec![]).unwrap();
        let mut sink = SstSink::new(store.tmp_dir(), 0, &job, 1 << 30, 2);
        for key in [b"a", b"b", b"c", b"d", b"e"] {
            let position = Position { file: 0, offset: 0 };
            sink.write(&Record {
                partition: 0,
                key,
                value: b"",
                position,
            })
            .unwrap();
        }
        let (files, keys) = sink.finish().unwrap();
        assert_eq!((files.len(), keys), (3, 5));
    }

    #[test]
    fn out_of_order_keys_are_a_clean_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let ds = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store.begin_job(&ds, vec![]).unwrap();
        let mut sink = SstSink::new(store.tmp_dir(), 0, &job, 1 << 20, 1000);
        let rec = |key: &'static [u8]| Record {
            partition: 0,
            key,
            value: b"",
            position: Position { file: 0, offset: 0 },
        };
        sink.write(&rec(b"b")).unwrap();
        let err = sink.write(&rec(b"a")).unwrap_err();
        assert!(err.to_string().contains("lane0-00000.sst"), "{err}");
    }
}
