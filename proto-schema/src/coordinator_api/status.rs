//! What `quern status` shows: the Raft view (leader, term, members with
//! the leader's matched index and last contact), the nodes (alive or lost
//! as the leader sees them, memory, partitions owned) and the work
//! (datasets, recent jobs with their phase and what a running one waits
//! on), as the replica that answers builds it. Only the leader knows its
//! followers' health and the nodes' heartbeats, so other replicas
//! redirect.
//!
//! `ReplicaReport` is one replica's own view, which every replica answers
//! without redirecting: the index its state has applied and a digest of
//! that state, so replicas can be compared (equal indexes, equal digests).

use serde::{Deserialize, Serialize};

use super::ReplicaId;
use crate::command::StagedCounts;
use crate::ids::{DatasetId, Epoch, JobId, NodeId, PartitionId};

/// Most nodes one `StatusReport` lists (the lowest ids), and most owners
/// a job's `unstaged` names: the rest are counted, not listed.
pub const MAX_STATUS_NODES: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The replica that answered.
    pub replica: ReplicaId,
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Registered nodes in id order, lost ones included, at most
    /// `MAX_STATUS_NODES`.
    pub nodes: Vec<NodeStatus>,
    /// Registered nodes past `MAX_STATUS_NODES`, not listed.
    pub nodes_omitted: u64,
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

/// A node as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heard from within its deadline.
    Alive,
    /// Silent past its deadline: the leader declares it lost (through the
    /// log) when it next serves a node's request.
    Overdue,
    /// Declared lost through the log: its leases went back to pending, and
    /// it gets none until it registers again.
    Lost,
    /// Registered and not declared lost, but this leader has not heard
    /// from it: it took over after the node's last request, or is busy.
    Untracked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// Its data-channel address, as registered.
    pub address: String,
    pub incarnation: u64,
    pub state: NodeState,
    /// Milliseconds since the leader last heard from it (a heartbeat, a
    /// lease, a renewal); `None`: not since this leader took over.
    pub silent_ms: Option<u64>,
    /// The anonymous resident memory of its process at its last
    /// heartbeat, if it reported one.
    pub memory_bytes: Option<u64>,
    /// Shards its scanners were reading at its last heartbeat, and the
    /// bytes of them read so far.
    pub shards_scanning: u64,
    pub bytes_scanned: u64,
    /// The partitions it owns, per dataset, under each dataset's current
    /// map.
    pub partitions: Vec<OwnedPartitions>,
}

/// A node's range of one dataset's partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedPartitions {
    pub dataset: String,
    pub map_epoch: Epoch,
    /// Partitions `start..end`.
    pub start: PartitionId,
    pub end: PartitionId,
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
    pub phase: JobPhase,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub gone: u64,
    pub shards_pending: u64,
    pub shards_leased: u64,
    /// Done in the current attempt.
    pub shards_done: u64,
    /// The partition map the job stages under (a committed job: the one it
    /// committed under); `None` before the dataset has one.
    pub map_epoch: Option<Epoch>,
    /// Owners under that map that have not staged their part, at most
    /// `MAX_STATUS_NODES` (a committed or aborted job: none).
    pub unstaged: Vec<NodeId>,
    /// The counts the owners staged under that map, summed (a committed
    /// job: what it committed).
    pub staged: StagedCounts,
    /// Times the job was restarted: every shard is read again in a new
    /// attempt.
    pub attempt: u32,
    /// Why it was last restarted.
    pub restarted: Option<String>,
    /// While it recovers the partitions of an owner lost before staging.
    pub recovery: Option<JobRecovery>,
}

/// A job recovering a lost owner's partitions (lineage): the other
/// owners' parts of `base_attempt` stay staged (under map `base_epoch`),
/// and `owner` reads every shard again for partitions `start..end` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecovery {
    pub base_attempt: u32,
    pub base_epoch: Epoch,
    pub lost: NodeId,
    pub owner: NodeId,
    pub start: PartitionId,
    pub end: PartitionId,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// The inventory is being received.
    Submitting,
    /// Nodes lease and read its shards (some pending or leased).
    Scanning,
    /// Every shard read: waiting for the owners to stage their part.
    Staging,
    /// Every owner staged and the counts reconciled: owners publish.
    Committed,
    /// Abandoned before its submission finished: none of it counts.
    Aborted,
}

impl JobPhase {
    /// Whether the job is over (committed or aborted).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Committed | Self::Aborted)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Submitting => "submitting",
            Self::Scanning => "scanning",
            Self::Staging => "staging",
            Self::Committed => "committed",
            Self::Aborted => "aborted",
        }
    }
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
