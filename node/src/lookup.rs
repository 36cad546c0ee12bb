//! Looking up one key: its record and where it was first seen.

use std::path::PathBuf;

use proto_schema::partition_of;

use crate::config::Format;
use crate::store::catalog::DatasetInfo;
use crate::store::keys::{self, FirstSeen};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The record as first seen (for `lines`, the key itself).
    pub record: Vec<u8>,
    pub first_seen: FirstSeen,
    /// The file it was first seen in, if the job's ledger still has it.
    pub path: Option<PathBuf>,
}

pub fn get(store: &Store, dataset: &DatasetInfo, key: &[u8]) -> Result<Option<Found>, StoreError> {
    let mut store_key = Vec::new();
    keys::data_key(
        dataset.id,
        partition_of(key, dataset.partitions),
        key,
        &mut store_key,
    );
    let Some(value) = store
        .db()
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
    Ok(Some(Found {
        record,
        first_seen,
        path,
    }))
}
