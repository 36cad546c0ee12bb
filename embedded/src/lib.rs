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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coordinator::embedded::EmbeddedCoordinator;
use coordinator::router::Router;
use coordinator::service::ServiceError;
use coordinator_client::CoordinatorClient;
use coordinator_client::inventory::{self, InventoryError};
use coordinator_client::path_order::SortMemory;
use coordinator_client::submission::{self, SubmitError, SubmitEvent, SubmitOptions, Summary};
use node::actors::feed::lease::LeaseTarget;
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::ingest::IngestOutcome;
use node::input::roots::Roots;
use node::leased_job::{self, DataChannel, JobError, LeasedJob, RegisterError};
use node::shuffle::inbound::node_certificate_name;
use node::shuffle::{Inbound, channel_config};
use node::staged_parts;
use node::store::catalog::JobTotals;
use node::store::{Access, Store, StoreError};
use proto_schema::ca::ClusterCa;
use proto_schema::ids::NodeId;
use proto_schema::quic::channel::ChannelEndpoint;
use proto_schema::tls::TlsIdentity;
use tokio::sync::watch;

/// How long a lease (and a node's liveness) lasts without a heartbeat.
pub const DEV_LEASE_MS: u64 = 30_000;
/// Most nodes one process runs.
pub const MAX_DEV_NODES: usize = 64;
/// How often the nodes' counters are summed for the progress display.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

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
    Job(#[from] JobError),
    #[error("setting up the nodes' data channels: {0}")]
    DataChannel(String),
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
    /// Each node's part, in node order.
    pub nodes: Vec<NodeRun>,
}

/// One node's part of the job.
pub struct NodeRun {
    pub node: NodeId,
    pub outcome: IngestOutcome,
    pub store: Arc<Store>,
}

