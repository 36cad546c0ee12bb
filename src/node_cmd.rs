//! `quern node`: one node as a long-running process against the
//! coordinators over QUIC. It presents the certificate named `node-ID`
//! (refusing to start under another name), registers with a new
//! incarnation and its certificate's fingerprint, and then loops: a
//! heartbeat (so the leader does not declare it lost between jobs), the
//! jobs it may work on (`Request::Work`), and for the oldest one the
//! ingest pipeline on that job's leased shards into its store until the
//! coordinators commit it (`node::leased_job`, as `quern dev` runs it).
//! On Ctrl-C or SIGTERM it aborts a running job and exits within
//! `SHUTDOWN_BOUND`.
//!
//! `--listen` is the node's data channel for the shuffle: bound at start
//! (its windows sized from `--memory`), registered, and shared by every
//! job; a job whose partition map has other owners dials them from it.
//! It also serves cluster reads from the node's store (`node::reads`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use coordinator_client::CoordinatorClient;
use node::actors::feed::lease::LeaseTarget;
use node::config::{IngestConfig, MemoryPlan};
use node::counters::JobCounters;
use node::input::roots::Roots;
use node::leased_job::{self, DataChannel, JobError, LeasedJob};
use node::memory::ProcessMemory;
use node::reads::{NodeStreams, ReadService};
use node::shuffle::{Inbound, channel_config};
use node::staged_parts;
use node::store::{Access, Store};
use proto_schema::cert_role::node_name;
use proto_schema::coordinator_api::{HeartbeatReply, WorkItem};
use proto_schema::ids::{JobId, NodeId};
use proto_schema::quic::channel::ChannelEndpoint;
use proto_schema::tls::{CertPaths, TlsIdentity};
use tokio::sync::watch;

use crate::args::NodeArgs;

/// From Ctrl-C or SIGTERM to exit: a running job is aborted, the reporter
/// and the pipeline's stages stop; past this the process exits with a
/// failing status naming the bound.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);
/// Between asks for work while idle (shorter if the coordinators' lease
/// time asks for more frequent heartbeats).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// After a job failed, before it is tried again: short, since a job
/// restarted by the coordinators ends every node's part, and its next
/// attempt waits for every owner to start again.
const FAILED_JOB_PAUSE: Duration = Duration::from_secs(2);
/// Heartbeats come three times per lease (two may be lost), within these
/// bounds whatever a skewed clock makes of the leader's deadline.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let id = NodeId(args.id.context("no node id: give --id or [node] id")?);
    let listen = args
        .listen
        .context("no listen address: give --listen or [node] listen")?;
    let data_dir = args
        .data_dir
        .context("no data directory: give --data-dir or [node] data_dir")?;
    ensure!(
        !args.coordinators.is_empty(),
        "no coordinator address: give --coordinator HOST:PORT or [node] coordinators"
    );
    ensure!(
        !args.roots.is_empty(),
        "no roots: give --root DIR (repeatable) or [node] roots; the node reads only under them"
    );
    let name = node_name(id);
    let paths = CertPaths::in_dir(&args.cert_dir, &name);
    let identity = TlsIdentity::load(&paths).with_context(|| {
        format!("loading certificate {name:?} (make one with `quern cert issue --name {name}`)")
    })?;
    let found = identity.name();
    if found.as_deref() != Some(name.as_str()) {
        // The coordinators would refuse its every request as another node's.
        tell!(
            "quern: error: node {id} needs a certificate named {name:?}, but the one in {} is \
             named {found:?} (`quern cert issue --name {name}`)",
            args.cert_dir.display()
        );
        return Ok(ExitCode::from(crate::EXIT_USAGE));
    }
    let (stop, stopping) = watch::channel(None);
    let mut node = Node::start(
        NodeSetup {
            id,
            listen,
            data_dir,
            identity,
            coordinators: args.coordinators,
            memory: args.memory,
            roots: Roots::new(&args.roots).context("resolving the roots")?,
        },
        stopping,
    )?;
    node.runtime
        .spawn(stop_on_signal(format!("node {id}"), stop));
    let result = node.serve();
    node.shut_down();
    result.map(|()| ExitCode::SUCCESS)
}

