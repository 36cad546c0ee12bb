//! Staged parts of the coordinators' jobs: an owner's SST files, kept
//! durably from the moment it reports its counts until the coordinators
//! decide. The coordinators may commit the job while the owner is down
//! (every owner staged, counts reconciled); the owner must then publish
//! exactly what it staged when it comes back, or the committed job would
//! lack its partitions. So staging moves the files out of the job's
//! scratch (emptied at every open) into `staged/` under the store's root,
//! syncs them, and records the job as [`JobState::Staged`] with its
//! totals (its [`ClusterPart`] is in the job since it began). Whoever resumes the node
//! asks the coordinators and then publishes ([`Store::publish_staged`]) or
//! discards ([`Store::discard_staged`]) it.

use std::fs::File;
use std::path::{Path, PathBuf};

use proto_schema::ids::{Epoch, JobId};
use serde::{Deserialize, Serialize};

use super::catalog::{JobInfo, JobState, JobTotals};
use super::keys::meta;
use super::{Store, StoreError};

/// Which part of which of the coordinators' jobs a staged job is: what a
/// resumed node asks about, and what must still match for it to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPart {
    pub job: JobId,
    /// When the job's submission began (the submitter's clock): tells the
    /// job apart from another with the same id in a cluster made afresh.
    pub began_ms: u64,
    /// The job's attempt the part ran in; a restarted job's parts of an
    /// earlier attempt never publish.
    pub attempt: u32,
    /// The partition map the part was staged under.
    pub map_epoch: Epoch,
}

impl Store {
    /// Where a staged job's files wait.
    fn staged_dir(&self, job: &JobInfo) -> PathBuf {
        self.root()
            .join("staged")
            .join(format!("job-{}-{}", job.dataset, job.id))
    }

