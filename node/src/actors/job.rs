//! The job actor: supervisor of one ingest job.
//!
//! It spawns the lanes and scanners, feeds scanners bundles of shards from
//! the manifest walker (a blocking thread that waits for an idle scanner
//! before listing further, so the manifest is never held whole), sends
//! end-of-stream down the pipeline in order, and publishes the job when
//! every lane has written.
//!
//! Any stage failure, or an abort, ends the job: its reason names the stage
//! and the cause; every edge is closed so no stage waits on a dead one; the
//! stages are stopped within the shutdown timeout, and any that will not
//! stop are named.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::commit::{Commit, CommitArgs};
use super::dedup::{Dedup, DedupArgs};
use super::messages::{JobMsg, LaneOutput, ScanMsg, SortMergeMsg};
use super::scan::{Scan, ScanArgs};
use super::sort_merge::{SortMerge, SortMergeArgs};
use super::{JobContext, blocking};
use crate::counters::JobCounters;
use crate::edge::{Edge, EdgeClosed, EdgeCloser};
use crate::input::listing::{Excluded, Listed, Walk};
use crate::input::shard::{InputFile, Shard, plan_shards};
use crate::memory::Account;
use crate::memory::monitor::SAMPLE_INTERVAL;
use crate::quarantine::FileProblem;
use crate::store::catalog::JobTotals;

/// The job's end: its totals once published, or why it failed.
pub type JobResult = Result<JobTotals, String>;

pub struct JobArgs {
    pub ctx: Arc<JobContext>,
    pub inputs: Vec<PathBuf>,
    pub reply: oneshot::Sender<JobResult>,
}

/// How long a consequential failure waits for the failure that caused it.
const CAUSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Messages a data edge may hold besides its byte bound.
const EDGE_MESSAGES: usize = 64;
/// The manifest walker's name, in errors and memory accounts.
const WALKER: &str = "manifest walker";
/// Files registered in the ledger per write while walking.
const FILES_PER_WRITE: usize = 1024;
/// A scanner is handed shards in bundles of up to this many shards or
/// [`BUNDLE_BYTES`] of listed file bytes, whichever comes first: handing
/// over each small file on its own cost a message, a wake-up of the walker
/// and of a scanner, and a partly filled batch per lane, per file.
const BUNDLE_SHARDS: usize = 256;
/// See [`BUNDLE_SHARDS`]. Small enough that scanners finish together at
/// the end of a job.
const BUNDLE_BYTES: u64 = 4 << 20;

struct Stage {
    name: String,
    cell: ActorCell,
    handle: JoinHandle<()>,
}

pub struct JobState {
    account: Account,
    ctx: Arc<JobContext>,
    inputs: Vec<PathBuf>,
    stages: Vec<Stage>,
    names: HashMap<ActorId, String>,
    edges: Vec<EdgeCloser>,
    scanners: Vec<ActorRef<ScanMsg>>,
    /// Scanners without a shard. The walker sends a shard only after taking
    /// a `demand` permit, one per idle scanner, so a shard always finds one.
    idle: Vec<usize>,
    sorters: Vec<ActorRef<SortMergeMsg>>,
    /// Permits = idle scanners not yet promised a shard; the walker takes
    /// one before each shard it lists.
    demand: Arc<Semaphore>,
    walker: Option<JoinHandle<()>>,
    manifest_done: bool,
    scanners_finishing: bool,
    scanners_finished: usize,
    lanes: Vec<Option<LaneOutput>>,
    /// Present while the job is live; taken when it ends either way.
    reply: Option<oneshot::Sender<JobResult>>,
    /// The first failure that was only a consequence of another stage
    /// stopping (it found its edge closed).
    consequence: Option<String>,
}

pub struct JobActor;

