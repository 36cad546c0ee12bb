//! Column families of the state DB and the layout of their keys.
//!
//! Integers are big-endian so key order is numeric order; catalogue keys
//! start with the dataset id, so one dataset's files are one key range.

use proto_schema::ids::{DatasetId, JobId};

/// Raft's bookkeeping: last applied log id, membership, current snapshot.
/// Not part of a snapshot's data (the snapshot's meta carries it).
pub const CF_RAFT: &str = "raft";
pub const CF_COUNTERS: &str = "counters";
pub const CF_NODES: &str = "nodes";
pub const CF_DATASETS: &str = "datasets";
pub const CF_JOBS: &str = "jobs";
pub const CF_FILES: &str = "files";
pub const CF_SHARDS: &str = "shards";
pub const CF_PARTITIONS: &str = "partitions";
/// Index of the shards currently leased (shard id -> empty), so a new
/// leader loads its lease table without scanning every shard.
pub const CF_LEASED: &str = "leased";
/// What each submission listed, a record per chunk or range (see
/// `listed`).
pub const CF_LISTED: &str = "listed";
/// The paths of those records, written once. A column family apart from
/// the records: each of the two is written in path order, so each
/// flushes files that do not overlap and move down the levels unmerged.
pub const CF_LISTED_PATHS: &str = "listed_paths";

/// The replicated state, in the order snapshots write it. A snapshot record
/// names its column family by index into this list.
pub const STATE_CFS: [&str; 10] = [
    CF_COUNTERS,
    CF_NODES,
    CF_DATASETS,
    CF_JOBS,
    CF_FILES,
    CF_SHARDS,
    CF_PARTITIONS,
    CF_LEASED,
    CF_LISTED,
    CF_LISTED_PATHS,
];

pub const LAST_APPLIED: &[u8] = b"last_applied";
pub const MEMBERSHIP: &[u8] = b"membership";
pub const SNAPSHOT_META: &[u8] = b"snapshot_meta";
pub const SNAPSHOT_SEQ: &[u8] = b"snapshot_seq";
/// Present while a snapshot is being installed: state is then partial.
pub const INSTALLING: &[u8] = b"installing";
/// The layout the state is kept in (see `StateMachineStore::open`).
pub const LAYOUT: &[u8] = b"layout";

pub const NEXT_DATASET: &[u8] = b"next_dataset";
pub const NEXT_SUBMISSION: &[u8] = b"next_submission";
pub const NEXT_SHARD: &[u8] = b"next_shard";

/// An id's key (shards, jobs, nodes) or a counter's value.
pub fn id(id: impl Into<u64>) -> [u8; 8] {
    id.into().to_be_bytes()
}

pub fn partition(p: u32) -> [u8; 4] {
    p.to_be_bytes()
}

pub fn dataset_prefix(dataset: DatasetId) -> [u8; 4] {
    dataset.get().to_be_bytes()
}

pub fn file(dataset: DatasetId, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + path.len());
    key.extend_from_slice(&dataset_prefix(dataset));
    key.extend_from_slice(path.as_bytes());
    key
}

/// The path part of a catalogue key.
pub fn file_path(key: &[u8]) -> &[u8] {
    &key[4.min(key.len())..]
}

/// Where a submission's listing records (or their paths) start: dataset,
/// then submission.
pub fn listed_prefix(dataset: DatasetId, submission: JobId) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&dataset_prefix(dataset));
    key[4..].copy_from_slice(&id(submission));
    key
}

/// A listing record's key (or its paths'): the submission's prefix, then
/// the last path of the range it is about.
pub fn listed(dataset: DatasetId, submission: JobId, last_path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + last_path.len());
    key.extend_from_slice(&listed_prefix(dataset, submission));
    key.extend_from_slice(last_path);
    key
}

/// The last path part of a listing key.
pub fn listed_last_path(key: &[u8]) -> &[u8] {
    &key[12.min(key.len())..]
}

/// The submission part of a listing key.
pub fn listed_submission(key: &[u8]) -> Option<JobId> {
    key.get(4..12).and_then(decode_u64).map(JobId)
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
