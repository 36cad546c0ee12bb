//! The coordinators' API on the wire: the one envelope a replica's
//! endpoint serves (`Request` / `Reply`), so a replica listens on one
//! port for its peers' Raft RPCs and for every client (the CLI, nodes).
//!
//! Codec: envelopes are postcard (compact; byte payloads are written as
//! one length and the bytes). What they carry keeps its own encoding:
//! a command and its response travel as their rkyv bytes (`CommandBytes`,
//! `Applied`), exactly as the Raft log stores and replicates them, and a
//! Raft RPC as opaque bytes (`RaftMessage`) that only the coordinator
//! decodes, so neither this crate nor a client links openraft.
//!
//! A replica that is not the leader answers a client with `NotLeader`
//! naming the leader's address; clients follow it.

mod lease;
mod payload;
mod refusal;
mod status;

pub use lease::{HeartbeatReply, LeaseReply, LeasedShard, MAX_HEARTBEAT_PROGRESS, ShardProgress};
pub use payload::{Applied, CommandBytes, RaftMessage};
pub use refusal::{Forbidden, Refusal};
pub use status::{
    DatasetStatus, JobPhase, JobRecovery, JobStatus, MAX_STATUS_NODES, MemberStatus, NodeState,
    NodeStatus, OwnedPartitions, ReplicaReport, StatusReport,
};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::command::{DatasetSpec, StagedCounts};
use crate::ids::{Epoch, JobId, NodeId, ShardId};
use crate::partition_map::PartitionMap;

/// Most jobs one `Reply::Work` lists (the oldest): a node works on one
/// at a time and asks again.
pub const MAX_WORK_ITEMS: usize = 16;

/// Most lanes a node may announce (`Request::PartitionMap`): the leader
/// keeps the number, and each peer opens a stream per lane.
pub const MAX_NODE_LANES: u16 = 1024;

/// A dataset's partition map and how to reach each of its owners: what a
/// node needs to take part in a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerMap {
    pub map: PartitionMap,
    /// One per range of the map, in the map's order.
    pub owners: Vec<Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: NodeId,
    /// Its data channel, as it registered it.
    pub address: String,
    /// Its lanes, once it has started the job asked about (`None`
    /// before: a peer waits for it).
    pub lanes: Option<u16>,
}

/// A coordinator replica's id in the Raft group.
pub type ReplicaId = u64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// From another replica's Raft (served only from the peers'
    /// certificates).
    Raft(RaftMessage),
    /// A command to propose; answered once applied, by the leader only.
    Write(CommandBytes),
    Status,
    /// The answering replica's own view (`ReplicaReport`), never redirected.
    Replica,
    /// A node joins (or rejoins with a newer incarnation): through the log.
    Register(NodeRegistration),
    /// A node's liveness and progress, to the leader: extends every lease
    /// it holds and its own deadline; no log write.
    Heartbeat {
        node: NodeId,
        incarnation: u64,
        /// Where its scanners are, for `status`; never replicated.
        progress: Vec<ShardProgress>,
        /// Its process's anonymous resident memory, for `status`.
        memory_bytes: Option<u64>,
    },
    /// A node asks the leader for up to `max` shards to work on (of
    /// `job` only, if named: a node's pipeline runs one job), granted in
    /// one log write. `map_epoch` is the partition map the node's part of
    /// `job` runs under: refused once the job's dataset has moved to
    /// another (the job was restarted), whichever replica leads.
    Lease {
        node: NodeId,
        max: u32,
        job: Option<JobId>,
        map_epoch: Option<Epoch>,
    },
    /// A node extends its lease; no log write.
    Renew {
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
    },
    /// A node finished these shards (`CompleteShards` through the log);
    /// the leader forgets their leases.
    Complete {
        node: NodeId,
        shards: Vec<(ShardId, Epoch)>,
    },
    /// An owner staged its part of a job (`StageJob` through the log).
    Stage {
        node: NodeId,
        job: JobId,
        counts: StagedCounts,
        map_epoch: Epoch,
    },
    /// A dataset's partition map over the live nodes, with how to reach
    /// each owner, from the leader (a new one, at the next epoch, if an
    /// owner was lost, or if the live nodes changed while no job of the
    /// dataset runs). The node starts its part of `job` with `lanes`
    /// lanes over its partitions (at most `MAX_NODE_LANES`): its peers
    /// open one stream per lane once every owner has started.
    /// `part` is drawn once by the node's part: the leader expires the
    /// node's leases (held by its earlier part) when a new part asks, not
    /// when the same part asks again or a late copy of its request comes.
    PartitionMap {
        node: NodeId,
        dataset: String,
        job: JobId,
        lanes: u16,
        part: u64,
    },
    /// One job's progress, from the leader.
    Job {
        job: JobId,
    },
    /// The jobs a node may work on (submitted, neither committed nor
    /// aborted), from the leader.
    Work {
        node: NodeId,
    },
    /// An owner starts its part of `job` after shards of the job's
    /// `attempt` were done: what they sent it is gone, so the job runs
    /// again (`RestartJob` through the log; nothing if another node asked
    /// first). Answered `Written`.
    Restart {
        node: NodeId,
        job: JobId,
        attempt: u32,
    },
}

