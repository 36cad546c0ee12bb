//! The leader's answers to a node asking for work (`Request::Lease`) or
//! extending a lease (`Request::Renew`).

use serde::{Deserialize, Serialize};

use crate::ids::{DatasetId, Epoch, JobId, ShardId};

/// A shard leased to the asking node: what to read and the epoch to
/// present in renewals and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedShard {
    pub shard: ShardId,
    pub job: JobId,
    /// The file's number in the job's manifest (path order).
    pub file: u64,
    pub dataset_id: DatasetId,
    pub path: String,
    pub start: u64,
    pub end: u64,
    /// Where a previous holder got to: resume from here.
    pub checkpoint: u64,
    pub epoch: Epoch,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// One or more shards, granted in one log write.
    Leased(Vec<LeasedShard>),
    /// Nothing pending or expired now; ask again later.
    NoWork,
    Renewed {
        deadline_ms: u64,
    },
    /// The grant or renewal was refused (unknown node, stale epoch, not
    /// the holder, expired).
    Refused(String),
}

/// Most progress entries a heartbeat's report keeps (one per shard being
/// scanned; more are dropped, not refused).
pub const MAX_HEARTBEAT_PROGRESS: usize = 1024;

/// Where a node's scan of a leased shard has got to, carried by its
/// heartbeats (shown by `status`, never written to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    pub shard: ShardId,
    pub epoch: Epoch,
    /// Bytes of the shard read so far.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatReply {
    /// The node's leases (`renewed` of them) and its own deadline now run
    /// to `deadline_ms`.
    Alive { deadline_ms: u64, renewed: u64 },
    /// The leader does not know this incarnation as live (declared lost, or
    /// a newer one registered): stop work and register again.
    Unknown,
}
