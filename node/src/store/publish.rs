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

use proto_schema::{DatasetId, Record};
use rocksdb::{DBCompressionType, IngestExternalFileOptions, Options, SstFileWriter};

use super::catalog::{JobInfo, JobTotals, WriteMode};
use super::gather::Gathering;
use super::keys::{self, FirstSeen};
use super::{DATA_CF, Store, StoreError, data_cf_options, table_options};

/// Writer options matching the data column family's table format, with
/// LZ4 and without. Static because an `SstFileWriter` borrows its options
/// for its whole life.
static SST_OPTIONS_LZ4: LazyLock<Options> = LazyLock::new(|| sst_options(DBCompressionType::Lz4));
static SST_OPTIONS_PLAIN: LazyLock<Options> =
    LazyLock::new(|| sst_options(DBCompressionType::None));

fn sst_options(compression: DBCompressionType) -> Options {
    let mut opts = data_cf_options();
    opts.set_compression_type(compression);
    opts.set_block_based_table_factory(&table_options(None));
    opts
}

/// A compressed file at least this much smaller than the bytes put into
/// it (keys and values; a plain file adds ~15% of index, filter and
/// framing) is worth compressing.
const WORTH_COMPRESSING: f64 = 0.9;

/// While files are written plain, every this-many-th is compressed again
/// to see whether the data has become compressible.
const PROBE_EVERY_FILES: u32 = 16;

/// Whether a sink's next SST file is LZ4-compressed: as long as it pays.
/// Keys such as hashes, ids or random text do not compress; on those LZ4
/// cost 15% of an ingest's CPU and saved 0.3% of the store. Each
/// compressed file is measured; once one saves too little, files are
/// written plain, with a compressed probe every [`PROBE_EVERY_FILES`].
/// RocksDB records the compression per block, so readers and later
/// compactions (which use LZ4) take any mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompressionChoice {
    compress: bool,
    plain_since_probe: u32,
}

impl Default for CompressionChoice {
    fn default() -> Self {
        Self {
            compress: true,
            plain_since_probe: 0,
        }
    }
}

impl CompressionChoice {
    /// Takes note of a finished file: its size on disk and the key and
    /// value bytes put into it.
    fn file_written(&mut self, file_bytes: u64, put_bytes: u64) {
        let label = if self.compress { "lz4" } else { "none" };
        metrics::counter!(SST_FILES_METRIC, "compression" => label).increment(1);
        if self.compress {
            self.compress = (file_bytes as f64) < WORTH_COMPRESSING * put_bytes as f64;
            self.plain_since_probe = 0;
        } else {
            self.plain_since_probe += 1;
            self.compress = self.plain_since_probe >= PROBE_EVERY_FILES;
        }
    }

    fn options(&self) -> &'static Options {
        if self.compress {
            &SST_OPTIONS_LZ4
        } else {
            &SST_OPTIONS_PLAIN
        }
    }
}

/// Counter of SST files written by jobs, by compression.
pub const SST_FILES_METRIC: &str = "quern_sst_files_total";

/// Job-record files one dataset may have before they are compacted into one.
pub const JOB_RECORD_FILES_LIMIT: usize = 8;

/// Gauge of the job-record files of the dataset last published.
pub const JOB_RECORD_FILES_METRIC: &str = "quern_store_job_record_files";

