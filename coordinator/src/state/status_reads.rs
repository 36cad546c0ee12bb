//! Reads for `quern status`: every dataset, the most recent jobs, and how
//! many of each job's shards are leased right now. Datasets are few, jobs
//! are read newest first up to a limit, and leased shards come from the
//! lease index, so no read here walks the catalogue or all shards.

use std::collections::BTreeMap;

use proto_schema::ids::{JobId, ShardId};
use rocksdb::IteratorMode;

use super::keys::{self, CF_DATASETS, CF_JOBS, CF_LEASED};
use super::records::{Dataset, Job, Stored};
use super::{StateError, StateMachineStore, cf};

impl StateMachineStore {
    /// Every dataset, in name order.
    pub fn datasets(&self) -> Result<Vec<Dataset>, StateError> {
        let db = self.db();
        db.iterator_cf(cf(db, CF_DATASETS), IteratorMode::Start)
            .map(|item| Ok(Dataset::decode(&item?.1)?))
            .collect()
    }

    /// The `limit` most recent jobs of all datasets, newest first.
    pub fn recent_jobs(&self, limit: usize) -> Result<Vec<Job>, StateError> {
        let db = self.db();
        db.iterator_cf(cf(db, CF_JOBS), IteratorMode::End)
            .take(limit)
            .map(|item| Ok(Job::decode(&item?.1)?))
            .collect()
    }

    /// Leased shards per job id.
    pub fn leased_per_job(&self) -> Result<BTreeMap<JobId, u64>, StateError> {
        let db = self.db();
        let mut counts = BTreeMap::new();
        for item in db.iterator_cf(cf(db, CF_LEASED), IteratorMode::Start) {
            let (key, _) = item?;
            let shard = keys::decode_u64(&key)
                .map(|id| self.shard(ShardId(id)))
                .transpose()?
                .flatten()
                .ok_or_else(|| StateError::Inconsistent(format!("lease index key {key:02x?}")))?;
            *counts.entry(shard.job).or_insert(0) += 1;
        }
        Ok(counts)
    }
}
