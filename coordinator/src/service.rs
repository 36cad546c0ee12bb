//! A coordinator replica as a running service: its RocksDB stores, its
//! Raft, and one QUIC endpoint (mutual TLS, cluster CA) serving both the
//! other replicas' Raft RPCs (from their certificates only, see
//! `raft_peers`) and the client API (`client_api`, as each certificate's
//! role allows: `authorize`). The lowest-id member of
//! the configured peers initializes the cluster when its log is empty, so
//! starting the same configuration on every replica forms the cluster, and
//! restarting it changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::Config;
use openraft::error::{InitializeError, RaftError};
use proto_schema::coordinator_api::{self, RaftMessage, Reply, Request};
use proto_schema::quic::{Peer, RpcClient, RpcConfig, RpcError, RpcServer};
use proto_schema::tls::TlsIdentity;

use crate::authorize::Caller;
use crate::client_api::{ClientApi, LocalStatus};
use crate::contacts::Contacts;
use crate::job_progress::{self, JobProgressTask};
use crate::raft_metrics::{self, RaftMetricsTask};
use crate::raft_peers::{self, RaftPeers};
use crate::rpc::{self, RaftRpc};
use crate::state::StateError;
use crate::transport::QuicNetwork;
use crate::{LogStore, Member, Raft, ReplicaId, StateMachineStore};

pub struct ServiceConfig {
    pub id: ReplicaId,
    /// Where this replica listens (port 0 picks one).
    pub listen: SocketAddr,
    /// Every voter of the cluster, this replica included: id -> `host:port`.
    pub peers: BTreeMap<ReplicaId, String>,
    /// Holds `log/` and `state/`.
    pub data_dir: PathBuf,
    pub identity: TlsIdentity,
    pub raft: Arc<Config>,
    /// How long a lease lasts without a renewal.
    pub lease_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("replica {id} is not among the peers {peers:?}")]
    NotAPeer {
        id: ReplicaId,
        peers: Vec<ReplicaId>,
    },
    #[error(
        "replica {id}'s certificate is named {found:?}, but its peers take Raft RPCs only \
         from a certificate named {expected:?} (`quern cert issue --name {expected}`)"
    )]
    CertName {
        id: ReplicaId,
        expected: String,
        found: Option<String>,
    },
    #[error("opening the Raft log in {dir}: {error}")]
    Log {
        dir: PathBuf,
        error: crate::log_store::OpenError,
    },
    #[error("opening the state machine in {dir}: {error}")]
    State { dir: PathBuf, error: StateError },
    #[error("TLS: {0}")]
    Tls(#[from] proto_schema::tls::TlsError),
    #[error("{0}")]
    Rpc(#[from] RpcError),
    #[error("raft: {0}")]
    Raft(String),
}

/// Limits of the coordinators' endpoints. Messages stay within the
/// transport's 16 MiB: a replication payload holds at most
/// `MAX_PAYLOAD_ENTRIES` submission chunks of about 1.2 MiB encoded. A write
/// is answered once committed and applied, which a busy cluster may take
/// longer than the transport's default 10 s for.
pub fn rpc_config() -> RpcConfig {
    RpcConfig {
        request_timeout: Duration::from_secs(30),
        ..RpcConfig::default()
    }
}

/// How long shutdown waits for Raft to stop.
pub const RAFT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Service {
    raft: Raft,
    local_status: LocalStatus,
    raft_metrics: RaftMetricsTask,
    job_progress: JobProgressTask,
    state: StateMachineStore,
    server: RpcServer,
    client: Arc<RpcClient>,
}

impl Service {
    /// Opens the stores, starts Raft and the endpoint, and initializes the
    /// cluster if this is the lowest-id peer and the log is empty. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let id = config.id;
        if !config.peers.contains_key(&id) {
            return Err(ServiceError::NotAPeer {
                id,
                peers: config.peers.keys().copied().collect(),
            });
        }
        // Refused here rather than by every peer, one RPC at a time.
        let expected = raft_peers::certificate_name(id);
        let found = config.identity.name();
        if found.as_ref() != Some(&expected) {
            return Err(ServiceError::CertName {
                id,
                expected,
                found,
            });
        }
        let log_dir = config.data_dir.join("log");
        let log = LogStore::open(&log_dir).map_err(|error| ServiceError::Log {
            dir: log_dir,
            error,
        })?;
        let state_dir = config.data_dir.join("state");
        let state = StateMachineStore::open(&state_dir).map_err(|error| ServiceError::State {
            dir: state_dir,
            error,
        })?;
        let bind = match config.listen {
            SocketAddr::V4(_) => "0.0.0.0:0",
            SocketAddr::V6(_) => "[::]:0",
        };
        let client = Arc::new(RpcClient::new(
            bind.parse().expect("valid address"),
            config.identity.client_config()?,
            rpc_config(),
        )?);
        let server_tls = config.identity.server_config()?;
        let contacts = Contacts::default();
        let network = QuicNetwork::new(id, client.clone(), contacts.clone());
        let raft = Raft::new(id, config.raft.clone(), network, log, state.clone())
            .await
            .map_err(|e| ServiceError::Raft(e.to_string()))?;
        let api = ClientApi::new(raft.clone(), state.clone(), config.lease_ms, contacts);
        let local_status = api.local_status();
        let job_clock = api.job_clock();
        let handler = {
            let endpoint = Arc::new(Endpoint {
                api,
                raft_peers: RaftPeers::new(config.peers.keys().copied()),
            });
            move |peer: Peer, request: Vec<u8>| {
                let endpoint = endpoint.clone();
                async move { endpoint.answer(&peer, &request).await }
            }
        };
        let server = match RpcServer::bind(config.listen, server_tls, rpc_config(), handler) {
            Ok(server) => server,
            Err(e) => {
                // A Raft left running would keep the stores open.
                let _ = tokio::time::timeout(RAFT_SHUTDOWN_TIMEOUT, raft.shutdown()).await;
                return Err(e.into());
            }
        };
        let service = Self {
            raft_metrics: raft_metrics::publish(&raft),
            job_progress: job_progress::publish(raft.clone(), state.clone(), job_clock),
            raft,
            local_status,
            state,
            server,
            client,
        };
        if config.peers.keys().next() == Some(&id) {
            service.initialize(&config.peers).await?;
        }
        Ok(service)
    }

    async fn initialize(&self, peers: &BTreeMap<ReplicaId, String>) -> Result<(), ServiceError> {
        let raft_error = |e: &dyn std::fmt::Display| ServiceError::Raft(e.to_string());
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| raft_error(&e))?
        {
            return Ok(());
        }
        let members: BTreeMap<ReplicaId, Member> = peers
            .iter()
            .map(|(&id, addr)| (id, Member { addr: addr.clone() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(peers = ?peers, "initialized the cluster");
                Ok(())
            }
            // Another start got there first: the log is no longer empty.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(raft_error(&e)),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Waits until this replica's Raft stops (a fatal storage error, a
    /// panic, or a shutdown) and says why. A replica whose Raft stopped
    /// only answers with a frozen state, so `quern coordinator` exits on
    /// it instead of serving on silently.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "its task ended".into();
            }
        }
    }

    pub fn state(&self) -> &StateMachineStore {
        &self.state
    }

    /// This replica's own status report, read as the status page reads
    /// it (a bounded whole-state read, never redirected).
    pub fn local_status(&self) -> LocalStatus {
        self.local_status.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops serving, then stops Raft; each step is bounded.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        let served = self.server.shutdown().await;
        let stopped = tokio::time::timeout(RAFT_SHUTDOWN_TIMEOUT, self.raft.shutdown()).await;
        self.raft_metrics.stop().await;
        self.job_progress.stop().await;
        if let Ok(client) = Arc::try_unwrap(self.client) {
            client.shutdown().await;
        }
        served?;
        match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Raft(e.to_string())),
            Err(_) => Err(ServiceError::Raft(format!(
                "did not stop within {RAFT_SHUTDOWN_TIMEOUT:?}"
            ))),
        }
    }
}

