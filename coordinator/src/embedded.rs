//! A one-member coordinator inside another process (`quern dev`, tests):
//! the same Raft, stores and `ClientApi` as a `Service`, reached through
//! the in-process `Router` instead of QUIC, so its clients run the code a
//! cluster's clients run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator_client::CoordinatorClient;

use crate::client_api::ClientApi;
use crate::contacts::Contacts;
use crate::router::Router;
use crate::service::{RAFT_SHUTDOWN_TIMEOUT, ServiceError};
use crate::{LogStore, Member, Raft, ReplicaId, StateMachineStore};

/// The replica's id and its address on the router.
const ID: ReplicaId = 1;
const ADDRESS: &str = "embedded-coordinator";
/// How long `start` waits for the replica to lead.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

pub struct EmbeddedCoordinator {
    raft: Raft,
    router: Router,
}

impl EmbeddedCoordinator {
    /// Opens (or creates) the replica's stores under `dir` (`log/`,
    /// `state/`), starts it as the only member and waits until it leads.
    /// Must be called inside a tokio runtime that outlives it.
    pub async fn start(dir: &Path, lease_ms: u64) -> Result<Self, ServiceError> {
        let log_dir = dir.join("log");
        let log = LogStore::open(&log_dir).map_err(|error| ServiceError::Log {
            dir: log_dir,
            error,
        })?;
        let state_dir = dir.join("state");
        let state = StateMachineStore::open(&state_dir).map_err(|error| ServiceError::State {
            dir: state_dir,
            error,
        })?;
        let raft_error = |e: &dyn std::fmt::Display| ServiceError::Raft(e.to_string());
        let config = crate::config::raft_config().map_err(|e| raft_error(&e))?;
        let router = Router::default();
        let raft = Raft::new(ID, Arc::new(config), router.clone(), log, state.clone())
            .await
            .map_err(|e| raft_error(&e))?;
        let api = ClientApi::new(raft.clone(), state, lease_ms, Contacts::default());
        router.add(ID, ADDRESS, api);
        if !raft.is_initialized().await.map_err(|e| raft_error(&e))? {
            let members = BTreeMap::from([(
                ID,
                Member {
                    addr: ADDRESS.into(),
                },
            )]);
            raft.initialize(members).await.map_err(|e| raft_error(&e))?;
        }
        let deadline = Instant::now() + LEADER_WAIT;
        while raft.metrics().borrow().current_leader != Some(ID) {
            if Instant::now() >= deadline {
                return Err(ServiceError::Raft(format!(
                    "the embedded coordinator did not become leader within {LEADER_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self { raft, router })
    }

    /// A client of this coordinator, as nodes and submitters use it.
    pub fn client(&self) -> CoordinatorClient<Router> {
        CoordinatorClient::new(self.router.clone(), vec![ADDRESS.into()])
    }

    /// Stops Raft within `RAFT_SHUTDOWN_TIMEOUT`.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        self.router.remove(ID);
        match tokio::time::timeout(RAFT_SHUTDOWN_TIMEOUT, self.raft.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServiceError::Raft(e.to_string())),
            Err(_) => Err(ServiceError::Raft(format!(
                "Raft did not stop within {RAFT_SHUTDOWN_TIMEOUT:?}"
            ))),
        }
    }
}
