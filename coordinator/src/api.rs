//! What travels to a replica's QUIC endpoint, and the client that talks to
//! a cluster. One tagged envelope (`Request` / `Reply`) carries both the
//! Raft RPCs between replicas and the client API (write a command, read
//! the status), so a replica listens on one port. Messages are postcard:
//! compact, and byte payloads (commands, snapshot chunks) are written as
//! one length and the bytes, not per-byte sequences.
//!
//! A replica that is not the leader answers a client with `NotLeader`
//! naming the leader's address; `CoordinatorClient` follows it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto_schema::command::{Command, Response};
use proto_schema::quic::{RpcClient, RpcConfig, RpcConnection, RpcError};
use proto_schema::tls::TlsIdentity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::lease_desk::LeaseReply;
use crate::rpc::{RaftRpc, RaftRpcReply};
use crate::status::{ReplicaReport, StatusReport};
use crate::transport::resolve;
use crate::{Applied, CommandBytes, NodeId};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// From another replica's Raft.
    Raft(RaftRpc),
    /// A command to propose; answered once applied, by the leader only.
    Write(CommandBytes),
    Status,
    /// The answering replica's own view (`ReplicaReport`), never redirected.
    Replica,
    /// A node asks the leader for a shard to work on (`LeaseDesk::lease`).
    Lease {
        node: u64,
    },
    /// A node extends its lease; no log write (`LeaseDesk::renew`).
    Renew {
        node: u64,
        shard: u64,
        epoch: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Raft(RaftRpcReply),
    Written(Applied),
    /// Ask the leader instead (unknown during an election).
    NotLeader {
        leader: Option<NodeId>,
        address: Option<String>,
    },
    Status(StatusReport),
    Replica(ReplicaReport),
    Lease(LeaseReply),
    /// The request could not be served (undecodable, Raft shut down, ...).
    Failed(String),
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(message)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("cannot reach any coordinator of {addresses:?}: {last}")]
    Unreachable {
        addresses: Vec<String>,
        last: String,
    },
    #[error("no leader elected within {0:?}")]
    NoLeader(Duration),
    #[error("the coordinator failed the request: {0}")]
    Failed(String),
    #[error("undecodable reply from the coordinator: {0}")]
    Decode(#[from] postcard::Error),
    #[error("the coordinator gave an unexpected reply")]
    Unexpected,
    #[error(
        "the connection to {address} failed after the command was sent; it may or may not have been applied: {error}"
    )]
    Ambiguous { address: String, error: RpcError },
}

/// How long a client keeps retrying while the cluster has no leader or
/// none of its addresses answers.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(15);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A client of the coordinators: sends to one address, follows redirects
/// to the leader, and tries the other known addresses when one is down.
pub struct CoordinatorClient {
    client: Arc<RpcClient>,
    addresses: Vec<String>,
    current: usize,
    connection: Option<RpcConnection>,
    retry_window: Duration,
}

