//! Counting every record (invariant 3): read = unique + duplicates +
//! rejected, per job and per file.
//!
//! Each stage keeps a [`FileTally`] of per-file deltas and spills it as a
//! sorted run ([`TallyRuns`]) when it grows past a bound or the stage ends,
//! so memory stays bounded however many files a job has; the job writes
//! each file's total to its ledger once, at the end. Job totals are shared
//! atomics, published once per batch rather than per record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::store::ledger::FileCounts;
use crate::tally_runs::{TallyError, TallyRuns};

/// Gauge: bytes of the current job's input (label phase: listed, scanned).
pub const JOB_BYTES_METRIC: &str = "quern_job_bytes";
/// Gauge: records of the current job (label outcome: read, unique,
/// duplicate, rejected, merged, received).
pub const JOB_RECORDS_METRIC: &str = "quern_job_records";
/// Gauge: files listed for the current job.
pub const JOB_FILES_METRIC: &str = "quern_job_files";
/// How often a running job's progress gauges are set.
pub const JOB_PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Live job-wide counters, read by progress reporting, the summary and the
/// job progress gauges.
#[derive(Debug, Default)]
pub struct JobCounters {
    pub files_listed: AtomicU64,
    /// Symbolic links met inside directories and not followed: not input
    /// files, so never listed and without records.
    pub links_skipped: AtomicU64,
    pub bytes_listed: AtomicU64,
    pub bytes_scanned: AtomicU64,
    pub problem_files: AtomicU64,
    pub read: AtomicU64,
    pub unique: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    /// Records that have reached the final merge: progress of that phase.
    pub merged: AtomicU64,
    /// Records this node's lanes took from its peers' shuffle streams.
    pub received: AtomicU64,
    pub runs_spilled: AtomicU64,
    pub merge_passes: AtomicU64,
}

