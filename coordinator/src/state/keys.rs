//! Column families of the state DB and the layout of their keys.
//!
//! Integers are big-endian so key order is numeric order; catalogue keys
//! start with the dataset id, so one dataset's files are one key range.

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
/// What each submission listed, chunk by chunk (see `listed`).
pub const CF_LISTED: &str = "listed";

/// The replicated state, in the order snapshots write it. A snapshot record
/// names its column family by index into this list.
pub const STATE_CFS: [&str; 9] = [
    CF_COUNTERS,
    CF_NODES,
    CF_DATASETS,
    CF_JOBS,
    CF_FILES,
    CF_SHARDS,
    CF_PARTITIONS,
    CF_LEASED,
    CF_LISTED,
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

pub fn id(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn dataset_prefix(dataset: u32) -> [u8; 4] {
    dataset.to_be_bytes()
}

pub fn file(dataset: u32, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + path.len());
    key.extend_from_slice(&dataset.to_be_bytes());
    key.extend_from_slice(path.as_bytes());
    key
}

/// The path part of a catalogue key.
pub fn file_path(key: &[u8]) -> &[u8] {
    &key[4.min(key.len())..]
}

/// Where a submission's listing records start: dataset, then submission.
pub fn listed_prefix(dataset: u32, submission: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&dataset.to_be_bytes());
    key[4..].copy_from_slice(&submission.to_be_bytes());
    key
}

/// A listing record's key: the submission's prefix, then the last path of
/// the chunk it holds.
pub fn listed(dataset: u32, submission: u64, last_path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + last_path.len());
    key.extend_from_slice(&listed_prefix(dataset, submission));
    key.extend_from_slice(last_path);
    key
}

/// The last path part of a listing record's key.
pub fn listed_last_path(key: &[u8]) -> &[u8] {
    &key[12.min(key.len())..]
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
