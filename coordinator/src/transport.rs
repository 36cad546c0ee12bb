//! Raft between replicas over QUIC: openraft's `RaftNetworkFactory` on the
//! mutual-TLS `RpcClient` of `proto_schema::quic`. Each RPC is one
//! `Request::Raft` envelope on its own stream, bounded by the
//! deadline openraft gives (`RPCOption::hard_ttl`). A peer is dialled at
//! its member address (`host:port`); its certificate must name that host
//! (TLS) and be named `coord-<target>` (checked here), so an address
//! pointing at another replica, or any other holder of a cluster
//! certificate, never receives the entries meant for `target`. A failed
//! connection is dropped and dialled again on the next RPC.
//! Successful exchanges are recorded per peer, for the leader's view of
//! its followers' health in `status`.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use proto_schema::coordinator_api::{self, Reply, Request};
use proto_schema::quic::{RpcClient, RpcConnection, RpcError, resolve};

use crate::contacts::Contacts;
use crate::raft_peers;
use crate::rpc::{
    self, AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, RaftRpc, RaftRpcReply, VoteRequest, VoteResponse,
};
use crate::{Member, ReplicaId, TypeConfig};

/// Makes a `PeerLink` per target replica; all share one QUIC endpoint.
#[derive(Clone)]
pub struct QuicNetwork {
    id: ReplicaId,
    client: Arc<RpcClient>,
    contacts: Contacts,
}

impl QuicNetwork {
    pub fn new(id: ReplicaId, client: Arc<RpcClient>, contacts: Contacts) -> Self {
        Self {
            id,
            client,
            contacts,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: ReplicaId, node: &Member) -> PeerLink {
        PeerLink {
            id: self.id,
            target,
            address: node.addr.clone(),
            client: self.client.clone(),
            connection: None,
            contacts: self.contacts.clone(),
        }
    }
}

/// Why an RPC failed, before openraft's error types.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// Could not reach the peer (resolve, handshake, lost connection).
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    /// Reached it, but the exchange failed.
    #[error("RPC failed: {0}")]
    Network(String),
}

impl From<RpcError> for LinkError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Connect { .. }
            | RpcError::PeerRefused { .. }
            | RpcError::RefusedByPeer { .. }
            | RpcError::Handshake { .. }
            | RpcError::Connection { .. }
            | RpcError::Timeout { .. } => LinkError::Unreachable(e.to_string()),
            other => LinkError::Network(other.to_string()),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<ReplicaId, Member, RaftError<ReplicaId, E>>>;

/// One replica's link to another.
pub struct PeerLink {
    id: ReplicaId,
    target: ReplicaId,
    address: String,
    client: Arc<RpcClient>,
    connection: Option<RpcConnection>,
    contacts: Contacts,
}

impl PeerLink {
    async fn connection(&mut self) -> Result<RpcConnection, LinkError> {
        if let Some(connection) = self.connection.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let (addr, name) = resolve(&self.address)
            .await
            .map_err(|e| LinkError::Unreachable(format!("resolving {}: {e}", self.address)))?;
        let connection = self.client.connect(addr, &name).await?;
        let expected = raft_peers::certificate_name(self.target);
        let presented = connection.server_name();
        if presented.as_deref() != Some(expected.as_str()) {
            connection.close();
            return Err(LinkError::Unreachable(format!(
                "{} presented a certificate named {presented:?}, not {expected:?}: it is not \
                 replica {}",
                self.address, self.target
            )));
        }
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn exchange(&mut self, rpc: RaftRpc) -> Result<RaftRpcReply, LinkError> {
        let encode = |e: postcard::Error| LinkError::Network(e.to_string());
        let request =
            coordinator_api::encode(&Request::Raft(rpc::to_message(&rpc).map_err(encode)?))
                .map_err(encode)?;
        let connection = self.connection().await?;
        let bytes = connection.request(&request).await?;
        let undecodable =
            |e: postcard::Error| LinkError::Network(format!("undecodable reply: {e}"));
        match coordinator_api::decode::<Reply>(&bytes) {
            Ok(Reply::Raft(reply)) => rpc::from_message(&reply).map_err(undecodable),
            Ok(Reply::Failed(reason)) => Err(LinkError::Network(reason)),
            Ok(_) => Err(LinkError::Network(
                "the replica answered another request".into(),
            )),
            Err(e) => Err(undecodable(e)),
        }
    }

    /// Sends `rpc` within the option's hard deadline. Any failure drops
    /// the connection, so the next RPC dials afresh.
    async fn call<E: std::error::Error>(
        &mut self,
        rpc: RaftRpc,
        option: &RPCOption,
        action: RPCTypes,
    ) -> RpcResult<RaftRpcReply, E> {
        let ttl = option.hard_ttl();
        let outcome = tokio::time::timeout(ttl, self.exchange(rpc)).await;
        if !matches!(outcome, Ok(Ok(_))) {
            self.connection = None;
        }
        match outcome {
            Ok(Ok(reply)) => {
                self.contacts.record(self.target);
                Ok(reply)
            }
            Ok(Err(e @ LinkError::Unreachable(_))) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e @ LinkError::Network(_))) => Err(RPCError::Network(NetworkError::new(&e))),
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            })),
        }
    }

    fn remote<T, E: std::error::Error>(
        &self,
        reply: Result<T, RaftError<ReplicaId, E>>,
    ) -> RpcResult<T, E> {
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("replica answered a different RPC")]
struct WrongReply;

fn wrong_reply<T, E: std::error::Error>() -> RpcResult<T, E> {
    Err(RPCError::Network(NetworkError::new(&WrongReply)))
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse> {
        let rpc = RaftRpc::AppendEntries(rpc);
        match self.call(rpc, &option, RPCTypes::AppendEntries).await? {
            RaftRpcReply::AppendEntries(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }

    /// One chunk of a snapshot; openraft sends the file chunk by chunk.
    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse, InstallSnapshotError> {
        let rpc = RaftRpc::InstallSnapshot(rpc);
        match self.call(rpc, &option, RPCTypes::InstallSnapshot).await? {
            RaftRpcReply::InstallSnapshot(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> RpcResult<VoteResponse> {
        match self
            .call(RaftRpc::Vote(rpc), &option, RPCTypes::Vote)
            .await?
        {
            RaftRpcReply::Vote(reply) => self.remote(reply),
            _ => wrong_reply(),
        }
    }
}