impl JobCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sets the job progress gauges (`JOB_BYTES_METRIC` by phase,
    /// `JOB_RECORDS_METRIC` by outcome) from the counters.
    pub fn publish_progress(&self) {
        for (phase, counter) in [
            ("listed", &self.bytes_listed),
            ("scanned", &self.bytes_scanned),
        ] {
            metrics::gauge!(JOB_BYTES_METRIC, "phase" => phase).set(Self::get(counter) as f64);
        }
        for (outcome, counter) in [
            ("read", &self.read),
            ("unique", &self.unique),
            ("duplicate", &self.duplicates),
            ("rejected", &self.rejected),
            ("merged", &self.merged),
            ("received", &self.received),
        ] {
            metrics::gauge!(JOB_RECORDS_METRIC, "outcome" => outcome)
                .set(Self::get(counter) as f64);
        }
        metrics::gauge!(JOB_FILES_METRIC).set(Self::get(&self.files_listed) as f64);
    }

    /// Every counter (a destructuring, so a new field is not missed).
    fn fields(&self) -> [&AtomicU64; 13] {
        let Self {
            files_listed,
            links_skipped,
            bytes_listed,
            bytes_scanned,
            problem_files,
            read,
            unique,
            duplicates,
            rejected,
            merged,
            received,
            runs_spilled,
            merge_passes,
        } = self;
        [
            files_listed,
            links_skipped,
            bytes_listed,
            bytes_scanned,
            problem_files,
            read,
            unique,
            duplicates,
            rejected,
            merged,
            received,
            runs_spilled,
            merge_passes,
        ]
    }

    /// Sets every counter to the sum of `parts`' (several nodes' jobs
    /// shown as one).
    pub fn set_to_sum(&self, parts: &[Arc<JobCounters>]) {
        for (i, field) in self.fields().into_iter().enumerate() {
            let sum = parts.iter().map(|p| Self::get(p.fields()[i])).sum();
            field.store(sum, Ordering::Relaxed);
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Per-file tallies have at most this many files before they are written
/// out.
const TALLY_FLUSH_FILES: usize = 4096;

/// One stage's per-file counts, not yet spilled.
pub struct FileTally {
    runs: Arc<TallyRuns>,
    counters: Arc<JobCounters>,
    /// Looked up for every record by dedup and sort: a fast hasher for
    /// small integer keys (SipHash was 1.5% of an ingest's CPU).
    files: FxHashMap<u32, FileCounts>,
    /// Sum of the counts not yet added to the job counters.
    unpublished: FileCounts,
}

impl FileTally {
    pub fn new(runs: Arc<TallyRuns>, counters: Arc<JobCounters>) -> Self {
        Self {
            runs,
            counters,
            files: FxHashMap::default(),
            unpublished: FileCounts::default(),
        }
    }

    /// Adds `delta` to `file`'s counts.
    pub fn add(&mut self, file: u32, delta: FileCounts) {
        self.files.entry(file).or_default().add(delta);
        self.unpublished.add(delta);
    }

    pub fn read(&mut self, file: u32, n: u64) {
        self.add(
            file,
            FileCounts {
                read: n,
                ..FileCounts::default()
            },
        );
    }

    pub fn unique(&mut self, file: u32) {
        self.add(
            file,
            FileCounts {
                unique: 1,
                ..FileCounts::default()
            },
        );
    }

    pub fn duplicate(&mut self, file: u32) {
        self.duplicates(file, 1);
    }

    pub fn duplicates(&mut self, file: u32, n: u64) {
        self.add(
            file,
            FileCounts {
                duplicates: n,
                ..FileCounts::default()
            },
        );
    }

    pub fn rejected(&mut self, file: u32) {
        self.add(
            file,
            FileCounts {
                rejected: 1,
                ..FileCounts::default()
            },
        );
    }

    /// Adds the pending totals to the job counters, and spills the per-file
    /// counts if they have grown past their bound.
    pub fn publish(&mut self) -> Result<(), TallyError> {
        self.publish_totals();
        if self.files.len() >= TALLY_FLUSH_FILES {
            self.flush()?;
        }
        Ok(())
    }

    /// Publishes everything: job counters, and every per-file count
    /// spilled.
    pub fn flush(&mut self) -> Result<(), TallyError> {
        self.publish_totals();
        let mut files: Vec<_> = self.files.drain().collect();
        files.sort_unstable_by_key(|(file, _)| *file);
        self.runs.add(&files)
    }

    fn publish_totals(&mut self) {
        let delta = std::mem::take(&mut self.unpublished);
        JobCounters::add(&self.counters.read, delta.read);
        JobCounters::add(&self.counters.unique, delta.unique);
        JobCounters::add(&self.counters.duplicates, delta.duplicates);
        JobCounters::add(&self.counters.rejected, delta.rejected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Access, Store};
    use proto_schema::DatasetId;

    #[test]
    fn tallies_reach_the_ledger_and_the_job_counters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let runs = Arc::new(TallyRuns::new(dir.path().join("counts")));
        let counters = Arc::new(JobCounters::default());
        let mut scan = FileTally::new(runs.clone(), counters.clone());
        let mut dedup = FileTally::new(runs.clone(), counters.clone());
        for file in 0..(TALLY_FLUSH_FILES as u32 + 10) {
            scan.read(file, 3);
            scan.rejected(file);
            dedup.unique(file);
            dedup.duplicate(file);
        }
        scan.publish().unwrap();
        // Past the bound: written out already, memory released.
        assert!(scan.files.is_empty());
        assert_eq!(
            JobCounters::get(&counters.read),
            3 * (TALLY_FLUSH_FILES as u64 + 10)
        );
        scan.flush().unwrap();
        dedup.flush().unwrap();
        runs.write_to(&store, DatasetId(1), 1).unwrap();
        let counts = store.file_counts(DatasetId(1), 1, 7).unwrap();
        assert_eq!(
            counts,
            FileCounts {
                read: 3,
                unique: 1,
                duplicates: 1,
                rejected: 1
            }
        );
        assert!(counts.reconciles());
        assert_eq!(
            JobCounters::get(&counters.duplicates),
            TALLY_FLUSH_FILES as u64 + 10
        );
    }
}
