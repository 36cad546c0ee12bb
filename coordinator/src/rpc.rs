//! The Raft RPCs between coordinator replicas, as a transport carries them.
//!
//! A transport (the in-process `router`, or QUIC in `transport`) moves a
//! `RaftRpc` to the target replica and a `RaftRpcReply` back; on the
//! target, `serve` hands the request to the local `Raft`. Both enums are
//! serde types over openraft's own; on the network they are postcard,
//! carried in the API envelope as an opaque `RaftMessage` (`to_message`,
//! `from_message`), so only this crate knows openraft's types.

use openraft::error::{InstallSnapshotError, RaftError};
use proto_schema::coordinator_api::RaftMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Raft, ReplicaId, TypeConfig};

pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<ReplicaId>;
pub type VoteRequest = openraft::raft::VoteRequest<ReplicaId>;
pub type VoteResponse = openraft::raft::VoteResponse<ReplicaId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<ReplicaId>;

/// A request from one replica's Raft to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest),
    Vote(VoteRequest),
    /// One chunk of a snapshot (`snapshot_max_chunk_size` bytes at most).
    InstallSnapshot(InstallSnapshotRequest),
}

impl RaftRpc {
    /// Its name in logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RaftRpc::AppendEntries(_) => "append_entries",
            RaftRpc::Vote(_) => "vote",
            RaftRpc::InstallSnapshot(_) => "install_snapshot",
        }
    }

    /// Checks what the RPC names before Raft acts on it: a snapshot's id
    /// becomes a file name.
    pub fn check(&self) -> Result<(), crate::state::StateError> {
        match self {
            RaftRpc::InstallSnapshot(req) => crate::state::check_snapshot_id(&req.meta.snapshot_id),
            RaftRpc::AppendEntries(_) | RaftRpc::Vote(_) => Ok(()),
        }
    }

    /// The replica the RPC says it comes from: a vote's candidate, the
    /// leader of an append or a snapshot.
    pub fn sender(&self) -> Option<ReplicaId> {
        let vote = match self {
            RaftRpc::AppendEntries(req) => &req.vote,
            RaftRpc::Vote(req) => &req.vote,
            RaftRpc::InstallSnapshot(req) => &req.vote,
        };
        vote.leader_id().voted_for()
    }
}

/// The target replica's answer, including its Raft-level refusals.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    AppendEntries(Result<AppendEntriesResponse, RaftError<ReplicaId>>),
    Vote(Result<VoteResponse, RaftError<ReplicaId>>),
    InstallSnapshot(Result<InstallSnapshotResponse, RaftError<ReplicaId, InstallSnapshotError>>),
}

/// An RPC or a reply as the envelope carries it.
pub fn to_message<T: Serialize>(rpc: &T) -> Result<RaftMessage, postcard::Error> {
    postcard::to_stdvec(rpc).map(RaftMessage)
}

/// An RPC or a reply back from the envelope; bad bytes are an error.
pub fn from_message<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, postcard::Error> {
    postcard::from_bytes(&message.0)
}

/// Serves one RPC on the target replica.
pub async fn serve(raft: &Raft, rpc: RaftRpc) -> RaftRpcReply {
    match rpc {
        RaftRpc::AppendEntries(req) => RaftRpcReply::AppendEntries(raft.append_entries(req).await),
        RaftRpc::Vote(req) => RaftRpcReply::Vote(raft.vote(req).await),
        RaftRpc::InstallSnapshot(req) => {
            RaftRpcReply::InstallSnapshot(raft.install_snapshot(req).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use proto_schema::command::Command;
    use proto_schema::coordinator_api::{self, Request};
    use proto_schema::ids::{Epoch, NodeId, ShardId};

    use super::*;
    use crate::CommandBytes;

    /// What a network transport does: serialize, carry, deserialize.
    #[test]
    fn rpcs_survive_serialization() {
        let cmd = Command::CompleteShards {
            node: NodeId(2),
            shards: vec![proto_schema::command::ShardDone {
                shard: ShardId(3),
                epoch: Epoch(7),
            }],
        };
        let log_id = LogId::new(CommittedLeaderId::new(4, 1), 10);
        let rpc = RaftRpc::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(4, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(4, 1), 9)),
            entries: vec![Entry {
                log_id,
                payload: EntryPayload::Normal(CommandBytes::encode(&cmd)),
            }],
            leader_commit: Some(log_id),
        });
        let wire = serde_json::to_vec(&rpc).unwrap();
        let RaftRpc::AppendEntries(back) = serde_json::from_slice::<RaftRpc>(&wire).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(back.leader_commit, Some(log_id));
        let EntryPayload::Normal(bytes) = &back.entries[0].payload else {
            panic!("wrong payload")
        };
        assert_eq!(bytes.decode().unwrap(), cmd);

        let reply = RaftRpcReply::Vote(Ok(VoteResponse::new(Vote::new(5, 2), None, true)));
        let wire = serde_json::to_vec(&reply).unwrap();
        let RaftRpcReply::Vote(Ok(back)) = serde_json::from_slice::<RaftRpcReply>(&wire).unwrap()
        else {
            panic!("wrong variant")
        };
        assert!(back.vote_granted);
    }

    #[test]
    fn a_snapshot_chunk_costs_its_bytes_and_a_few_more() {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 256) as u8).collect();
        let rpc = RaftRpc::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: Default::default(),
            offset: 5 << 20,
            data: data.clone(),
            done: false,
        });
        let request = Request::Raft(to_message(&rpc).unwrap());
        let bytes = coordinator_api::encode(&request).unwrap();
        assert!(bytes.len() < (1 << 20) + 128, "{} bytes", bytes.len());
        let Request::Raft(message) = coordinator_api::decode(&bytes).unwrap() else {
            panic!("wrong variant")
        };
        let RaftRpc::InstallSnapshot(back) = from_message(&message).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!((back.offset, back.data), (5 << 20, data));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let rpc = |bytes: &[u8]| match coordinator_api::decode::<Request>(bytes)? {
            Request::Raft(message) => from_message::<RaftRpc>(&message).map(drop),
            _ => Ok(()),
        };
        for bytes in [&[][..], &[0xff; 7], &[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]] {
            assert!(rpc(bytes).is_err());
        }
    }
}