/// What a node starts from: `quern node`'s arguments, or one of `quern
/// dev --serve`'s nodes.
pub(crate) struct NodeSetup {
    pub id: NodeId,
    /// Its data channel's address.
    pub listen: SocketAddr,
    /// Its store.
    pub data_dir: PathBuf,
    /// Its certificate, named `node-ID`.
    pub identity: TlsIdentity,
    pub coordinators: Vec<String>,
    pub memory: u64,
    pub roots: Roots,
}

/// Heartbeats every `interval` until aborted (failures are the feed's to
/// report: it heartbeats too, with its progress).
async fn keep_alive(
    mut client: CoordinatorClient,
    id: NodeId,
    incarnation: u64,
    interval: Duration,
) {
    loop {
        tokio::time::sleep(interval).await;
        let memory = ProcessMemory::read().map(|m| m.anon);
        if let Err(e) = client.heartbeat(id, incarnation, Vec::new(), memory).await {
            tracing::debug!("node {id}: heartbeat while a job runs: {e}");
        }
    }
}

/// Sets `stop` on Ctrl-C or SIGTERM, then gives the process
/// `SHUTDOWN_BOUND` to exit before ending it with a failing status. `who`
/// names the process in its messages.
pub(crate) async fn stop_on_signal(who: String, stop: watch::Sender<Option<&'static str>>) {
    let signal = match crate::coordinator_cmd::stop_signal().await {
        Ok(signal) => signal,
        Err(e) => {
            tracing::error!("{who}: cannot wait for signals: {e}");
            return;
        }
    };
    tell!("{who}: {signal}, shutting down (within {SHUTDOWN_BOUND:?})");
    let _ = stop.send(Some(signal));
    tokio::time::sleep(SHUTDOWN_BOUND).await;
    tell!("{who}: shutdown did not finish within {SHUTDOWN_BOUND:?}; exiting");
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(1) }
}

/// A running node: its store, data channel and connection.
pub(crate) struct Node {
    id: NodeId,
    /// Its data channel's, as registered.
    address: String,
    channel: Arc<DataChannel>,
    identity: TlsIdentity,
    coordinators: Vec<String>,
    /// For registration, heartbeats and work; each job's feed has its own.
    client: CoordinatorClient,
    incarnation: u64,
    heartbeat: Duration,
    store: Arc<Store>,
    /// The node's settings; each job's dataset fills in the rest.
    ingest: IngestConfig,
    roots: Roots,
    runtime: tokio::runtime::Runtime,
    stopping: watch::Receiver<Option<&'static str>>,
    /// Jobs this node will not run, warned about once: of datasets it
    /// cannot ingest, or that cannot run again (`JobError::CannotRestart`).
    skipped: BTreeSet<JobId>,
    /// Jobs whose part this node staged and the coordinators have not
    /// decided (see `staged_parts`): not run again while they wait.
    /// `None` until the store's staged parts are next looked at.
    staged_parts: Option<BTreeSet<JobId>>,
}

impl Node {
    /// Opens the store, binds the data channel and connects; the node
    /// works once `serve`d, until `stopping` says why it stops.
    pub(crate) fn start(
        setup: NodeSetup,
        stopping: watch::Receiver<Option<&'static str>>,
    ) -> anyhow::Result<Self> {
        let NodeSetup {
            id,
            listen,
            data_dir,
            identity,
            coordinators,
            memory,
            roots,
        } = setup;
        let ingest = IngestConfig {
            data_dir: data_dir.clone(),
            memory_bytes: memory,
            ..IngestConfig::default()
        };
        ingest.validate()?;
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let store = Arc::new(
            Store::open(
                &data_dir,
                MemoryPlan::rocksdb_cache_bytes(memory),
                Access::ReadWrite,
            )
            .with_context(|| format!("opening the store at {}", data_dir.display()))?,
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("quern-node-{id}"))
            .enable_all()
            .build()?;
        runtime.spawn(proto_schema::cert_expiry::publish_expiry(&identity));
        runtime.spawn(node::data_dir_space::publish(data_dir.clone()));
        let (client, channel) = {
            let _entered = runtime.enter();
            let client = CoordinatorClient::quic(&identity, coordinators.clone())?;
            let plan =
                MemoryPlan::shuffling(memory, ingest.threads, ingest.threads, ingest.batch_bytes);
            let inbound = Inbound::new();
            let streams = NodeStreams {
                inbound: inbound.clone(),
                reads: ReadService::new(store.clone()),
            };
            let endpoint =
                ChannelEndpoint::bind(listen, &identity, channel_config(&plan, &ingest), streams)
                    .with_context(|| format!("binding the data channel on {listen}"))?;
            (client, Arc::new(DataChannel { endpoint, inbound }))
        };
        Ok(Node {
            id,
            address: channel.endpoint.local_addr().to_string(),
            channel,
            identity,
            coordinators,
            client,
            incarnation: 0,
            heartbeat: MAX_HEARTBEAT,
            store,
            ingest,
            roots,
            runtime,
            stopping,
            skipped: BTreeSet::new(),
            staged_parts: None,
        })
    }