pub(super) fn sst_error(path: &Path, source: rocksdb::Error) -> StoreError {
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
    dataset: DatasetId,
    job: u32,
    mode: WriteMode,
    target_bytes: u64,
    max_keys: u64,
    /// Keys in the current file, and their key and value bytes.
    file_keys: u64,
    file_put_bytes: u64,
    current: Option<(SstFileWriter<'static>, PathBuf)>,
    compression: CompressionChoice,
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
            file_put_bytes: 0,
            current: None,
            compression: CompressionChoice::default(),
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
            let writer = SstFileWriter::create(self.compression.options());
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
        self.file_put_bytes += (self.key.len() + self.value.len()) as u64;
        if writer.file_size() >= self.target_bytes || self.file_keys >= self.max_keys {
            self.finish_file()?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), StoreError> {
        if let Some((mut writer, path)) = self.current.take() {
            writer.finish().map_err(|e| sst_error(&path, e))?;
            let file_bytes = std::fs::metadata(&path)
                .map_err(|e| StoreError::Io {
                    path: path.clone(),
                    source: e,
                })?
                .len();
            self.compression
                .file_written(file_bytes, self.file_put_bytes);
            self.files.push(path);
            self.file_keys = 0;
            self.file_put_bytes = 0;
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
        let mut writer = SstFileWriter::create(&SST_OPTIONS_LZ4);
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
            .map_err(|e| self.rocks_error(e))?;
        self.gather_job_records(job.dataset)
    }

    /// Every job's record arrives in its own tiny SST file: once a dataset
    /// has more than `JOB_RECORD_FILES_LIMIT` of them, they are compacted
    /// into one (`gather`).
    fn gather_job_records(&self, dataset: DatasetId) -> Result<(), StoreError> {
        let files = self.gather_small_files(&job_records(dataset))?;
        metrics::gauge!(JOB_RECORD_FILES_METRIC).set(files as f64);
        Ok(())
    }
}

/// A dataset's job records, every file of them.
fn job_records(dataset: DatasetId) -> Gathering {
    Gathering {
        cf_name: DATA_CF,
        first: keys::job_record_key(dataset, 0),
        last: keys::job_record_key(dataset, u32::MAX),
        small_bytes: usize::MAX,
        limit: JOB_RECORD_FILES_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::store::Access;
    use crate::store::catalog::JobState;
    use proto_schema::Position;

    /// Writes `(key, offset)` records of partition 0, file 0.
    fn write_keys<'a>(sink: &mut SstSink, keys: impl IntoIterator<Item = (&'a [u8], u64)>) {
        for (key, offset) in keys {
            let position = Position { file: 0, offset };
            sink.write(&Record {
                partition: 0,
                key,
                value: b"",
                position,
            })
            .unwrap();
        }
    }

    fn write_job(store: &Store, scratch: &Path, keys: &[(&[u8], u64)]) -> JobInfo {
        let ds = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store.begin_job(&ds, vec![]).unwrap();
        let mut sink = SstSink::new(scratch.to_path_buf(), 0, &job, 1 << 20, u64::MAX);
        write_keys(&mut sink, keys.iter().map(|&(key, offset)| (key, offset)));
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
    fn compression_stays_while_it_pays_and_probes_while_it_does_not() {
        let mut choice = CompressionChoice::default();
        assert!(choice.compress);
        choice.file_written(400, 1000);
        assert!(choice.compress, "a file at 40% of its input keeps LZ4");
        choice.file_written(1100, 1000);
        assert!(!choice.compress, "a file larger than its input goes plain");
        for _ in 1..PROBE_EVERY_FILES {
            choice.file_written(1150, 1000);
            assert!(!choice.compress);
        }
        choice.file_written(1150, 1000);
        assert!(
            choice.compress,
            "the 16th plain file is followed by a probe"
        );
    }

    /// Random keys do not compress: after the first file the sink writes
    /// plain files, which read back like compressed ones. (Long keys: the
    /// values, mostly zero bytes, do compress.)
    #[test]
    fn incompressible_keys_are_written_plain_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let ds = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store.begin_job(&ds, vec![]).unwrap();
        let sink_with = |lane: usize, keys: &[Vec<u8>]| {
            let mut sink = SstSink::new(store.tmp_dir(), lane, &job, u64::MAX, 1000);
            write_keys(
                &mut sink,
                keys.iter().zip(0..).map(|(key, i)| (&key[..], i)),
            );
            sink
        };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut random: Vec<Vec<u8>> = (0..3000)
            .map(|_| {
                (0..200)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 32) as u8
                    })
                    .collect()
            })
            .collect();
        random.sort();
        let sink = sink_with(0, &random);
        assert!(!sink.compression.compress, "random keys went plain");
        let (files, written) = sink.finish().unwrap();
        assert_eq!((files.len(), written), (3, 3000));
        let repetitive: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("/data/2026/12/03/some/long/directory/file-{i:06}.log").into_bytes())
            .collect();
        let sink = sink_with(1, &repetitive);
        assert!(sink.compression.compress, "path-like keys stay compressed");
        drop(sink.finish().unwrap());
        let totals = JobTotals {
            read: 3000,
            unique: 3000,
            ..JobTotals::default()
        };
        store
            .publish_job(&job, files, &totals, &store.tmp_dir())
            .unwrap();
        for key in random.iter().step_by(97) {
            assert!(
                store
                    .db()
                    .get_cf(store.data_cf(), {
                        let mut k = Vec::new();
                        keys::data_key(ds.id, 0, key, &mut k);
                        k
                    })
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[test]
    fn job_records_are_gathered_instead_of_piling_up_one_file_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let scratch = store.tmp_dir();
        let mut most = 0;
        let mut jobs = Vec::new();
        for n in 0..3 * JOB_RECORD_FILES_LIMIT as u64 {
            let key = n.to_be_bytes();
            jobs.push(write_job(&store, &scratch, &[(&key, n)]));
            let files = store.small_files(&job_records(jobs[0].dataset)).unwrap();
            most = most.max(files.len());
        }
        assert!(
            (2..=JOB_RECORD_FILES_LIMIT).contains(&most),
            "job-record files peaked at {most}, limit {JOB_RECORD_FILES_LIMIT}"
        );
        for job in &jobs {
            let totals = store.committed_totals(job.dataset, job.id).unwrap();
            assert_eq!(totals.map(|t| t.read), Some(1), "job {}", job.id);
        }
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
            keys::data_key(DatasetId(1), 0, key, &mut k);
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
        assert_eq!(
            store
                .committed_totals(DatasetId(1), 2)
                .unwrap()
                .unwrap()
                .read,
            2
        );
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