impl CoordinatorClient {
    /// A client presenting `identity`, knowing these coordinator
    /// addresses (`host:port`). Must be called inside a tokio runtime.
    pub fn new(identity: &TlsIdentity, addresses: Vec<String>) -> Result<Self, ApiError> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("valid address");
        let tls = identity
            .client_config()
            .map_err(|e| RpcError::Setup(e.to_string()))?;
        let client = RpcClient::new(bind, tls, client_rpc_config())?;
        Ok(Self {
            client: Arc::new(client),
            addresses,
            current: 0,
            connection: None,
            retry_window: DEFAULT_RETRY_WINDOW,
        })
    }

    pub fn with_retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// Proposes `cmd` through the leader. A command the state machine
    /// refused comes back as `Response::Error`. A write whose connection
    /// fails after sending is not retried (it may have been applied).
    pub async fn write(&mut self, cmd: &Command) -> Result<Response, ApiError> {
        match self
            .call(&Request::Write(CommandBytes::encode(cmd)), false)
            .await?
        {
            Reply::Written(Applied(response)) => Ok(response),
            _ => Err(ApiError::Unexpected),
        }
    }

    /// A pipeline of writes to the replica this client reached last (the
    /// leader, once a write has been redirected there), with up to
    /// `window` in flight. Use it after a plain `write`, so the client
    /// already talks to the leader.
    pub fn pipeline(&mut self, window: usize) -> Pipeline<'_> {
        Pipeline {
            client: self,
            window: window.max(1),
            in_flight: JoinSet::new(),
        }
    }

    /// Asks the leader for a shard for `node` to work on.
    pub async fn lease(&mut self, node: u64) -> Result<LeaseReply, ApiError> {
        self.lease_call(&Request::Lease { node }).await
    }

    /// Renews `node`'s lease of `shard` at `epoch`.
    pub async fn renew(
        &mut self,
        node: u64,
        shard: u64,
        epoch: u64,
    ) -> Result<LeaseReply, ApiError> {
        self.lease_call(&Request::Renew { node, shard, epoch })
            .await
    }

    /// Neither request is resent once sent: a grant goes through the log
    /// like a write, and a lost renewal costs only the node's next one.
    async fn lease_call(&mut self, request: &Request) -> Result<LeaseReply, ApiError> {
        match self.call(request, false).await? {
            Reply::Lease(reply) => Ok(reply),
            _ => Err(ApiError::Unexpected),
        }
    }

    /// The leader's status report (a replica's own when there is none).
    pub async fn status(&mut self) -> Result<StatusReport, ApiError> {
        match self.call(&Request::Status, true).await? {
            Reply::Status(report) => Ok(report),
            _ => Err(ApiError::Unexpected),
        }
    }

    /// Each known coordinator's own view, asked directly (no redirect, no
    /// retry), in the order of the addresses; an unreachable one is an
    /// error in its place.
    pub async fn replicas(&self) -> Vec<(String, Result<ReplicaReport, ApiError>)> {
        let mut out = Vec::with_capacity(self.addresses.len());
        for address in &self.addresses {
            let report = self.ask_replica(address).await;
            out.push((address.clone(), report));
        }
        out
    }

    async fn ask_replica(&self, address: &str) -> Result<ReplicaReport, ApiError> {
        let connection = dial(&self.client, address).await?;
        let reply = connection.request(&encode(&Request::Replica)?).await?;
        match decode::<Reply>(&reply)? {
            Reply::Replica(report) => Ok(report),
            Reply::Failed(reason) => Err(ApiError::Failed(reason)),
            _ => Err(ApiError::Unexpected),
        }
    }

    /// The address requests go to now (the leader, once redirected).
    pub fn address(&self) -> &str {
        &self.addresses[self.current]
    }

    async fn call(&mut self, request: &Request, idempotent: bool) -> Result<Reply, ApiError> {
        let bytes = encode(request)?;
        let deadline = Instant::now() + self.retry_window;
        let mut last_error = String::new();
        let mut failed_addresses = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(if failed_addresses > 0 {
                    ApiError::Unreachable {
                        addresses: self.addresses.clone(),
                        last: last_error,
                    }
                } else {
                    ApiError::NoLeader(self.retry_window)
                });
            }
            // A failure to connect, or one that left the request unsent
            // (or harmless to repeat), moves on to the next address.
            let attempt = match self.connect().await {
                Ok(connection) => match connection.request(&bytes).await {
                    Ok(reply) => Ok(reply),
                    Err(error) if !idempotent && !unsent(&error) => {
                        self.connection = None;
                        return Err(ApiError::Ambiguous {
                            address: self.address().to_owned(),
                            error,
                        });
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            let reply = match attempt {
                Ok(reply) => decode::<Reply>(&reply)?,
                Err(e) => {
                    last_error = e;
                    failed_addresses += 1;
                    self.next_address();
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            match reply {
                Reply::NotLeader {
                    address: Some(address),
                    ..
                } => self.redirect(address),
                Reply::NotLeader { address: None, .. } => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Reply::Failed(reason) => return Err(ApiError::Failed(reason)),
                reply => return Ok(reply),
            }
        }
    }

    async fn connect(&mut self) -> Result<RpcConnection, ApiError> {
        if let Some(connection) = self.connection.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = dial(&self.client, self.address()).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    fn next_address(&mut self) {
        self.connection = None;
        self.current = (self.current + 1) % self.addresses.len();
    }

    fn redirect(&mut self, address: String) {
        self.connection = None;
        self.current = match self.addresses.iter().position(|a| *a == address) {
            Some(i) => i,
            None => {
                self.addresses.push(address);
                self.addresses.len() - 1
            }
        };
    }
}

/// Writes sent without waiting for each other's answer: a manifest's
/// chunks are independent, and one at a time leaves the leader idle while
/// each chunk is replicated and applied. Answers arrive in any order. A
/// write that meets anything but an answer (a lost connection, a leader
/// that stepped down) ends the pipeline with an error: the caller aborts
/// what it was doing rather than resend a command that may have been
/// applied. Dropping the pipeline abandons the writes still in flight.
pub struct Pipeline<'c> {
    client: &'c mut CoordinatorClient,
    window: usize,
    in_flight: JoinSet<Result<Response, ApiError>>,
}

impl Pipeline<'_> {
    /// Sends `cmd`; when the window is full, first waits for one answer,
    /// which it returns.
    pub async fn send(&mut self, cmd: &Command) -> Result<Option<Response>, ApiError> {
        let answered = if self.in_flight.len() >= self.window {
            self.next().await?
        } else {
            None
        };
        let bytes = encode(&Request::Write(CommandBytes::encode(cmd)))?;
        let connection = self.client.connect().await?;
        let address = self.client.address().to_owned();
        self.in_flight.spawn(async move {
            let reply = connection
                .request(&bytes)
                .await
                .map_err(|error| ApiError::Ambiguous { address, error })?;
            match decode::<Reply>(&reply)? {
                Reply::Written(Applied(response)) => Ok(response),
                Reply::NotLeader { address, .. } => Err(ApiError::Failed(format!(
                    "the leader changed (now {}) while writes were in flight",
                    address.as_deref().unwrap_or("unknown")
                ))),
                Reply::Failed(reason) => Err(ApiError::Failed(reason)),
                _ => Err(ApiError::Unexpected),
            }
        });
        Ok(answered)
    }

    /// The next answer, or `None` once every write has been answered.
    pub async fn next(&mut self) -> Result<Option<Response>, ApiError> {
        match self.in_flight.join_next().await {
            None => Ok(None),
            Some(Ok(answer)) => answer.map(Some),
            Some(Err(e)) => Err(ApiError::Failed(format!("a write's task failed: {e}"))),
        }
    }
}

/// A new connection to `address` (`host:port`).
async fn dial(client: &RpcClient, address: &str) -> Result<RpcConnection, ApiError> {
    let (addr, name) = resolve(address).await.map_err(|e| ApiError::Unreachable {
        addresses: vec![address.to_owned()],
        last: e.to_string(),
    })?;
    Ok(client.connect(addr, &name).await?)
}

/// Failures that prove the request was not served: the handshake did
/// not complete, or the request was refused whole.
fn unsent(error: &RpcError) -> bool {
    matches!(
        error,
        RpcError::Connect { .. }
            | RpcError::Handshake { .. }
            | RpcError::PeerRefused { .. }
            | RpcError::RefusedByPeer { .. }
            | RpcError::TooLarge { .. }
            | RpcError::Refused { .. }
    )
}

/// Limits of the coordinators' endpoints. Messages stay within the
/// transport's 16 MiB: a replication payload holds at most
/// `MAX_PAYLOAD_ENTRIES` manifest chunks of about 1.2 MiB encoded. A write
/// is answered once committed and applied, which a busy cluster may take
/// longer than the transport's default 10 s for.
pub fn rpc_config() -> RpcConfig {
    RpcConfig {
        request_timeout: Duration::from_secs(30),
        ..RpcConfig::default()
    }
}

/// A client waits longer than a replica: a write returns once applied.
/// But it gives up on a silent connection sooner: a coordinator killed
/// while answering a write sends nothing more, and the client learns it
/// only from the idle timeout (with the transport's 30 s, `quern submit`
/// sat 30 s after a SIGKILLed leader). Keep-alives, every third of it,
/// keep a live connection busy however long the write takes.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn client_rpc_config() -> RpcConfig {
    RpcConfig {
        request_timeout: Duration::from_secs(60),
        idle_timeout: CLIENT_IDLE_TIMEOUT,
        ..rpc_config()
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;
    use crate::rpc::InstallSnapshotRequest;

    #[test]
    fn a_snapshot_chunk_costs_its_bytes_and_a_few_more() {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 256) as u8).collect();
        let rpc = Request::Raft(RaftRpc::InstallSnapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: Default::default(),
            offset: 5 << 20,
            data: data.clone(),
            done: false,
        }));
        let bytes = encode(&rpc).unwrap();
        assert!(bytes.len() < (1 << 20) + 128, "{} bytes", bytes.len());
        let Request::Raft(RaftRpc::InstallSnapshot(back)) = decode(&bytes).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!((back.offset, back.data), (5 << 20, data));

        let write = Request::Write(CommandBytes(vec![9; 1 << 20]));
        assert!(encode(&write).unwrap().len() < (1 << 20) + 16);
        let reply = Reply::Written(Applied(Response::SubmissionBegun { submission: 4 }));
        let Reply::Written(Applied(back)) = decode(&encode(&reply).unwrap()).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(back, Response::SubmissionBegun { submission: 4 });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 7], &[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]] {
            assert!(decode::<Request>(bytes).is_err());
        }
    }
}