impl JobState {
    async fn spawn<A: Actor>(
        &mut self,
        myself: &ActorRef<JobMsg>,
        name: String,
        actor: A,
        args: A::Arguments,
    ) -> Result<ActorRef<A::Msg>, ActorProcessingErr> {
        let (actor, handle) = Actor::spawn_linked(None, actor, args, myself.get_cell()).await?;
        self.names.insert(actor.get_id(), name.clone());
        self.stages.push(Stage {
            name,
            cell: actor.get_cell(),
            handle,
        });
        Ok(actor)
    }

    fn edge<M: ractor::Message>(&mut self, name: String, target: ActorRef<M>) -> Edge<M> {
        let edge = Edge::new(name, target, self.ctx.plan.edge_capacity, EDGE_MESSAGES);
        self.edges.push(edge.closer());
        edge
    }

    /// Ends the job with `reason`, unless it already ended.
    fn fail(&mut self, myself: &ActorRef<JobMsg>, reason: String) {
        if let Some(reply) = self.reply.take() {
            tracing::error!("ingest job failed: {reason}");
            self.close_edges();
            let _ = reply.send(Err(reason.clone()));
        }
        myself.stop(Some(reason));
    }

    fn close_edges(&self) {
        self.demand.close();
        for edge in &self.edges {
            edge.close();
        }
    }

    fn dispatch(&mut self, shards: Vec<Shard>) -> Result<(), ActorProcessingErr> {
        let scanner = self
            .idle
            .pop()
            .ok_or("shards arrived with no idle scanner: demand accounting is broken")?;
        self.scanners[scanner].cast(ScanMsg::Scan(shards))?;
        Ok(())
    }

    /// Once the manifest is done and every scanner idle, tells scanners to
    /// finish.
    fn maybe_finish_scanning(&mut self) -> Result<(), ActorProcessingErr> {
        let all_idle = self.idle.len() == self.scanners.len();
        if self.manifest_done && all_idle && !self.scanners_finishing {
            self.scanners_finishing = true;
            for scanner in &self.scanners {
                scanner.cast(ScanMsg::Finish)?;
            }
        }
        Ok(())
    }

    /// Checks the counters and publishes every lane's files atomically.
    fn publish(&mut self) -> Result<JobTotals, String> {
        let ctx = &self.ctx;
        let c = &ctx.counters;
        let outputs: Vec<LaneOutput> = self.lanes.iter_mut().filter_map(Option::take).collect();
        let keys: u64 = outputs.iter().map(|o| o.keys).sum();
        let totals = JobTotals {
            files: JobCounters::get(&c.files_listed),
            problem_files: ctx
                .store
                .problem_file_count(ctx.dataset.id, ctx.job.id)
                .map_err(|e| e.to_string())?,
            bytes: JobCounters::get(&c.bytes_listed),
            read: JobCounters::get(&c.read),
            unique: JobCounters::get(&c.unique),
            duplicates: JobCounters::get(&c.duplicates),
            rejected: JobCounters::get(&c.rejected),
        };
        if !totals.reconciles() || keys != totals.unique {
            return Err(format!(
                "counters do not reconcile: read {} != unique {} + duplicates {} + rejected {}, \
                 or {keys} keys written != {} unique",
                totals.read, totals.unique, totals.duplicates, totals.rejected, totals.unique
            ));
        }
        let files = outputs.into_iter().flat_map(|o| o.files).collect();
        blocking(|| {
            ctx.store
                .publish_job(&ctx.job, files, &totals, &ctx.scratch)
        })
        .map_err(|e| e.to_string())?;
        Ok(totals)
    }
}

