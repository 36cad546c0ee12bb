//! Coordinators inside another process (`quern dev`, tests): the same
//! Raft, stores and `ClientApi` as a `Service`, reached through the
//! in-process `Router` instead of QUIC, so their clients run the code a
//! cluster's clients run. `quern dev` runs one member; the fault harness
//! runs three, with its own clock for the lease desk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator_client::CoordinatorClient;

use crate::client_api::ClientApi;
use crate::clock::{self, Clock};
use crate::contacts::Contacts;
use crate::router::Router;
use crate::service::{RAFT_SHUTDOWN_TIMEOUT, ServiceError};
use crate::{LogStore, Member, Raft, ReplicaId, StateMachineStore};

/// The address of the only replica of a one-member group on the router.
const ADDRESS: &str = "embedded-coordinator";
/// How long `start` waits for a replica to lead.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Most replicas one process runs.
pub const MAX_EMBEDDED_REPLICAS: u64 = 7;

/// What to start.
pub struct EmbeddedOptions {
    /// Raft members (1 to `MAX_EMBEDDED_REPLICAS`).
    pub replicas: u64,
    /// How long a lease (and a node's liveness) lasts without a heartbeat.
    pub lease_ms: u64,
    /// What every replica's lease desk reads the time from.
    pub clock: Clock,
}

impl EmbeddedOptions {
    /// One member on the system clock, as `quern dev` runs it.
    pub fn single(lease_ms: u64) -> Self {
        Self {
            replicas: 1,
            lease_ms,
            clock: clock::system(),
        }
    }
}

pub struct EmbeddedCoordinator {
    rafts: Vec<Raft>,
    router: Router,
    addresses: Vec<String>,
}

impl EmbeddedCoordinator {
    /// One member: `start_with(dir, EmbeddedOptions::single(lease_ms))`.
    pub async fn start(dir: &Path, lease_ms: u64) -> Result<Self, ServiceError> {
        Self::start_with(dir, EmbeddedOptions::single(lease_ms)).await
    }

    /// Opens (or creates) each replica's stores (`log/` and `state/`,
    /// under `dir` for one member, under `dir/replica-ID` for more),
    /// starts the group and waits until a replica leads. Must be called
    /// inside a tokio runtime that outlives it.
    pub async fn start_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, ServiceError> {
        let raft_error = |e: &dyn std::fmt::Display| ServiceError::Raft(e.to_string());
        if !(1..=MAX_EMBEDDED_REPLICAS).contains(&options.replicas) {
            return Err(raft_error(&format!(
                "{} replicas: from 1 to {MAX_EMBEDDED_REPLICAS}",
                options.replicas
            )));
        }
        let config = if options.replicas == 1 {
            crate::config::raft_config()
        } else {
            crate::config::raft_config_in_process()
        };
        let config = Arc::new(config.map_err(|e| raft_error(&e))?);
        let router = Router::default();
        let mut members = BTreeMap::new();
        let mut rafts = Vec::new();
        for id in 1..=options.replicas {
            let (address, replica_dir) = if options.replicas == 1 {
                (ADDRESS.to_owned(), dir.to_path_buf())
            } else {
                (format!("embedded-coordinator-{id}"), replica_dir(dir, id))
            };
            let log_dir = replica_dir.join("log");
            let log = LogStore::open(&log_dir).map_err(|error| ServiceError::Log {
                dir: log_dir,
                error,
            })?;
            let state_dir = replica_dir.join("state");
            let state =
                StateMachineStore::open(&state_dir).map_err(|error| ServiceError::State {
                    dir: state_dir,
                    error,
                })?;
            let network = router.for_replica(id);
            let raft = Raft::new(id, config.clone(), network, log, state.clone())
                .await
                .map_err(|e| raft_error(&e))?;
            let api = ClientApi::with_clock(
                raft.clone(),
                state,
                options.lease_ms,
                options.clock.clone(),
                Contacts::default(),
            );
            router.add(id, address.clone(), api);
            members.insert(id, Member { addr: address });
            rafts.push(raft);
        }
        if !rafts[0]
            .is_initialized()
            .await
            .map_err(|e| raft_error(&e))?
        {
            let addresses = members.clone();
            rafts[0]
                .initialize(addresses)
                .await
                .map_err(|e| raft_error(&e))?;
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let leads = |raft: &Raft| {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            metrics.current_leader == Some(metrics.id)
        };
        while !rafts.iter().any(leads) {
            if Instant::now() >= deadline {
                return Err(ServiceError::Raft(format!(
                    "no embedded coordinator became leader within {LEADER_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addresses = members.into_values().map(|m| m.addr).collect();
        Ok(Self {
            rafts,
            router,
            addresses,
        })
    }

    /// A client of these coordinators, as nodes and submitters use it.
    pub fn client(&self) -> CoordinatorClient<Router> {
        CoordinatorClient::new(self.router.clone(), self.addresses.clone())
    }

    /// The in-process network the replicas are on: a client over another
    /// transport (a faulty one, in tests) wraps it.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The replicas' addresses on the router, in id order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Stops every replica's Raft, each within `RAFT_SHUTDOWN_TIMEOUT`.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        for id in 1..=self.rafts.len() as ReplicaId {
            self.router.remove(id);
        }
        let mut result = Ok(());
        for (raft, id) in self.rafts.into_iter().zip(1..) {
            let stopped = match tokio::time::timeout(RAFT_SHUTDOWN_TIMEOUT, raft.shutdown()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServiceError::Raft(e.to_string())),
                Err(_) => Err(ServiceError::Raft(format!(
                    "Raft of replica {id} did not stop within {RAFT_SHUTDOWN_TIMEOUT:?}"
                ))),
            };
            result = result.and(stopped);
        }
        result
    }
}

/// Replica `id`'s directory in a group of more than one.
fn replica_dir(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{id}"))
}
