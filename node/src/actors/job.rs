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
use super::feed::{NotPublished, Scanners, ShardFeed};
use super::messages::{JobMsg, LaneOutput, ScanMsg, SortMergeMsg};
use super::scan::{Scan, ScanArgs};
use super::sort_merge::{SortMerge, SortMergeArgs};
use super::{JobContext, blocking};
use crate::counters::JobCounters;
use crate::edge::{Edge, EdgeClosed, EdgeCloser};
use crate::input::shard::Shard;
use crate::memory::Account;
use crate::shuffle::inbound::InboundLane;
use crate::shuffle::{Inbound, RemoteLane, RemoteOutcome};
use crate::store::catalog::JobTotals;
use proto_schema::JobId;
use proto_schema::shuffle::StreamHeader;

/// The job's end: its totals once published, or why it failed.
pub type JobResult = Result<JobTotals, String>;

pub struct JobArgs {
    pub ctx: Arc<JobContext>,
    pub feed: Arc<dyn ShardFeed>,
    pub reply: oneshot::Sender<JobResult>,
}

/// How often a cluster job looks whether its peers' streams have all
/// arrived.
const STREAMS_POLL: std::time::Duration = std::time::Duration::from_millis(10);

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
    /// Edges to remote owners' lanes (a cluster job's), and what became
    /// of their streams.
    remote: Vec<Edge<SortMergeMsg>>,
    outcomes: Vec<RemoteOutcome>,
    /// Inputs of the lanes not yet complete: the scanners, and in a
    /// cluster job the streams sent and the streams received.
    inputs_pending: usize,
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
            self.feed.failed();
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

    /// One of the lanes' inputs is complete; once all are, the lanes
    /// merge and pass everything on.
    fn input_complete(&mut self) -> Result<(), ActorProcessingErr> {
        self.inputs_pending -= 1;
        if self.inputs_pending == 0 {
            for sorter in &self.sorters {
                sorter.cast(SortMergeMsg::Finish)?;
            }
        }
        Ok(())
    }

    /// Ends the job's streams to remote owners (its scanners are done) and
    /// reports once the owners have taken them. Bounded by the data
    /// channel's timeouts.
    fn end_streams(&mut self, myself: &ActorRef<JobMsg>) -> Result<(), ActorProcessingErr> {
        if self.ctx.shuffle.is_none() {
            return Ok(());
        }
        for edge in &self.remote {
            edge.send_control(SortMergeMsg::Finish)?;
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        let myself = myself.clone();
        tokio::spawn(async move {
            let mut result = Ok(());
            for outcome in outcomes {
                if let Err(e) = outcome.wait().await {
                    result = Err(format!("the shuffle failed: {e}"));
                    break;
                }
            }
            let _ = myself.cast(JobMsg::ShuffleSent(result));
        });
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
        // In a cluster job a node's reads and its owners' counts differ by
        // what crossed the shuffle, and a recovery part's (its lanes own a
        // lost owner's partitions only) by the records it read and dropped:
        // the coordinator reconciles the parts across nodes. Keys written
        // still match what this node's dedup kept.
        let owns_every_partition = ctx.lanes.partitions == ctx.dataset.partitions;
        let reconciles = totals.reconciles() || ctx.shuffle.is_some() || !owns_every_partition;
        if !reconciles || keys != totals.unique {
            return Err(format!(
                "counters do not reconcile: read {} != unique {} + duplicates {} + rejected {}, \
                 or {keys} keys written != {} unique",
                totals.read, totals.unique, totals.duplicates, totals.rejected, totals.unique
            ));
        }
        let files = outputs.into_iter().flat_map(|o| o.files).collect();
        if ctx.job.cluster.is_none() {
            // A walk's job publishes at once.
            blocking(|| self.feed.staged(&totals)).map_err(|e| e.to_string())?;
            blocking(|| {
                ctx.store
                    .publish_job(&ctx.job, files, &totals, &ctx.scratch)
            })
            .map_err(|e| e.to_string())?;
            return Ok(totals);
        }
        // A part of the coordinators' job: staged durably, then published
        // once they commit the job.
        let store = &ctx.store;
        let staged =
            blocking(|| store.stage_job(&ctx.job, files, &totals)).map_err(|e| e.to_string())?;
        match blocking(|| self.feed.staged(&totals)) {
            Ok(()) => {
                blocking(|| store.publish_staged(&staged)).map_err(|e| e.to_string())?;
                Ok(totals)
            }
            Err(NotPublished::Refused(reason)) => {
                blocking(|| store.discard_staged(&staged, reason.clone()))
                    .map_err(|e| e.to_string())?;
                Err(reason)
            }
            // Left staged: the supervisor sees it so and leaves it be.
            Err(undecided) => Err(undecided.to_string()),
        }
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
            remote: Vec::new(),
            outcomes: Vec::new(),
            inputs_pending: if ctx.shuffle.is_some() { 3 } else { 1 },
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
        if let Some(shuffle) = &ctx.shuffle {
            let lanes = (0..ctx.lanes.lanes)
                .map(|lane| InboundLane {
                    partitions: ctx.lanes.range_of(lane),
                    edge: to_sorters[lane].clone(),
                })
                .collect();
            shuffle.inbound.register(shuffle.job, shuffle.epoch, lanes);
            // Routes number remote lanes after the local ones, in this order.
            for remote in &shuffle.remote {
                let header = StreamHeader {
                    job: shuffle.job,
                    epoch: shuffle.epoch,
                    sender: shuffle.node,
                    partitions: remote.partitions,
                };
                let (target, outcome) =
                    RemoteLane::open(&remote.link, header, ctx.pool.clone()).await?;
                let name = format!("scan->{}[{}]", remote.link.name(), remote.partitions);
                let edge = Edge::new(name, target, ctx.plan.edge_capacity, EDGE_MESSAGES);
                state.edges.push(edge.closer());
                state.remote.push(edge.clone());
                state.outcomes.push(outcome);
                to_sorters.push(edge);
            }
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
        if let Some(shuffle) = &ctx.shuffle {
            tokio::spawn(await_streams(
                shuffle.inbound.clone(),
                shuffle.job,
                shuffle.expected_streams,
                myself.clone(),
            ));
        }
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
                            state.end_streams(&myself)?;
                            state.input_complete()?;
                        }
                    }
                    JobMsg::ShuffleSent(Ok(())) | JobMsg::ShuffleReceived(Ok(())) => {
                        state.input_complete()?;
                    }
                    JobMsg::ShuffleSent(Err(reason)) | JobMsg::ShuffleReceived(Err(reason)) => {
                        state.fail(&myself, reason);
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
        if let Some(shuffle) = &state.ctx.shuffle {
            shuffle.inbound.remove(shuffle.job);
        }
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

/// Reports once `expected` streams of `job` have arrived at this node, or
/// as soon as one fails (a peer lost, a stream refused); ends quietly once
/// the job is gone. Every stream ends within the data channel's timeouts,
/// so this does too.
async fn await_streams(inbound: Inbound, job: JobId, expected: u64, myself: ActorRef<JobMsg>) {
    loop {
        let Some(counts) = inbound.received(job) else {
            return;
        };
        let result = if counts.failed > 0 {
            Err(format!(
                "the shuffle failed: {} of the streams this node's lanes expect ended early",
                counts.failed
            ))
        } else if counts.streams >= expected {
            Ok(())
        } else {
            tokio::time::sleep(STREAMS_POLL).await;
            continue;
        };
        let _ = myself.cast(JobMsg::ShuffleReceived(result));
        return;
    }
}