impl Actor for JobActor {
    type Msg = JobMsg;
    type State = JobState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobState, ActorProcessingErr> {
        let ctx = args.ctx;
        let threads = ctx.config.threads;
        let mut state = JobState {
            account: Account::named("job"),
            inputs: args.inputs,
            stages: Vec::new(),
            names: HashMap::new(),
            edges: Vec::new(),
            scanners: Vec::new(),
            idle: (0..threads).rev().collect(),
            sorters: Vec::new(),
            demand: Arc::new(Semaphore::new(threads)),
            walker: None,
            manifest_done: false,
            scanners_finishing: false,
            scanners_finished: 0,
            lanes: (0..ctx.lanes.lanes).map(|_| None).collect(),
            reply: Some(args.reply),
            consequence: None,
            ctx: ctx.clone(),
        };
        let mut to_sorters = Vec::new();
        for lane in 0..ctx.lanes.lanes {
            let name = format!("commit[{lane}]");
            let commit_args = CommitArgs {
                ctx: ctx.clone(),
                lane,
                job: myself.clone(),
                account: Account::named(&name),
            };
            let commit = state.spawn(&myself, name, Commit, commit_args).await?;
            let commit = state.edge(format!("dedup[{lane}]->commit[{lane}]"), commit);
            let name = format!("dedup[{lane}]");
            let dedup_args = DedupArgs {
                ctx: ctx.clone(),
                commit,
                account: Account::named(&name),
            };
            let dedup = state.spawn(&myself, name, Dedup, dedup_args).await?;
            let dedup = state.edge(format!("sort-merge[{lane}]->dedup[{lane}]"), dedup);
            let name = format!("sort-merge[{lane}]");
            let sort_args = SortMergeArgs {
                ctx: ctx.clone(),
                lane,
                dedup,
                account: Account::named(&name),
            };
            let sorter = state.spawn(&myself, name, SortMerge, sort_args).await?;
            state.sorters.push(sorter.clone());
            to_sorters.push(state.edge(format!("scan->sort-merge[{lane}]"), sorter));
        }
        for index in 0..threads {
            let name = format!("scan[{index}]");
            let scan_args = ScanArgs {
                ctx: ctx.clone(),
                index,
                lanes: to_sorters.clone(),
                job: myself.clone(),
                account: Account::named(&name),
            };
            let scanner = state.spawn(&myself, name, Scan, scan_args).await?;
            state.scanners.push(scanner);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        let (ctx, demand) = (state.ctx.clone(), state.demand.clone());
        let inputs = std::mem::take(&mut state.inputs);
        let runtime = tokio::runtime::Handle::current();
        state.walker = Some(tokio::task::spawn_blocking(move || {
            let result = Account::named(WALKER)
                .enter(|| walk_manifest(&ctx, &inputs, &myself, &demand, &runtime));
            let _ = myself.cast(JobMsg::ManifestDone(result));
        }));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        let account = state.account;
        account
            .attribute(async move {
                if state.reply.is_none() {
                    return Ok(()); // The job has ended; late messages change nothing.
                }
                match msg {
                    JobMsg::ShardsAvailable(shards) => state.dispatch(shards)?,
                    JobMsg::ShardDone { scanner } => {
                        state.idle.push(scanner);
                        state.demand.add_permits(1);
                        state.maybe_finish_scanning()?;
                    }
                    JobMsg::ManifestDone(Ok(())) => {
                        state.manifest_done = true;
                        state.maybe_finish_scanning()?;
                    }
                    JobMsg::ManifestDone(Err(reason)) => {
                        state.fail(&myself, format!("listing the input failed: {reason}"))
                    }
                    JobMsg::ScannerFinished { .. } => {
                        state.scanners_finished += 1;
                        if state.scanners_finished == state.scanners.len() {
                            for sorter in &state.sorters {
                                sorter.cast(SortMergeMsg::Finish)?;
                            }
                        }
                    }
                    JobMsg::LaneWritten { lane, output } => {
                        state.lanes[lane] = Some(output);
                        if state.lanes.iter().all(Option::is_some) {
                            match state.publish() {
                                Ok(totals) => {
                                    if let Some(reply) = state.reply.take() {
                                        let _ = reply.send(Ok(totals));
                                    }
                                    myself.stop(None);
                                }
                                Err(reason) => state.fail(&myself, reason),
                            }
                        }
                    }
                    JobMsg::Abort(reason) => state.fail(&myself, reason),
                    JobMsg::SettleConsequence => {
                        if let Some(reason) = state.consequence.take() {
                            state.fail(&myself, reason);
                        }
                    }
                }
                Ok::<(), ActorProcessingErr>(())
            })
            .await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<JobMsg>,
        event: SupervisionEvent,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        let name = |cell: &ActorCell| {
            state
                .names
                .get(&cell.get_id())
                .cloned()
                .unwrap_or_else(|| format!("actor {}", cell.get_id()))
        };
        match event {
            SupervisionEvent::ActorFailed(cell, cause) => {
                let reason = format!("stage {} failed: {cause}", name(&cell));
                if cause.downcast_ref::<EdgeClosed>().is_none() {
                    state.fail(&myself, reason);
                } else if state.consequence.is_none() {
                    // The stage downstream stopped first, and its own report
                    // names the real cause: wait for it, within reason.
                    state.consequence = Some(reason);
                    myself.send_after(CAUSE_GRACE, || JobMsg::SettleConsequence);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) if state.reply.is_some() => {
                let why = reason.map_or_else(String::new, |r| format!(": {r}"));
                let reason = format!("stage {} stopped before the job ended{why}", name(&cell));
                state.fail(&myself, reason);
            }
            _ => {}
        }
        Ok(())
    }

    /// Stops every stage within the shutdown timeout; names those that
    /// would not stop (they are killed when this actor exits).
    async fn post_stop(
        &self,
        _: ActorRef<JobMsg>,
        state: &mut JobState,
    ) -> Result<(), ActorProcessingErr> {
        state.close_edges();
        let deadline = tokio::time::Instant::now() + state.ctx.config.shutdown_timeout;
        for stage in &state.stages {
            stage.cell.stop(None);
        }
        let mut hung = Vec::new();
        for stage in state.stages.drain(..) {
            if tokio::time::timeout_at(deadline, stage.handle)
                .await
                .is_err()
            {
                hung.push(stage.name);
            }
        }
        if let Some(walker) = state.walker.take()
            && tokio::time::timeout_at(deadline, walker).await.is_err()
        {
            hung.push(WALKER.to_string());
        }
        if !hung.is_empty() {
            tracing::error!(
                "shutdown timed out after {:?}; still running: {}",
                state.ctx.config.shutdown_timeout,
                hung.join(", ")
            );
        }
        state
            .ctx
            .hung_stages
            .lock()
            .expect("hung stages lock")
            .extend(hung);
        Ok(())
    }
}

/// Lists the inputs, registers each file in the ledger, and hands out
/// bundles of shards one idle scanner at a time. Runs on a blocking thread.
fn walk_manifest(
    ctx: &JobContext,
    inputs: &[PathBuf],
    job: &ActorRef<JobMsg>,
    demand: &Semaphore,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let mut manifest = ManifestWalk {
        ctx,
        job,
        demand,
        runtime,
        next_seq: 0,
        unwritten: Vec::with_capacity(FILES_PER_WRITE),
        bundle: Vec::new(),
        bundle_bytes: 0,
    };
    // Never read the store's own files back as input.
    let excluded = Excluded::dirs(&[ctx.store.db_dir(), ctx.store.tmp_dir()]);
    let mut walk = Walk::new(excluded, ctx.config.follow_links);
    let mut failure = None;
    let _ = walk.run(inputs, &mut |listed| {
        manifest.visit(listed).unwrap_or_else(|e| {
            failure = Some(e);
            ControlFlow::Break(())
        })
    });
    JobCounters::add(&ctx.counters.links_skipped, walk.links_skipped());
    match failure {
        Some(failure) => Err(failure),
        None => {
            manifest.hand_out_bundle();
            manifest.write_files()
        }
    }
}

struct ManifestWalk<'a> {
    ctx: &'a JobContext,
    job: &'a ActorRef<JobMsg>,
    demand: &'a Semaphore,
    runtime: &'a tokio::runtime::Handle,
    next_seq: u32,
    /// Listed files not yet registered in the ledger.
    unwritten: Vec<InputFile>,
    /// Shards not yet handed out, and their listed bytes.
    bundle: Vec<Shard>,
    bundle_bytes: u64,
}

impl ManifestWalk<'_> {
    fn visit(&mut self, listed: Listed) -> Result<ControlFlow<()>, String> {
        let ctx = self.ctx;
        let seq = self.next_seq;
        self.next_seq = seq
            .checked_add(1)
            .ok_or("more than 4 billion input files")?;
        let (file, problem) = match listed {
            Listed::File {
                path,
                size,
                modified,
            } => (
                InputFile {
                    seq,
                    path,
                    size,
                    modified,
                },
                None,
            ),
            Listed::Unreadable { path, error } => {
                let file = InputFile {
                    seq,
                    path,
                    size: 0,
                    modified: None,
                };
                let problem = FileProblem {
                    offset: None,
                    message: format!("cannot read: {error}"),
                };
                (file, Some(problem))
            }
        };
        JobCounters::add(&ctx.counters.files_listed, 1);
        JobCounters::add(&ctx.counters.bytes_listed, file.size);
        self.unwritten.push(file.clone());
        if self.unwritten.len() >= FILES_PER_WRITE {
            self.write_files()?;
        }
        if let Some(problem) = problem {
            tracing::warn!(path = %file.path.display(), "{}", problem.message);
            ctx.store
                .put_problem(ctx.dataset.id, ctx.job.id, seq, &problem)
                .map_err(|e| e.to_string())?;
            return Ok(ControlFlow::Continue(()));
        }
        for shard in plan_shards(Arc::new(file), ctx.config.split_bytes) {
            self.bundle_bytes += shard.listed_bytes();
            self.bundle.push(shard);
            let full = self.bundle.len() >= BUNDLE_SHARDS || self.bundle_bytes >= BUNDLE_BYTES;
            if full && !self.hand_out_bundle() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Sends the bundle to the next idle scanner, waiting for one. Returns
    /// `false` if the job ended meanwhile.
    fn hand_out_bundle(&mut self) -> bool {
        if self.bundle.is_empty() {
            return true;
        }
        // The semaphore is closed when the job ends: stop listing.
        let Ok(permit) = self.runtime.block_on(self.demand.acquire()) else {
            return false;
        };
        permit.forget();
        if !self.wait_for_admission() {
            return false;
        }
        self.bundle_bytes = 0;
        let bundle = std::mem::take(&mut self.bundle);
        self.job.cast(JobMsg::ShardsAvailable(bundle)).is_ok()
    }

    /// Holds the next shard back while the heap is at the governor's hard
    /// limit, so nothing new starts; the shards already being scanned run
    /// on and bring memory down. If every scanner is idle, nothing running
    /// could free memory, so the shard goes anyway rather than hang the
    /// job. Returns `false` if the job ended meanwhile.
    fn wait_for_admission(&self) -> bool {
        let governor = &self.ctx.governor;
        let mut held = false;
        // This walker holds one scanner's permit, taken for this shard.
        let busy = || self.demand.available_permits() + 1 < self.ctx.config.threads;
        while !governor.admits_new_work() && busy() {
            if self.demand.is_closed() {
                return false;
            }
            if !held {
                held = true;
                metrics::counter!("quern_governor_shards_held_total").increment(1);
            }
            std::thread::sleep(SAMPLE_INTERVAL);
        }
        true
    }

    fn write_files(&mut self) -> Result<(), String> {
        let ctx = self.ctx;
        ctx.store
            .put_files(ctx.dataset.id, ctx.job.id, &self.unwritten)
            .map_err(|e| e.to_string())?;
        self.unwritten.clear();
        Ok(())
    }
}