    /// Stops its runtime (the data channel's driver, its clients).
    pub(crate) fn shut_down(self) {
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }

    /// Registers, then works until stopped.
    pub(crate) fn serve(&mut self) -> anyhow::Result<()> {
        self.register()?;
        tell!(
            "node {} registered (incarnation {}, data channel {}, store {})",
            self.id,
            self.incarnation,
            self.address,
            self.ingest.data_dir.display()
        );
        while self.stopped().is_none() {
            self.beat()?;
            self.settle_staged_parts()?;
            let pause = match self.next_job() {
                Some(item) => self.run_job(item),
                None => IDLE_POLL,
            };
            // The next heartbeat is due within the pause.
            self.pause(pause.min(self.heartbeat));
        }
        Ok(())
    }

    fn register(&mut self) -> anyhow::Result<()> {
        let fingerprint = self.identity.fingerprint().0;
        self.incarnation = self.runtime.block_on(leased_job::register(
            &mut self.client,
            self.id,
            self.address.clone(),
            fingerprint,
        ))?;
        Ok(())
    }

    /// One heartbeat; registers again if the leader no longer knows this
    /// incarnation (it was declared lost).
    fn beat(&mut self) -> anyhow::Result<()> {
        let (id, incarnation) = (self.id, self.incarnation);
        let memory = ProcessMemory::read().map(|m| m.anon);
        match self
            .runtime
            .block_on(self.client.heartbeat(id, incarnation, Vec::new(), memory))
        {
            Ok(HeartbeatReply::Alive { deadline_ms, .. }) => {
                let left = Duration::from_millis(
                    deadline_ms.saturating_sub(leased_job::new_incarnation()),
                );
                self.heartbeat = (left / 3).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
            }
            Ok(HeartbeatReply::Unknown) => {
                tracing::warn!(
                    "node {id}: incarnation {incarnation} is not live; registering again"
                );
                self.register()?;
                tell!(
                    "node {id} registered again (incarnation {})",
                    self.incarnation
                );
            }
            Err(e) => tracing::warn!("node {id}: heartbeat failed: {e}"),
        }
        Ok(())
    }

    /// Settles the parts of jobs this node staged and has not published
    /// (it went down, or the commit wait ran out): publishes those the
    /// coordinators committed, drops those they will not. Looks at the
    /// store at start, after a failed job, and while parts wait.
    fn settle_staged_parts(&mut self) -> anyhow::Result<()> {
        if self.staged_parts.as_ref().is_some_and(BTreeSet::is_empty) {
            return Ok(());
        }
        let id = self.id;
        let settled = self
            .runtime
            .block_on(staged_parts::settle(&mut self.client, &self.store, id))
            .context("settling staged parts")?;
        for job in &settled.published {
            let cluster_job = job
                .cluster
                .map_or_else(|| "?".into(), |part| part.job.to_string());
            tell!(
                "node {id}: published the part of job {cluster_job} it had staged (local job {}): \
                 the coordinators committed the job",
                job.id
            );
        }
        for job in &settled.discarded {
            tell!(
                "node {id}: dropped the part it had staged (local job {}): {}",
                job.id,
                job.state
            );
        }
        self.staged_parts = Some(settled.waiting.into_iter().collect());
        Ok(())
    }

