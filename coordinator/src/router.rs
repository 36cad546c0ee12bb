//! An in-process Raft transport: replicas in one process call each other's
//! `Raft` directly, through the same `RaftRpc` / `serve` seam a network
//! transport uses. Tests use it to build clusters, and take replicas off it
//! to make them unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};

use crate::rpc::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RaftRpc, RaftRpcReply, VoteRequest, VoteResponse, serve,
};
use crate::{Member, NodeId, Raft, TypeConfig};

/// The replicas reachable in this process.
#[derive(Clone, Default)]
pub struct Router {
    replicas: Arc<Mutex<HashMap<NodeId, Raft>>>,
}

impl Router {
    pub fn add(&self, id: NodeId, raft: Raft) {
        self.replicas.lock().expect("not poisoned").insert(id, raft);
    }

    /// Makes `id` unreachable; returns its handle.
    pub fn remove(&self, id: NodeId) -> Option<Raft> {
        self.replicas.lock().expect("not poisoned").remove(&id)
    }

    fn get(&self, id: NodeId) -> Option<Raft> {
        self.replicas
            .lock()
            .expect("not poisoned")
            .get(&id)
            .cloned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("replica {0} is not reachable")]
struct NotReachable(NodeId);

#[derive(Debug, thiserror::Error)]
#[error("replica answered a different RPC")]
struct WrongReply;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

/// A connection from one replica to `target`.
pub struct Connection {
    router: Router,
    target: NodeId,
}

impl Connection {
    async fn call<E>(
        &self,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
    {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&NotReachable(self.target))))?;
        Ok(serve(&raft, rpc).await)
    }

    fn remote<T, E: std::error::Error>(
        &self,
        reply: Result<T, RaftError<NodeId, E>>,
    ) -> RpcResult<T, E> {
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn wrong_reply<T, E: std::error::Error>() -> RpcResult<T, E> {
    Err(RPCError::Network(NetworkError::new(&WrongReply)))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse> {
        match self.call(RaftRpc::AppendEntries(rpc)).await? {
            RaftRpcReply::AppendEntries(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse, InstallSnapshotError> {
        match self.call(RaftRpc::InstallSnapshot(rpc)).await? {
            RaftRpcReply::InstallSnapshot(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest, _option: RPCOption) -> RpcResult<VoteResponse> {
        match self.call(RaftRpc::Vote(rpc)).await? {
            RaftRpcReply::Vote(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}
