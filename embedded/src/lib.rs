//! A Quern cluster in one process: what `quern dev` runs, and what tests
//! use to drive a job through the cluster code end to end.
//!
//! One tokio runtime holds a one-member Raft coordinator
//! (`coordinator::embedded`, on the in-process router). The inputs are
//! walked into a manifest in path order and submitted with the client's
//! submission protocol, as `quern submit` does; then each node registers,
//! takes leases of the job's shards (`node::actors::feed::lease`), runs
//! the ingest pipeline on them, stages, and publishes once the coordinator
//! has committed the job (`node::leased_job`, as `quern node` does). Nothing here is a shortcut of the cluster's
//! paths: the node talks to the coordinator through `coordinator-client`.
//!
//! Layout under the data directory: `coordinator/` (the Raft log and
//! state) and `node-N/` (node N's store).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coordinator::embedded::EmbeddedCoordinator;
use coordinator::service::ServiceError;
use coordinator_client::CoordinatorClient;
use coordinator_client::inventory::{self, InventoryError};
use coordinator_client::path_order::SortMemory;
use coordinator_client::submission::{self, SubmitError, SubmitEvent, SubmitOptions, Summary};
use node::actors::feed::lease::LeaseTarget;
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::ingest::{IngestError, IngestOutcome};
use node::input::roots::Roots;
use node::leased_job::{self, LeasedJob, RegisterError};
use node::store::{Access, Store, StoreError};
use proto_schema::ids::NodeId;

/// How long a lease (and a node's liveness) lasts without a heartbeat.
pub const DEV_LEASE_MS: u64 = 30_000;
/// Most nodes one process runs.
pub const MAX_DEV_NODES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Usage(String),
    #[error("could not start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the embedded coordinator: {0}")]
    Coordinator(#[from] ServiceError),
    #[error("listing the input: {0}")]
    Inventory(#[from] InventoryError),
    #[error("submitting the input: {0}")]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("opening the store at {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// What to run.
pub struct DevConfig {
    /// Nodes in the process.
    pub nodes: usize,
    /// Holds `coordinator/` and `node-N/`.
    pub data_dir: PathBuf,
    /// Each node's job settings (`memory_bytes` is per node; `data_dir`
    /// is replaced by the node's own).
    pub ingest: IngestConfig,
    /// Files and directories, walked in path order.
    pub inputs: Vec<PathBuf>,
    pub lease_ms: u64,
}

/// How a committed job went.
pub struct DevOutcome {
    pub submission: Summary,
    /// Node 1's job.
    pub outcome: IngestOutcome,
    /// Node 1's store.
    pub store: Arc<Store>,
}

/// Node `n`'s store directory under the data directory.
pub fn node_dir(data_dir: &Path, n: NodeId) -> PathBuf {
    data_dir.join(format!("node-{n}"))
}

/// The stores `quern dev` left under `data_dir`, in node order (empty if
/// it is not a `quern dev` data directory).
pub fn node_dirs(data_dir: &Path) -> Vec<PathBuf> {
    (1..=MAX_DEV_NODES as u64)
        .map(|n| node_dir(data_dir, NodeId(n)))
        .take_while(|dir| dir.is_dir())
        .collect()
}

/// Runs one job through the cluster code: starts the coordinator,
/// submits the inputs (`on_submitted` sees the submission's summary),
/// runs the nodes until the job is committed and published, and stops the
/// coordinator. `counters` follow the job for a progress display; if
/// `cancel` completes first, the job is aborted with its output as reason.
/// Call from a thread outside any async runtime.
pub fn run(
    config: DevConfig,
    counters: Arc<JobCounters>,
    cancel: impl Future<Output = String>,
    on_submitted: impl FnOnce(&Summary),
) -> Result<DevOutcome, DevError> {
    if config.nodes != 1 {
        return Err(DevError::Usage(format!(
            "--nodes {}: this build runs one node per process so far",
            config.nodes
        )));
    }
    if let Some(stdin) = config.inputs.iter().find(|p| p.as_os_str() == "-") {
        return Err(DevError::Usage(format!(
            "{}: standard input cannot be leased to a node; name files or directories",
            stdin.display()
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("quern-dev")
        .enable_all()
        .build()
        .map_err(DevError::Runtime)?;
    let coordinator = runtime.block_on(EmbeddedCoordinator::start(
        &config.data_dir.join("coordinator"),
        config.lease_ms,
    ))?;
    let outcome = run_job(
        &config,
        &coordinator,
        runtime.handle(),
        counters,
        cancel,
        on_submitted,
    );
    let stopped = runtime.block_on(coordinator.shutdown());
    runtime.shutdown_timeout(Duration::from_secs(5));
    let outcome = outcome?;
    stopped?;
    Ok(outcome)
}

fn run_job(
    config: &DevConfig,
    coordinator: &EmbeddedCoordinator,
    runtime: &tokio::runtime::Handle,
    counters: Arc<JobCounters>,
    cancel: impl Future<Output = String>,
    on_submitted: impl FnOnce(&Summary),
) -> Result<DevOutcome, DevError> {
    let node = NodeId(1);
    let incarnation = runtime.block_on(leased_job::register(
        &mut coordinator.client(),
        node,
        "in-process".into(),
        [0; 32],
    ))?;
    let submitted = runtime.block_on(submit(coordinator.client(), config))?;
    on_submitted(&submitted);

    let dir = node_dir(&config.data_dir, node);
    let store = Store::open(
        &dir,
        MemoryPlan::rocksdb_cache_bytes(config.ingest.memory_bytes),
        Access::ReadWrite,
    )
    .map_err(|source| DevError::Store {
        path: dir.clone(),
        source,
    })?;
    let store = Arc::new(store);
    let job = LeasedJob {
        client: coordinator.client(),
        target: LeaseTarget {
            node,
            incarnation,
            job: submitted.submission,
        },
        ingest: IngestConfig {
            data_dir: dir,
            ..config.ingest.clone()
        },
        // The node reads only under the PATHs it was given.
        roots: Roots::new(&config.inputs).map_err(|e| DevError::Usage(e.to_string()))?,
        heartbeat: Duration::from_millis(config.lease_ms / 3),
        shown_inputs: config
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    };
    let outcome = leased_job::run(job, store.clone(), runtime.clone(), counters, cancel)?;
    Ok(DevOutcome {
        submission: submitted,
        outcome,
        store,
    })
}

/// Creates the dataset if needed and submits the inputs' files.
async fn submit(
    mut client: CoordinatorClient<coordinator::router::Router>,
    config: &DevConfig,
) -> Result<Summary, DevError> {
    submission::ensure_dataset(&mut client, leased_job::spec_of(&config.ingest)).await?;
    let memory = SortMemory {
        run_bytes: (config.ingest.memory_bytes / 4) as usize,
        temp_dir: config.data_dir.clone(),
    };
    let inputs = config.inputs.clone();
    let inventory = tokio::task::spawn_blocking(move || inventory::read_walks(&inputs, &memory))
        .await
        .map_err(|e| DevError::Usage(format!("listing the input: {e}")))??;
    let summary = submission::submit(
        &mut client,
        &config.ingest.dataset,
        inventory,
        &SubmitOptions::default(),
        |_: SubmitEvent| {},
    )
    .await?;
    Ok(summary)
}
