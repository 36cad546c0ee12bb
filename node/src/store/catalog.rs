//! Datasets and jobs: what exists, with which format, and how each job
//! ended. A job is committed exactly when its job record is in the data
//! column family, because that record is ingested in the same atomic step
//! as the job's data; the meta entry follows it.

use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeSet;

use proto_schema::{DatasetId, JobId};
use rocksdb::{ReadOptions, Snapshot, WriteBatch};
use serde::{Deserialize, Serialize};

use super::keys::{self, meta};
use super::staged::ClusterPart;
use super::{Store, StoreError};
use crate::config::Format;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub id: DatasetId,
    pub name: String,
    pub format: Format,
    pub partitions: u16,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// A part of the coordinators' job (`JobInfo::cluster`), its files
    /// kept until they decide (`store::staged`).
    Staged,
    Committed,
    /// The process died before the job committed; nothing of it is in the
    /// store.
    Interrupted,
    Failed {
        reason: String,
    },
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::Staged => f.write_str("staged, awaiting the coordinators' commit"),
            Self::Committed => f.write_str("committed"),
            Self::Interrupted => f.write_str("interrupted"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// How a job writes records: a job that is alone in its dataset may `Put`;
/// otherwise each record is a merge operand, resolved by keep-first-seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    Put,
    Merge,
}

/// A job's counters. `read = unique + duplicates + rejected` always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTotals {
    pub files: u64,
    /// Files with a problem: unreadable, corrupt, changed while read.
    pub problem_files: u64,
    pub bytes: u64,
    pub read: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl JobTotals {
    pub fn reconciles(&self) -> bool {
        self.read == self.unique + self.duplicates + self.rejected
    }

    /// A cluster job's counts from its committed parts, over every node:
    /// their sum; but where parts of two attempts committed, the later is
    /// a recovery part (it read every record again for a lost owner's
    /// partitions), and its reads, rejections and files are the job's.
    pub fn of_cluster_job<'a>(parts: impl IntoIterator<Item = &'a JobInfo>) -> Self {
        let parts: Vec<(u32, JobTotals)> = parts
            .into_iter()
            .filter(|part| part.state == JobState::Committed)
            .filter_map(|part| Some((part.cluster?.attempt, part.totals.unwrap_or_default())))
            .collect();
        let last = parts.iter().map(|&(attempt, _)| attempt).max();
        let recovered = parts.iter().any(|&(attempt, _)| Some(attempt) != last);
        let mut job = JobTotals::default();
        for (attempt, part) in parts {
            job.unique += part.unique;
            job.duplicates += part.duplicates;
            if !recovered || Some(attempt) == last {
                job.files += part.files;
                job.problem_files += part.problem_files;
                job.bytes += part.bytes;
                job.read += part.read;
                job.rejected += part.rejected;
            }
        }
        job
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub dataset: DatasetId,
    pub id: u32,
    #[serde(flatten)]
    pub state: JobState,
    pub inputs: Vec<String>,
    pub write_mode: WriteMode,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub totals: Option<JobTotals>,
    /// The part of the coordinators' job this job ran, if it ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterPart>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalogue records always serialize")
}

