//! An in-process network: replicas in one process reach each other's
//! `Raft` directly, through the same `RaftRpc` / `serve` seam the QUIC
//! transport uses, and clients reach a replica's `ClientApi` directly,
//! as `coordinator_client`'s `Transport`: tests and a single-process
//! cluster run the same client code as a user over QUIC. Taking a replica
//! off the router makes it unreachable; isolating it cuts it off from its
//! peers and its clients until it rejoins (a network partition). Its
//! clients are code of this process (`authorize::Caller::InProcess`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use coordinator_client::{Connection, Transport, TransportError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use proto_schema::coordinator_api::{Reply, Request};

use crate::authorize::Caller;
use crate::client_api::ClientApi;
use crate::rpc::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RaftRpc, RaftRpcReply, VoteRequest, VoteResponse, serve,
};
use crate::{Member, ReplicaId, TypeConfig};

/// The replicas reachable in this process, by id (from their peers) and
/// by member address (from clients, as redirects name them).
#[derive(Clone, Default)]
pub struct Router {
    replicas: Arc<Mutex<Replicas>>,
    /// The replica whose Raft sends through this handle (`for_replica`):
    /// an isolated one reaches no peer.
    from: Option<ReplicaId>,
}

#[derive(Default)]
struct Replicas {
    by_id: HashMap<ReplicaId, Arc<ClientApi>>,
    by_address: HashMap<String, ReplicaId>,
    isolated: HashSet<ReplicaId>,
}

impl Router {
    /// Puts replica `id` on the network at its member `address`.
    pub fn add(&self, id: ReplicaId, address: impl Into<String>, api: ClientApi) {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        replicas.by_id.insert(id, Arc::new(api));
        replicas.by_address.insert(address.into(), id);
    }

    /// Makes `id` unreachable.
    pub fn remove(&self, id: ReplicaId) {
        self.replicas
            .lock()
            .expect("not poisoned")
            .by_id
            .remove(&id);
    }

    /// The network as replica `id`'s Raft uses it (`Raft::new`'s network).
    pub fn for_replica(&self, id: ReplicaId) -> Router {
        Router {
            replicas: self.replicas.clone(),
            from: Some(id),
        }
    }

    /// Cuts `id` off from its peers and its clients until `rejoin` (its
    /// peers must reach it through `for_replica` handles for it to reach
    /// none of them either).
    pub fn isolate(&self, id: ReplicaId) {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        replicas.isolated.insert(id);
    }

    pub fn rejoin(&self, id: ReplicaId) {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        replicas.isolated.remove(&id);
    }

    /// The replica that says it leads, if one does (an isolated one may
    /// still say so until it hears of a newer term).
    pub fn leader(&self) -> Option<ReplicaId> {
        let replicas = self.replicas.lock().expect("not poisoned");
        replicas.by_id.iter().find_map(|(&id, api)| {
            let metrics = api.raft().metrics();
            let leads = metrics.borrow().current_leader == Some(id);
            leads.then_some(id)
        })
    }

    /// Replica `id`, if this handle reaches it.
    fn get(&self, id: ReplicaId) -> Option<Arc<ClientApi>> {
        let replicas = self.replicas.lock().expect("not poisoned");
        let cut = |id: &ReplicaId| replicas.isolated.contains(id);
        if cut(&id) || self.from.as_ref().is_some_and(cut) {
            return None;
        }
        replicas.by_id.get(&id).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("replica {0} is not reachable")]
struct NotReachable(ReplicaId);

#[derive(Debug, thiserror::Error)]
#[error("no replica at {0:?}")]
struct UnknownAddress(String);

#[derive(Debug, thiserror::Error)]
#[error("replica answered a different RPC")]
struct WrongReply;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<ReplicaId, Member, RaftError<ReplicaId, E>>>;

/// A link from one replica's Raft to `target`.
pub struct RaftLink {
    router: Router,
    target: ReplicaId,
}

impl RaftLink {
    async fn call<E>(
        &self,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, RPCError<ReplicaId, Member, RaftError<ReplicaId, E>>>
    where
        E: std::error::Error,
    {
        let replica = self
            .router
            .get(self.target)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&NotReachable(self.target))))?;
        Ok(serve(replica.raft(), rpc).await)
    }

    fn remote<T, E: std::error::Error>(
        &self,
        reply: Result<T, RaftError<ReplicaId, E>>,
    ) -> RpcResult<T, E> {
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn wrong_reply<T, E: std::error::Error>() -> RpcResult<T, E> {
    Err(RPCError::Network(NetworkError::new(&WrongReply)))
}

impl RaftNetwork<TypeConfig> for RaftLink {
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
    type Network = RaftLink;

    async fn new_client(&mut self, target: ReplicaId, _node: &Member) -> RaftLink {
        RaftLink {
            router: self.clone(),
            target,
        }
    }
}

/// A client's link to one replica; it breaks when the replica leaves the
/// router.
#[derive(Clone)]
pub struct ClientLink {
    router: Router,
    target: ReplicaId,
}

impl Transport for Router {
    type Connection = ClientLink;

    async fn connect(&self, address: &str) -> Result<ClientLink, TransportError> {
        let target = {
            let replicas = self.replicas.lock().expect("not poisoned");
            let id = replicas.by_address.get(address).copied();
            id.ok_or_else(|| TransportError::NotSent(Box::new(UnknownAddress(address.into()))))?
        };
        let link = ClientLink {
            router: self.clone(),
            target,
        };
        if link.is_closed() {
            return Err(TransportError::NotSent(Box::new(NotReachable(target))));
        }
        Ok(link)
    }
}

impl Connection for ClientLink {
    async fn request(&self, request: &Request) -> Result<Reply, TransportError> {
        let replica = self
            .router
            .get(self.target)
            .ok_or_else(|| TransportError::NotSent(Box::new(NotReachable(self.target))))?;
        Ok(replica.answer(&Caller::InProcess, request).await)
    }

    fn is_closed(&self) -> bool {
        self.router.get(self.target).is_none()
    }
}
