//! The job actor: supervisor of one ingest job.
//!
//! It spawns the lanes and scanners, runs the job's [`ShardFeed`] on a
//! blocking thread and passes each bundle of shards it hands out to an idle
//! scanner, sends end-of-stream down the pipeline in order once the feed
//! has ended and every scanner is idle, and publishes the job when every
//! lane has written. How shards are found is the feed's business.
//!
//! Any stage failure, or an abort, ends the job: its reason names the stage
//! and the cause; every edge is closed so no stage waits on a dead one; the
//! stages are stopped within the shutdown timeout, and any that will not
//! stop are named.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::commit::{Commit, CommitArgs};
use super::dedup::{Dedup, DedupArgs};
use super::feed::{Scanners, ShardFeed};
use super::messages::{JobMsg, LaneOutput, ScanMsg, SortMergeMsg};
use super::scan::{Scan, ScanArgs};
use super::sort_merge::{SortMerge, SortMergeArgs};
use super::{JobContext, blocking};
use crate::counters::JobCounters;
use crate::edge::{Edge, EdgeClosed, EdgeCloser};
use crate::input::shard::Shard;
use crate::memory::Account;
use crate::store::catalog::JobTotals;

/// The job's end: its totals once published, or why it failed.
pub type JobResult = Result<JobTotals, String>;

pub struct JobArgs {
    pub ctx: Arc<JobContext>,
    pub feed: Arc<dyn ShardFeed>,
    pub reply: oneshot::Sender<JobResult>,
}

/// How long a consequential failure waits for the failure that caused it.
const CAUSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Messages a data edge may hold besides its byte bound.
const EDGE_MESSAGES: usize = 64;

struct Stage {
    name: String,
    cell: ActorCell,
    handle: JoinHandle<()>,
}

pub struct JobState {
    account: Account,
    ctx: Arc<JobContext>,
    feed: Arc<dyn ShardFeed>,
    stages: Vec<Stage>,
    names: HashMap<ActorId, String>,
    edges: Vec<EdgeCloser>,
    scanners: Vec<ActorRef<ScanMsg>>,
    /// Scanners without a bundle. The feed hands out a bundle only after
    /// taking a `demand` permit, one per idle scanner, so a bundle always
    /// finds one.
    idle: Vec<usize>,
    sorters: Vec<ActorRef<SortMergeMsg>>,
    /// Permits = idle scanners not yet promised a bundle; the feed takes
    /// one before each bundle it hands out.
    demand: Arc<Semaphore>,
    /// The feed's thread, until it is joined at shutdown.
    feed_thread: Option<JoinHandle<()>>,
    feed_ended: bool,
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

    /// Once the feed has ended and every scanner is idle, tells scanners
    /// to finish.
    fn maybe_finish_scanning(&mut self) -> Result<(), ActorProcessingErr> {
        let all_idle = self.idle.len() == self.scanners.len();
        if self.feed_ended && all_idle && !self.scanners_finishing {
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
        blocking(|| {
            ctx.tally_runs
                .write_to(&ctx.store, ctx.dataset.id, ctx.job.id)
        })
        .map_err(|e| e.to_string())?;
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
        // Staged: the feed says when the job may publish (at once for a
        // walk; once the coordinators commit it for leased shards).
        blocking(|| self.feed.staged(&totals))?;
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
            feed: args.feed,
            stages: Vec::new(),
            names: HashMap::new(),
            edges: Vec::new(),
            scanners: Vec::new(),
            idle: (0..threads).rev().collect(),
            sorters: Vec::new(),
            demand: Arc::new(Semaphore::new(threads)),
            feed_thread: None,
            feed_ended: false,
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
        let (ctx, feed) = (state.ctx.clone(), state.feed.clone());
        let scanners = Scanners::new(
            state.demand.clone(),
            state.scanners.len(),
            ctx.governor.clone(),
            tokio::runtime::Handle::current(),
            myself.clone(),
        );
        state.feed_thread = Some(tokio::task::spawn_blocking(move || {
            let result = Account::named(feed.name()).enter(|| feed.run(&ctx, &scanners));
            let _ = myself.cast(JobMsg::FeedEnded(result));
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
                    JobMsg::ShardsScanned { scanner, shards } => {
                        state.feed.scanned(&shards);
                        state.idle.push(scanner);
                        state.demand.add_permits(1);
                        state.maybe_finish_scanning()?;
                    }
                    JobMsg::FeedEnded(Ok(())) => {
                        state.feed_ended = true;
                        state.maybe_finish_scanning()?;
                    }
                    JobMsg::FeedEnded(Err(reason)) => state.fail(&myself, reason),
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
        if let Some(feed_thread) = state.feed_thread.take()
            && tokio::time::timeout_at(deadline, feed_thread)
                .await
                .is_err()
        {
            hung.push(state.feed.name().to_string());
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