/// What the endpoint's requests are served from.
struct Endpoint {
    api: ClientApi,
    raft_peers: RaftPeers,
}

impl Endpoint {
    /// Serves one request, whichever kind: Raft RPCs from the peers only,
    /// client requests as the certificate's role allows (`authorize`).
    async fn answer(&self, peer: &Peer, request: &[u8]) -> Vec<u8> {
        let reply = match coordinator_api::decode::<Request>(request) {
            Err(e) => Reply::Failed(format!("undecodable request: {e}")),
            Ok(Request::Raft(message)) => self.raft(peer, &message).await,
            Ok(request) => {
                let caller = Caller::Remote(peer.clone());
                self.api.answer(&caller, &request).await
            }
        };
        coordinator_api::encode(&reply).unwrap_or_else(|e| {
            let failed = Reply::Failed(format!("encoding the reply: {e}"));
            coordinator_api::encode(&failed).expect("a plain failure encodes")
        })
    }

    /// A Raft RPC, from a configured peer speaking for itself only, and
    /// naming nothing Raft must not act on.
    async fn raft(&self, peer: &Peer, message: &RaftMessage) -> Reply {
        let rpc = match rpc::from_message::<RaftRpc>(message) {
            Ok(rpc) => rpc,
            Err(e) => return Reply::Failed(format!("undecodable request: {e}")),
        };
        if let Err(refused) = self.raft_peers.admit(peer, &rpc) {
            return Reply::Failed(refused.to_string());
        }
        if let Err(e) = rpc.check() {
            return Reply::Failed(format!("refused a Raft {}: {e}", rpc.kind()));
        }
        match rpc::to_message(&rpc::serve(self.api.raft(), rpc).await) {
            Ok(reply) => Reply::Raft(reply),
            Err(e) => Reply::Failed(format!("encoding the reply: {e}")),
        }
    }
}
