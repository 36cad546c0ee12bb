//! The Raft RPCs between coordinator replicas, as a transport carries them.
//!
//! A transport (the in-process `router` today, QUIC later) moves a
//! `RaftRpc` to the target replica and a `RaftRpcReply` back; on the target,
//! `serve` hands the request to the local `Raft`. Both enums are serde
//! types, so a network transport only has to frame them.

use openraft::error::{InstallSnapshotError, RaftError};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Raft, TypeConfig};

pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;

/// A request from one replica's Raft to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest),
    Vote(VoteRequest),
    /// One chunk of a snapshot (`snapshot_max_chunk_size` bytes at most).
    InstallSnapshot(InstallSnapshotRequest),
}

/// The target replica's answer, including its Raft-level refusals.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    AppendEntries(Result<AppendEntriesResponse, RaftError<NodeId>>),
    Vote(Result<VoteResponse, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse, RaftError<NodeId, InstallSnapshotError>>),
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
