//! What `quern status` shows: the Raft view (leader, term, members with
//! the leader's matched index and last contact) and the work (datasets,
//! recent jobs with pending / leased / done shards), as the replica that
//! answers builds it. Only the leader knows its followers' health, so
//! other replicas redirect.
//!
//! `ReplicaReport` is one replica's own view, which every replica answers
//! without redirecting: the index its state has applied and a digest of
//! that state, so replicas can be compared (equal indexes, equal digests).

use serde::{Deserialize, Serialize};

use super::ReplicaId;
use crate::ids::{DatasetId, JobId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The replica that answered.
    pub replica: ReplicaId,
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub datasets: Vec<DatasetStatus>,
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: ReplicaId,
    pub address: String,
    pub voter: bool,
    /// The last log index the leader knows this member holds.
    pub matched_index: Option<u64>,
    /// Milliseconds since the leader last heard from it (0 for itself).
    pub last_contact_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatus {
    pub name: String,
    pub id: DatasetId,
    pub format: String,
    pub open_submission: Option<JobId>,
    /// Files the last finished submission listed.
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub dataset: String,
    /// The submitter's clock when it began the submission (ms since the
    /// epoch); a submitter recognises its own submission by it.
    pub began_ms: u64,
    pub submitting: bool,
    /// Every shard done and every owner staged: owners publish.
    pub committed: bool,
    pub aborted: bool,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub gone: u64,
    pub shards_pending: u64,
    pub shards_leased: u64,
    /// Done in the current attempt.
    pub shards_done: u64,
    /// Times the job was restarted: every shard is read again in a new
    /// attempt.
    pub attempt: u32,
    /// Why it was last restarted.
    pub restarted: Option<String>,
}

/// One replica's own view of itself, for comparing replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: ReplicaId,
    /// The leader this replica knows of.
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last log index applied to the state the digest covers.
    pub last_applied: Option<u64>,
    /// Records in the replicated state (catalogue entries, jobs, shards, ...).
    pub state_records: u64,
    /// XXH3 of the replicated state's records.
    pub state_hash: u64,
}