impl Store {
    fn parse_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Catalog(format!(
                "catalogue entry {} in {} is unreadable: {e}",
                key.escape_ascii(),
                self.root().display()
            ))
        })
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self
            .db()
            .get_cf(self.meta_cf(), key)
            .map_err(|e| self.rocks_error(e))?
        {
            Some(bytes) => self.parse_json(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub(super) fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.db()
            .put_cf(self.meta_cf(), key, to_json(value))
            .map_err(|e| self.rocks_error(e))
    }

    pub fn dataset(&self, name: &str) -> Result<Option<DatasetInfo>, StoreError> {
        self.get_meta(&meta::dataset(name))
    }

    /// The dataset called `name`, or an error listing the ones that exist.
    pub fn existing_dataset(&self, name: &str) -> Result<DatasetInfo, StoreError> {
        if let Some(dataset) = self.dataset(name)? {
            return Ok(dataset);
        }
        let known = self.datasets()?;
        let names: Vec<&str> = known.iter().map(|d| d.name.as_str()).collect();
        Err(StoreError::Catalog(if names.is_empty() {
            format!(
                "no dataset {name:?}: the store at {} is empty",
                self.root().display()
            )
        } else {
            format!("no dataset {name:?}; the store has: {}", names.join(", "))
        }))
    }

    pub fn datasets(&self) -> Result<Vec<DatasetInfo>, StoreError> {
        self.meta_range(&[meta::DATASET], vec![meta::DATASET + 1])
            .map(|item| item.and_then(|(key, value)| self.parse_json(&key, &value)))
            .collect()
    }

    /// The dataset `name`, created with `format` if it does not exist. An
    /// existing dataset must have the same format, and the same partition
    /// count if one is asked for.
    pub fn open_dataset(
        &self,
        name: &str,
        format: Format,
        partitions: Option<u16>,
    ) -> Result<DatasetInfo, StoreError> {
        let _lock = self.catalog_lock.lock().expect("catalogue lock poisoned");
        if let Some(existing) = self.dataset(name)? {
            if existing.format != format {
                return Err(StoreError::Catalog(format!(
                    "dataset {name:?} holds {} records; this ingest reads {format}. \
                     Use the same format, or another --dataset",
                    existing.format
                )));
            }
            if let Some(p) = partitions.filter(|&p| p != existing.partitions) {
                return Err(StoreError::Catalog(format!(
                    "dataset {name:?} has {} partitions, fixed when it was created; got --partitions {p}",
                    existing.partitions
                )));
            }
            return Ok(existing);
        }
        let id = DatasetId(
            match self
                .db()
                .get_cf(self.meta_cf(), meta::NEXT_DATASET)
                .map_err(|e| self.rocks_error(e))?
            {
                Some(bytes) => u32::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                    StoreError::Catalog("catalogue's next dataset id is unreadable".into())
                })?),
                None => 1,
            },
        );
        let dataset = DatasetInfo {
            id,
            name: name.to_string(),
            format,
            partitions: partitions.unwrap_or(crate::config::DEFAULT_PARTITIONS),
            created_unix: unix_now(),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta_cf(),
            meta::NEXT_DATASET,
            id.next().get().to_be_bytes(),
        );
        batch.put_cf(self.meta_cf(), meta::dataset(name), to_json(&dataset));
        self.write_batch(batch)?;
        Ok(dataset)
    }

    /// All jobs of a dataset, oldest first.
    pub fn jobs(&self, dataset: DatasetId) -> Result<Vec<JobInfo>, StoreError> {
        let (start, end) = meta::jobs_of(dataset);
        self.meta_range(&start, end)
            .map(|item| item.and_then(|(key, value)| self.parse_json(&key, &value)))
            .collect()
    }

    /// One job of a dataset, as last recorded.
    pub fn job(&self, dataset: DatasetId, id: u32) -> Result<Option<JobInfo>, StoreError> {
        self.get_meta(&meta::job(dataset, id))
    }

    /// Registers a new running job.
    pub fn begin_job(
        &self,
        dataset: &DatasetInfo,
        inputs: Vec<String>,
    ) -> Result<JobInfo, StoreError> {
        self.begin_part(dataset, inputs, None)
    }

    /// Registers a new running job, which runs `cluster`, a part of the
    /// coordinators' job, if given.
    pub fn begin_part(
        &self,
        dataset: &DatasetInfo,
        inputs: Vec<String>,
        cluster: Option<ClusterPart>,
    ) -> Result<JobInfo, StoreError> {
        let _lock = self.catalog_lock.lock().expect("catalogue lock poisoned");
        let jobs = self.jobs(dataset.id)?;
        let id = jobs.last().map_or(1, |j| j.id + 1);
        // Put is only safe when no other job's records can be in (or enter)
        // the dataset: every earlier job must have ended without data.
        let alone = jobs
            .iter()
            .all(|j| matches!(j.state, JobState::Interrupted | JobState::Failed { .. }));
        let job = JobInfo {
            dataset: dataset.id,
            id,
            state: JobState::Running,
            inputs,
            write_mode: if alone {
                WriteMode::Put
            } else {
                WriteMode::Merge
            },
            started_unix: unix_now(),
            finished_unix: None,
            totals: None,
            cluster,
        };
        self.put_meta(&meta::job(dataset.id, id), &job)?;
        Ok(job)
    }

    /// Records how a job ended. A failed job's ledger is removed: none of
    /// its records are in the store.
    pub fn end_job(
        &self,
        job: &JobInfo,
        state: JobState,
        totals: Option<JobTotals>,
    ) -> Result<JobInfo, StoreError> {
        if state != JobState::Committed {
            self.delete_ledger(job.dataset, job.id)?;
        }
        let ended = JobInfo {
            state,
            totals,
            finished_unix: Some(unix_now()),
            ..job.clone()
        };
        self.put_meta(&meta::job(job.dataset, job.id), &ended)?;
        Ok(ended)
    }

    /// The totals in a job's commit record, if the job committed.
    pub(crate) fn committed_totals(
        &self,
        dataset: DatasetId,
        job: u32,
    ) -> Result<Option<JobTotals>, StoreError> {
        let key = keys::job_record_key(dataset, job);
        match self
            .db()
            .get_cf(self.data_cf(), &key)
            .map_err(|e| self.rocks_error(e))?
        {
            Some(bytes) => self.parse_json(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The coordinators' jobs whose parts are committed in `snapshot`
    /// (their job records are in it; a part's record is ingested with its
    /// data, so the snapshot holds exactly these jobs' records).
    pub fn published_cluster_jobs(
        &self,
        dataset: DatasetId,
        snapshot: &Snapshot<'_>,
    ) -> Result<BTreeSet<JobId>, StoreError> {
        let prefix = keys::partition_prefix(dataset, keys::JOB_RECORD_PARTITION);
        let mut opts = ReadOptions::default();
        opts.set_snapshot(snapshot);
        opts.set_iterate_lower_bound(keys::job_record_key(dataset, 0));
        let mut local = BTreeSet::new();
        let mut records = self.db().raw_iterator_cf_opt(self.data_cf(), opts);
        records.seek_to_first();
        while let Some(key) = records.key() {
            let Some(id) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let id: [u8; 4] = id.try_into().map_err(|_| {
                StoreError::Catalog(format!(
                    "{}: a job record key of {} bytes, not {}",
                    self.root().display(),
                    key.len(),
                    prefix.len() + 4
                ))
            })?;
            local.insert(u32::from_be_bytes(id));
            records.next();
        }
        records.status().map_err(|e| self.rocks_error(e))?;
        // Which job a part belongs to is set when it begins, long before
        // any snapshot can hold its record.
        Ok(self
            .jobs(dataset)?
            .iter()
            .filter(|job| local.contains(&job.id))
            .filter_map(|job| job.cluster.map(|part| part.job))
            .collect())
    }

    /// The jobs of every dataset that `keep` accepts, read one record at a
    /// time: only those kept are held, not every job the store ever ran.
    pub(super) fn jobs_where(
        &self,
        keep: impl Fn(&JobInfo) -> bool,
    ) -> Result<Vec<JobInfo>, StoreError> {
        let mut kept = Vec::new();
        for item in self.meta_range(&[meta::JOB], vec![meta::JOB + 1]) {
            let (key, value) = item?;
            let job: JobInfo = self.parse_json(&key, &value)?;
            if keep(&job) {
                kept.push(job);
            }
        }
        Ok(kept)
    }

    /// Settles jobs left running by a process that died: committed if their
    /// job record made it into the store, interrupted otherwise. A staged
    /// job stays staged (the coordinators decide it) unless it was
    /// published already.
    pub(super) fn recover_jobs(&self) -> Result<(), StoreError> {
        let unsettled = |job: &JobInfo| matches!(job.state, JobState::Running | JobState::Staged);
        for job in self.jobs_where(unsettled)? {
            let staged = match job.state {
                JobState::Running => false,
                JobState::Staged => true,
                _ => continue,
            };
            match self.committed_totals(job.dataset, job.id)? {
                Some(_) if staged => {
                    self.publish_staged(&job)?;
                }
                Some(totals) => {
                    self.end_job(&job, JobState::Committed, Some(totals))?;
                }
                None if staged => {}
                None => {
                    tracing::warn!(
                        dataset = job.dataset.get(),
                        job = job.id,
                        "job was interrupted before it committed; none of its records are in the store"
                    );
                    self.end_job(&job, JobState::Interrupted, None)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;
    use proto_schema::ids::{Epoch, JobId};

    /// A recovered job's reads are its recovery part's; its unique and
    /// duplicate records every part's; parts not committed count nothing.
    #[test]
    fn a_cluster_job_counts_its_recovery_parts_reads_once() {
        let part = |attempt, state, read, unique, duplicates| JobInfo {
            dataset: DatasetId(1),
            id: 1,
            state,
            inputs: Vec::new(),
            write_mode: WriteMode::Merge,
            started_unix: 0,
            finished_unix: None,
            totals: Some(JobTotals {
                files: 3,
                read,
                unique,
                duplicates,
                ..JobTotals::default()
            }),
            cluster: Some(crate::store::staged::ClusterPart {
                job: JobId(4),
                began_ms: 1,
                attempt,
                map_epoch: Epoch(1),
            }),
        };
        let failed = JobState::Failed { reason: "x".into() };
        let whole = [
            part(0, JobState::Committed, 6, 3, 1),
            part(0, JobState::Committed, 4, 2, 4),
            part(0, failed.clone(), 9, 9, 9),
        ];
        let counted = JobTotals::of_cluster_job(&whole);
        assert_eq!(
            (
                counted.files,
                counted.read,
                counted.unique,
                counted.duplicates
            ),
            (6, 10, 5, 5)
        );
        let recovered = [
            part(0, JobState::Committed, 6, 3, 1),
            part(1, JobState::Committed, 10, 2, 1),
            part(1, failed, 9, 9, 9),
        ];
        let counted = JobTotals::of_cluster_job(&recovered);
        assert_eq!(
            (
                counted.files,
                counted.read,
                counted.unique,
                counted.duplicates
            ),
            (3, 10, 5, 2)
        );
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        (dir, store)
    }

    #[test]
    fn datasets_keep_their_format_and_partitions() {
        let (_dir, store) = store();
        let logs = store.open_dataset("logs", Format::Lines, None).unwrap();
        assert_eq!((logs.id, logs.partitions), (DatasetId(1), 64));
        let users = store
            .open_dataset("users", Format::Tsv { key_field: 2 }, Some(8))
            .unwrap();
        assert_eq!((users.id, users.partitions), (DatasetId(2), 8));
        assert_eq!(
            store.open_dataset("logs", Format::Lines, Some(64)).unwrap(),
            logs
        );

        let err = store
            .open_dataset("logs", Format::Tsv { key_field: 1 }, None)
            .unwrap_err();
        assert!(err.to_string().contains("holds lines records"), "{err}");
        let err = store
            .open_dataset("users", Format::Tsv { key_field: 2 }, Some(16))
            .unwrap_err();
        assert!(err.to_string().contains("has 8 partitions"), "{err}");
        let err = store.existing_dataset("nope").unwrap_err();
        assert!(
            err.to_string().contains("the store has: logs, users"),
            "{err}"
        );
    }

    #[test]
    fn only_a_lone_job_may_put() {
        let (_dir, store) = store();
        let ds = store.open_dataset("d", Format::Lines, None).unwrap();
        let first = store.begin_job(&ds, vec![]).unwrap();
        assert_eq!((first.id, first.write_mode), (1, WriteMode::Put));
        store
            .end_job(&first, JobState::Failed { reason: "x".into() }, None)
            .unwrap();
        let second = store.begin_job(&ds, vec![]).unwrap();
        assert_eq!((second.id, second.write_mode), (2, WriteMode::Put));
        store
            .end_job(&second, JobState::Committed, Some(JobTotals::default()))
            .unwrap();
        let third = store.begin_job(&ds, vec![]).unwrap();
        assert_eq!((third.id, third.write_mode), (3, WriteMode::Merge));
    }

    #[test]
    fn running_jobs_are_settled_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
            let ds = store.open_dataset("d", Format::Lines, None).unwrap();
            let committed = store.begin_job(&ds, vec![]).unwrap();
            let totals = JobTotals {
                read: 3,
                unique: 2,
                duplicates: 1,
                ..JobTotals::default()
            };
            // As if the process died right after the atomic ingest.
            store
                .db()
                .put_cf(
                    store.data_cf(),
                    keys::job_record_key(ds.id, committed.id),
                    to_json(&totals),
                )
                .unwrap();
            store.begin_job(&ds, vec![]).unwrap();
        }
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let jobs = store.jobs(DatasetId(1)).unwrap();
        assert_eq!(jobs[0].state, JobState::Committed);
        assert_eq!(jobs[0].totals.unwrap().read, 3);
        assert_eq!(jobs[1].state, JobState::Interrupted);
    }
}
