//! Looking up one key: its record and where it was first seen.

use std::path::PathBuf;

use proto_schema::ids::JobId;
use proto_schema::partition_of;
use rocksdb::Snapshot;

use crate::config::Format;
use crate::store::catalog::{DatasetInfo, JobState};
use crate::store::keys::{self, FirstSeen};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The record as first seen (for `lines`, the key itself).
    pub record: Vec<u8>,
    pub first_seen: FirstSeen,
    /// The file it was first seen in, if the job's ledger still has it.
    pub path: Option<PathBuf>,
    /// The coordinators' job it was first seen in, if a cluster job.
    pub cluster_job: Option<JobId>,
}

pub fn get(store: &Store, dataset: &DatasetInfo, key: &[u8]) -> Result<Option<Found>, StoreError> {
    get_at(store, dataset, key, &store.db().snapshot())
}

/// [`get`] as of `snapshot` (a node's answer to a cluster `get` states
/// which jobs its snapshot holds).
pub fn get_at(
    store: &Store,
    dataset: &DatasetInfo,
    key: &[u8],
    snapshot: &Snapshot<'_>,
) -> Result<Option<Found>, StoreError> {
    let mut store_key = Vec::new();
    keys::data_key(
        dataset.id,
        partition_of(key, dataset.partitions),
        key,
        &mut store_key,
    );
    let Some(value) = snapshot
        .get_cf(store.data_cf(), &store_key)
        .map_err(|e| store.rocks_error(e))?
    else {
        return Ok(None);
    };
    let (first_seen, value) = keys::parse_data_value(&value).ok_or_else(|| {
        StoreError::Catalog(format!(
            "stored value for key {} is corrupt",
            key.escape_ascii()
        ))
    })?;
    let record = match dataset.format {
        Format::Lines => key.to_vec(),
        Format::Tsv { .. } => value.to_vec(),
    };
    let path = store.file_path(dataset.id, first_seen.job, first_seen.position.file)?;
    let cluster_job = store
        .job(dataset.id, first_seen.job)?
        .and_then(|job| job.cluster)
        .map(|part| part.job);
    Ok(Some(Found {
        record,
        first_seen,
        path,
        cluster_job,
    }))
}

/// `key` in a dataset whose parts are in several stores (the nodes of
/// one machine's `quern dev --nodes N`, or a directory of nodes' stores):
/// the first store holding it is its owner. A file read for a cluster job
/// is in the ledger of the node that scanned it, which need not be the
/// owner: its path is looked up in every store's part of the same job.
pub fn get_in(parts: &[(&Store, DatasetInfo)], key: &[u8]) -> Result<Option<Found>, StoreError> {
    for (store, dataset) in parts {
        let Some(mut found) = get(store, dataset, key)? else {
            continue;
        };
        if let (None, Some(job)) = (&found.path, found.cluster_job) {
            found.path = scanned_path(parts, job, found.first_seen.position.file)?;
        }
        return Ok(Some(found));
    }
    Ok(None)
}

/// File `file` of the coordinators' job `job`, from the ledger of any
/// store's committed part of it.
fn scanned_path(
    parts: &[(&Store, DatasetInfo)],
    job: JobId,
    file: u32,
) -> Result<Option<PathBuf>, StoreError> {
    for (store, dataset) in parts {
        for local in store.jobs(dataset.id)? {
            let part_of_job = local.cluster.is_some_and(|part| part.job == job);
            if part_of_job
                && local.state == JobState::Committed
                && let Some(path) = store.file_path(dataset.id, local.id, file)?
            {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}