/// A job a node may work on, with the spec of its dataset (the node
/// creates its local dataset from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    pub job: JobId,
    pub spec: DatasetSpec,
}

/// A node's registration, as it travels in a `Request::Register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node: NodeId,
    pub incarnation: u64,
    pub address: String,
    pub cert_fingerprint: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Raft(RaftMessage),
    Written(Applied),
    /// Ask the leader instead (unknown during an election).
    NotLeader {
        leader: Option<ReplicaId>,
        address: Option<String>,
    },
    Status(StatusReport),
    Replica(ReplicaReport),
    Lease(LeaseReply),
    Heartbeat(HeartbeatReply),
    /// `None`: no such job.
    Job(Option<JobStatus>),
    PartitionMap(OwnerMap),
    /// Oldest first, at most `MAX_WORK_ITEMS`.
    Work(Vec<WorkItem>),
    /// The request could not be served (undecodable, Raft shut down, ...).
    Failed(String),
    /// Refused before anything was done: out of bounds, or not allowed
    /// for the sender's certificate. Sending it again cannot help.
    Refused(Refusal),
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(message)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandError, Response};
    use crate::ids::JobId;

    /// Postcard writes an id as its integer (a varint): the newtypes left
    /// the envelope as it was.
    #[test]
    fn ids_travel_as_their_integers() {
        let lease = Request::Lease {
            node: NodeId(7),
            max: 1,
            job: Some(JobId(2)),
            map_epoch: Some(Epoch(3)),
        };
        assert_eq!(encode(&lease).unwrap(), [6, 7, 1, 1, 2, 1, 3]);
        let renew = Request::Renew {
            node: NodeId(7),
            shard: ShardId(300),
            epoch: Epoch(3),
        };
        assert_eq!(encode(&renew).unwrap(), [7, 7, 0xac, 0x02, 3]);
    }

    #[test]
    fn work_carries_each_jobs_dataset_spec() {
        use crate::command::{DatasetFormat, KeySpec};
        let item = WorkItem {
            job: JobId(3),
            spec: DatasetSpec {
                name: "logs".into(),
                format: DatasetFormat::Tsv,
                key: KeySpec::Field {
                    index: 2,
                    delimiter: b'\t',
                },
                partitions: 64,
            },
        };
        let reply = Reply::Work(vec![item.clone()]);
        let Reply::Work(back) = decode(&encode(&reply).unwrap()).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(back, [item]);
    }

    #[test]
    fn a_write_costs_its_bytes_and_a_few_more() {
        let write = Request::Write(CommandBytes(vec![9; 1 << 20]));
        assert!(encode(&write).unwrap().len() < (1 << 20) + 16);
        let reply = Reply::Written(Applied(Response::SubmissionBegun {
            submission: JobId(4),
        }));
        let Reply::Written(Applied(back)) = decode(&encode(&reply).unwrap()).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(
            back,
            Response::SubmissionBegun {
                submission: JobId(4)
            }
        );
        let refused = Reply::Written(Applied(Response::Error(CommandError::UnknownNode {
            id: NodeId(4),
        })));
        let Reply::Written(back) = decode(&encode(&refused).unwrap()).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(
            back.0,
            Response::Error(CommandError::UnknownNode { id: NodeId(4) })
        );
    }
}