    /// The oldest job this node may work on.
    fn next_job(&mut self) -> Option<WorkItem> {
        let id = self.id;
        match self.runtime.block_on(self.client.work(id)) {
            Ok(items) => {
                let waiting = self.staged_parts.as_ref();
                items.into_iter().find(|item| {
                    !self.skipped.contains(&item.job)
                        && !waiting.is_some_and(|w| w.contains(&item.job))
                })
            }
            Err(e) => {
                tracing::warn!("node {id}: asking for work failed: {e}");
                None
            }
        }
    }

    /// Runs `item` until committed, failed or stopped; the pause before
    /// the next ask for work.
    fn run_job(&mut self, item: WorkItem) -> Duration {
        let id = self.id;
        let ingest = match leased_job::for_dataset(self.ingest.clone(), &item.spec) {
            Ok(ingest) => ingest,
            Err(reason) => {
                tell!("node {id}: skipping job {}: {reason}", item.job);
                self.skipped.insert(item.job);
                return Duration::ZERO;
            }
        };
        let (client, keeper_client) = {
            let _entered = self.runtime.enter();
            let connect = || CoordinatorClient::quic(&self.identity, self.coordinators.clone());
            match connect().and_then(|job| Ok((job, connect()?))) {
                Ok(clients) => clients,
                Err(e) => {
                    tracing::warn!("node {id}: connecting for job {}: {e}", item.job);
                    return FAILED_JOB_PAUSE;
                }
            }
        };
        // Heartbeats while the job starts (dialling a dead peer takes a
        // handshake timeout) and publishes, when its feed does not beat.
        let keeper = self.runtime.spawn(keep_alive(
            keeper_client,
            id,
            self.incarnation,
            self.heartbeat,
        ));
        let job = LeasedJob {
            client,
            target: LeaseTarget {
                node: id,
                incarnation: self.incarnation,
                job: item.job,
            },
            ingest,
            roots: self.roots.clone(),
            heartbeat: self.heartbeat,
            shown_inputs: vec![format!("job {} of the coordinators", item.job)],
            channel: Some(self.channel.clone()),
        };
        tell!(
            "node {id}: job {} of dataset {:?}: started",
            item.job,
            item.spec.name
        );
        let mut stopping = self.stopping.clone();
        let cancel = async move {
            let signal = match stopping.wait_for(Option::is_some).await {
                Ok(signal) => *signal,
                // The sender lives as long as the runtime, which outlives
                // the job.
                Err(_) => std::future::pending().await,
            };
            format!("node {id} {}", signal.unwrap_or("stopped"))
        };
        let counters = Arc::new(JobCounters::default());
        let handle = self.runtime.handle().clone();
        let ran = leased_job::run(job, self.store.clone(), handle, counters, cancel);
        keeper.abort();
        match ran {
            Ok(outcome) => {
                let t = outcome.totals;
                tell!(
                    "node {id}: job {} committed: {} files, {} records read, {} unique, {} \
                     duplicates, {} rejected, in {:.1?}",
                    item.job,
                    t.files,
                    t.read,
                    t.unique,
                    t.duplicates,
                    t.rejected,
                    outcome.elapsed
                );
                // A recovery part's commit is its job's: the part of the
                // job's base attempt left staged here publishes now.
                self.staged_parts = None;
                Duration::ZERO
            }
            Err(e @ JobError::CannotRestart { .. }) => {
                tell!("node {id}: skipping job {}: {e}", item.job);
                self.skipped.insert(item.job);
                Duration::ZERO
            }
            Err(e) => {
                tell!("node {id}: job {}: {e}", item.job);
                // Its part may be left staged.
                self.staged_parts = None;
                FAILED_JOB_PAUSE
            }
        }
    }

    fn stopped(&self) -> Option<&'static str> {
        *self.stopping.borrow()
    }

    /// Sleeps `pause`, or less if stopped meanwhile.
    fn pause(&mut self, pause: Duration) {
        let mut stopping = self.stopping.clone();
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(pause, stopping.wait_for(Option::is_some)).await;
        });
    }
}