impl DevOutcome {
    /// The nodes' parts as one job: totals summed, the longest time, the
    /// highest memory peaks (the nodes share the process), node 1's ids.
    pub fn combined(&self) -> IngestOutcome {
        let first = &self.nodes[0].outcome;
        let mut totals = JobTotals::default();
        let mut memory = first.memory.clone();
        let (mut elapsed, mut hung_stages) = (Duration::ZERO, Vec::new());
        for run in &self.nodes {
            let (t, o) = (&mut totals, &run.outcome);
            t.files += o.totals.files;
            t.problem_files += o.totals.problem_files;
            t.bytes += o.totals.bytes;
            t.read += o.totals.read;
            t.unique += o.totals.unique;
            t.duplicates += o.totals.duplicates;
            t.rejected += o.totals.rejected;
            elapsed = elapsed.max(o.elapsed);
            if o.memory.anon > memory.anon {
                memory = o.memory.clone();
            }
            hung_stages.extend(
                o.hung_stages
                    .iter()
                    .map(|stage| format!("node {}: {stage}", run.node)),
            );
        }
        IngestOutcome {
            dataset: first.dataset.clone(),
            job: first.job.clone(),
            totals,
            elapsed,
            hung_stages,
            memory,
        }
    }
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
    if config.nodes == 0 || config.nodes > MAX_DEV_NODES {
        return Err(DevError::Usage(format!(
            "--nodes {}: from 1 to {MAX_DEV_NODES} nodes",
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
    let nodes: Vec<NodeId> = (1..=config.nodes as u64).map(NodeId).collect();
    // One node owns every partition: it needs no data channel.
    let channels = if nodes.len() > 1 {
        data_channels(&config.ingest, &nodes, runtime)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    let mut incarnations = Vec::new();
    for (&node, channel) in nodes.iter().zip(&channels) {
        let address = channel
            .as_ref()
            .map_or("in-process".into(), |c| c.endpoint.local_addr().to_string());
        incarnations.push(runtime.block_on(leased_job::register(
            &mut coordinator.client(),
            node,
            address,
            [0; 32],
        ))?);
    }
    let submitted = runtime.block_on(submit(coordinator.client(), config))?;
    on_submitted(&submitted);

    // The node reads only under the PATHs it was given.
    let roots = Roots::new(&config.inputs).map_err(|e| DevError::Usage(e.to_string()))?;
    let mut parts = Vec::new();
    for ((&node, incarnation), channel) in nodes.iter().zip(incarnations).zip(channels) {
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
        // A part an earlier run staged: published if its job committed.
        let settled = runtime
            .block_on(staged_parts::settle(
                &mut coordinator.client(),
                &store,
                node,
            ))
            .map_err(|source| DevError::Store {
                path: dir.clone(),
                source,
            })?;
        if !settled.published.is_empty() || !settled.discarded.is_empty() {
            tracing::warn!(
                %node,
                published = settled.published.len(),
                discarded = settled.discarded.len(),
                "settled parts an earlier run left staged"
            );
        }
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
            roots: roots.clone(),
            heartbeat: Duration::from_millis(config.lease_ms / 3),
            shown_inputs: config
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            channel,
        };
        parts.push((job, Arc::new(store), Arc::new(JobCounters::default())));
    }
    let runs = run_nodes(parts, runtime, &counters, cancel)?;
    Ok(DevOutcome {
        submission: submitted,
        nodes: runs,
    })
}

/// Each node's data channel on loopback, with a certificate `node-N` from
/// a CA made for this process, its windows sized from `ingest`'s memory.
pub fn data_channels(
    ingest: &IngestConfig,
    nodes: &[NodeId],
    runtime: &tokio::runtime::Handle,
) -> Result<Vec<Arc<DataChannel>>, DevError> {
    let setup = |e: String| DevError::DataChannel(e);
    let ca = ClusterCa::generate(1).map_err(|e| setup(e.to_string()))?;
    let plan = MemoryPlan::shuffling(
        ingest.memory_bytes,
        ingest.threads,
        ingest.threads,
        ingest.batch_bytes,
    );
    let channel = channel_config(&plan, ingest);
    let _entered = runtime.enter();
    nodes
        .iter()
        .map(|&node| {
            let name = node_certificate_name(node);
            let issued = ca
                .issue(&name, &["127.0.0.1".into()], 1)
                .map_err(|e| setup(e.to_string()))?;
            let identity = TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
                .map_err(|e| setup(e.to_string()))?;
            let inbound = Inbound::new();
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let endpoint =
                ChannelEndpoint::bind(loopback, &identity, channel.clone(), inbound.clone())
                    .map_err(|e| setup(format!("node {node}: {e}")))?;
            Ok(Arc::new(DataChannel { endpoint, inbound }))
        })
        .collect()
}

/// Runs every node's part at once, each on its own thread, showing their
/// counters summed in `counters`; a node that fails (or `cancel`) stops
/// the others. The first failure is the error.
fn run_nodes(
    parts: Vec<(LeasedJob<Router>, Arc<Store>, Arc<JobCounters>)>,
    runtime: &tokio::runtime::Handle,
    counters: &JobCounters,
    cancel: impl Future<Output = String>,
) -> Result<Vec<NodeRun>, DevError> {
    let (stop, stopping) = watch::channel(None::<String>);
    let node_counters: Vec<Arc<JobCounters>> = parts.iter().map(|p| p.2.clone()).collect();
    let (ended, endings) = std::sync::mpsc::channel();
    let results = std::thread::scope(|scope| {
        let running: Vec<_> = parts
            .into_iter()
            .map(|(job, store, part_counters)| {
                let node = job.target.node;
                let (runtime, ended) = (runtime.clone(), ended.clone());
                let mut stopping = stopping.clone();
                let cancel = async move {
                    let reason = match stopping.wait_for(Option::is_some).await {
                        Ok(reason) => reason.clone(),
                        Err(_) => None,
                    };
                    match reason {
                        Some(reason) => reason,
                        None => std::future::pending().await,
                    }
                };
                scope.spawn(move || {
                    let result =
                        leased_job::run(job, store.clone(), runtime, part_counters, cancel);
                    let failure = result.as_ref().err().map(|e| format!("node {node}: {e}"));
                    let _ = ended.send(failure);
                    result.map(|outcome| NodeRun {
                        node,
                        outcome,
                        store,
                    })
                })
            })
            .collect();
        drop(ended);
        runtime.block_on(async {
            let mut cancel = std::pin::pin!(cancel);
            let mut left = running.len();
            while left > 0 {
                tokio::select! {
                    reason = &mut cancel => {
                        let _ = stop.send(Some(reason));
                        break;
                    }
                    () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
                }
                counters.set_to_sum(&node_counters);
                while let Ok(failure) = endings.try_recv() {
                    left -= 1;
                    if let Some(failure) = failure {
                        let _ = stop.send(Some(failure));
                    }
                }
            }
        });
        running
            .into_iter()
            .map(|thread| thread.join().expect("a node's thread does not panic"))
            .collect::<Vec<_>>()
    });
    counters.set_to_sum(&node_counters);
    let mut runs = Vec::new();
    for result in results {
        runs.push(result?);
    }
    Ok(runs)
}

/// Creates the dataset if needed and submits the inputs' files.
async fn submit(
    mut client: CoordinatorClient<coordinator::router::Router>,
    config: &DevConfig,
) -> Result<Summary, DevError> {
    submission::ensure_dataset(&mut client, leased_job::spec_of(&config.ingest)).await?;
    let memory = SortMemory {
        bytes: (config.ingest.memory_bytes / 4) as usize,
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
