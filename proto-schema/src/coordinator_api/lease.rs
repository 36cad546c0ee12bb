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
    Leased(LeasedShard),
    /// Nothing pending or expired now; ask again later.
    NoWork,
    Renewed {
        deadline_ms: u64,
    },
    /// The grant or renewal was refused (unknown node, stale epoch, not
    /// the holder, expired).
    Refused(String),
}