    /// Moves `files` (in the job's scratch, on the store's file system)
    /// into the job's staged directory, syncs them, and records the job
    /// (a part of the coordinators' job) as staged with `totals`. Returns
    /// the job as recorded.
    pub fn stage_job(
        &self,
        job: &JobInfo,
        files: Vec<PathBuf>,
        totals: &JobTotals,
    ) -> Result<JobInfo, StoreError> {
        if job.cluster.is_none() {
            return Err(StoreError::Catalog(format!(
                "job {} of dataset {} is no part of the coordinators' job: nothing to stage it for",
                job.id, job.dataset
            )));
        }
        let dir = self.staged_dir(job);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        for (n, file) in files.iter().enumerate() {
            // Numbered: lanes may name their files alike.
            let name = file.file_name().map_or_else(String::new, |name| {
                format!("{n:05}-{}", name.to_string_lossy())
            });
            let staged = dir.join(name);
            std::fs::rename(file, &staged).map_err(io_error(file))?;
            File::open(&staged)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&staged))?;
        }
        sync_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let staged = JobInfo {
            state: JobState::Staged,
            totals: Some(*totals),
            ..job.clone()
        };
        self.put_meta(&meta::job(job.dataset, job.id), &staged)?;
        self.db().flush_wal(true).map_err(|e| self.rocks_error(e))?;
        Ok(staged)
    }

    /// Jobs staged and waiting for the coordinators' decision.
    pub fn staged_jobs(&self) -> Result<Vec<JobInfo>, StoreError> {
        self.jobs_where(|job| job.state == JobState::Staged)
    }

    /// Publishes a staged job (the coordinators committed it): its files
    /// and its job record in one atomic ingest. Returns the job, committed.
    pub fn publish_staged(&self, job: &JobInfo) -> Result<JobInfo, StoreError> {
        let totals = self.staged_totals(job)?;
        let dir = self.staged_dir(job);
        // Published already if its job record is in (the process died
        // between the ingest and the catalogue's entry).
        if self.committed_totals(job.dataset, job.id)?.is_none() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(io_error(&dir))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io_error(&dir))?;
            files.retain(|f| f.extension().is_some_and(|e| e == "sst"));
            files.sort();
            self.publish_job(job, files, &totals, &dir)?;
        }
        let committed = self.end_job(job, JobState::Committed, Some(totals))?;
        remove_dir(&dir)?;
        Ok(committed)
    }

    /// Drops a staged job's files; the job fails with `reason`.
    pub fn discard_staged(&self, job: &JobInfo, reason: String) -> Result<JobInfo, StoreError> {
        let failed = self.end_job(job, JobState::Failed { reason }, None)?;
        remove_dir(&self.staged_dir(job))?;
        Ok(failed)
    }

    /// Removes the staged files of a job that ended otherwise (it failed
    /// while waiting); nothing if it never staged.
    pub fn remove_staged_files(&self, job: &JobInfo) -> Result<(), StoreError> {
        remove_dir(&self.staged_dir(job))
    }

    fn staged_totals(&self, job: &JobInfo) -> Result<JobTotals, StoreError> {
        job.totals.ok_or_else(|| {
            StoreError::Catalog(format!(
                "staged job {} of dataset {} in {} has no totals",
                job.id,
                job.dataset,
                self.root().display()
            ))
        })
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a directory's entries (files renamed into it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::store::Access;
    use crate::store::publish::SstSink;
    use proto_schema::{Position, Record};

    fn part(attempt: u32) -> ClusterPart {
        ClusterPart {
            job: JobId(7),
            began_ms: 1_700_000_000_000,
            attempt,
            map_epoch: Epoch(3),
        }
    }

    /// A store with a running job whose lane wrote `keys` (partition 0)
    /// into SST files in the job's scratch.
    fn job_with_files(root: &Path, keys: &[&[u8]]) -> (Store, JobInfo, Vec<PathBuf>, JobTotals) {
        let store = Store::open(root, 8 << 20, Access::ReadWrite).unwrap();
        let dataset = store.open_dataset("d", Format::Lines, Some(1)).unwrap();
        let job = store
            .begin_part(&dataset, vec!["x".into()], Some(part(2)))
            .unwrap();
        let scratch = store.tmp_dir().join("job");
        std::fs::create_dir_all(&scratch).unwrap();
        let mut sink = SstSink::new(scratch, 0, &job, 1 << 20, u64::MAX);
        for (offset, key) in (0..).zip(keys) {
            sink.write(&Record {
                partition: 0,
                key,
                value: b"",
                position: Position { file: 0, offset },
            })
            .unwrap();
        }
        let (files, written) = sink.finish().unwrap();
        let totals = JobTotals {
            files: 1,
            read: written,
            unique: written,
            ..JobTotals::default()
        };
        (store, job, files, totals)
    }

    /// Which of `keys` the store holds, visible to readers.
    fn visible(store: &Store, keys: &[&[u8]]) -> usize {
        let dataset = store.existing_dataset("d").unwrap();
        keys.iter()
            .filter(|key| {
                let mut k = Vec::new();
                super::super::keys::data_key(dataset.id, 0, key, &mut k);
                store.db().get_cf(store.data_cf(), k).unwrap().is_some()
            })
            .count()
    }

    #[test]
    fn a_staged_job_survives_a_restart_and_publishes_what_it_staged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, job, files, totals) = job_with_files(dir.path(), &[b"a", b"b", b"c"]);
        store.stage_job(&job, files, &totals).unwrap();
        drop(store);

        // Reopening (as after a crash) empties the scratch and settles
        // running jobs, but leaves a staged one to the coordinators.
        let store = Store::open(dir.path(), 8 << 20, Access::ReadWrite).unwrap();
        let staged = store.staged_jobs().unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].state, JobState::Staged);
        assert_eq!(staged[0].cluster, Some(part(2)));
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(
            visible(&store, &keys),
            0,
            "nothing visible before the commit"
        );

        let committed = store.publish_staged(&staged[0]).unwrap();
        assert_eq!(committed.state, JobState::Committed);
        assert_eq!(committed.totals, Some(totals));
        assert_eq!(visible(&store, &keys), 3);
        assert!(store.staged_jobs().unwrap().is_empty());
        assert!(!store.staged_dir(&job).exists());
        // Publishing again (a second decision) changes nothing.
        store.publish_staged(&staged[0]).unwrap();
        assert_eq!(visible(&store, &keys), 3);
    }

    #[test]
    fn a_discarded_staged_job_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, job, files, totals) = job_with_files(dir.path(), &[b"a"]);
        let staged = store.stage_job(&job, files, &totals).unwrap();
        let failed = store
            .discard_staged(&staged, "job 7 was restarted".into())
            .unwrap();
        assert!(
            matches!(failed.state, JobState::Failed { ref reason } if reason.contains("restarted"))
        );
        assert!(store.staged_jobs().unwrap().is_empty());
        assert!(!store.staged_dir(&job).exists());
        assert_eq!(visible(&store, &[b"a"]), 0);
    }
}
