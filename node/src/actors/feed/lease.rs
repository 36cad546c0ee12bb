//! The cluster feed: shards leased from the coordinators.
//!
//! The feed asks the leader for shards of its job several at a time
//! (`LeaseSettings::batch`, granted in one log write), registers their
//! files under the numbers the manifest gave them (so a record's first
//! sighting is the same whichever node reads it, and the same as a walk of
//! the same files in the same order), cuts large plain files into byte
//! ranges as a walk does, and hands them to idle scanners. A reporter task
//! heartbeats to the leader (extending every lease the node holds, and
//! carrying how far each leased shard has been scanned) and reports
//! finished shards in batches. The feed ends once every shard of the job
//! is done, on this node or another.
//!
//! When every lane has written, the owner stages: it reports its counts
//! and waits for the coordinators to commit the job (every shard done,
//! every live node staged, the counts reconciled); only then does the job
//! publish.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator_client::{CoordinatorClient, Transport};
use proto_schema::command::{MAX_LEASES_PER_COMMAND, Response};
use proto_schema::coordinator_api::{
    HeartbeatReply, JobPhase, JobStatus, LeaseReply, LeasedShard, ShardProgress,
};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::{
    BUNDLE_BYTES, BUNDLE_SHARDS, FileRegister, JobEnder, NotPublished, Scanners, ShardFeed,
};
use crate::actors::JobContext;
use crate::input::roots::Roots;
use crate::input::shard::{InputFile, Shard, plan_shards};
use crate::memory::ProcessMemory;
use crate::quarantine::FileProblem;
use crate::shuffle::Inbound;
use crate::staged_parts::{self, Decision, ReportError};
use crate::store::catalog::JobTotals;
use crate::store::staged::ClusterPart;

/// How the feed paces itself.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Shards asked for per lease request (at most
    /// `MAX_LEASES_PER_COMMAND`): each request is a log write, so a job
    /// of many small files takes files / batch of them.
    pub batch: u32,
    /// Between heartbeats; a third of the coordinators' lease time keeps
    /// two lost heartbeats from losing the leases.
    pub heartbeat: Duration,
    /// Between asking again when there is no work yet (shards leased to
    /// other nodes may still come back).
    pub poll: Duration,
    /// How long an owner waits for the job's commit once it has staged.
    pub commit_timeout: Duration,
    /// Where the node may read; `None`: anywhere (a walk's own inputs).
    pub roots: Option<Roots>,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            batch: 64,
            heartbeat: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            commit_timeout: Duration::from_secs(600),
            roots: None,
        }
    }
}

/// Who this node is to the coordinators, and which job it works on.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTarget {
    pub node: NodeId,
    pub incarnation: u64,
    /// The coordinators' job (the submission) whose shards it reads.
    pub job: JobId,
}

/// A lease held: its epoch, the ranges of it not yet scanned, and the
/// bytes scanned so far (the progress heartbeats carry).
struct Held {
    shard: ShardId,
    epoch: Epoch,
    ranges_left: usize,
    scanned_bytes: u64,
}

/// What the feed shares with its reporter task.
struct Shared<T: Transport> {
    client: tokio::sync::Mutex<CoordinatorClient<T>>,
    target: LeaseTarget,
    /// The job's part this feed runs: its attempt (if the job is restarted
    /// meanwhile, the part ends and the node starts again) and the
    /// partition map's epoch it runs and stages under (a stage is refused
    /// if the map moved on meanwhile).
    part: ClusterPart,
    /// By the file's number in the job.
    held: Mutex<HashMap<u32, Held>>,
    /// Scanned shards not yet reported, as `(shard, epoch)`.
    done: Mutex<Vec<(ShardId, Epoch)>>,
    wake: Notify,
    stop: AtomicBool,
    /// Set once the part has failed (or its feed is gone without
    /// staging): shards it read must not be reported done, or a new part
    /// would find the job's shards done with their records lost.
    abandoned: AtomicBool,
    /// Why the reporter gave up; ends the job.
    failure: Mutex<Option<String>>,
}

/// Shards of one job, leased from the coordinators.
pub struct LeaseFeed<T: Transport> {
    shared: Arc<Shared<T>>,
    runtime: Handle,
    settings: LeaseSettings,
    reporter: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<T: Transport> LeaseFeed<T> {
    /// A feed for `target`'s `part` of the job (`part.job` is
    /// `target.job`), calling the coordinators through `client` on
    /// `runtime` (which must outlive the job: the job's own runtime stops
    /// with it).
    pub fn new(
        client: CoordinatorClient<T>,
        target: LeaseTarget,
        part: ClusterPart,
        runtime: Handle,
        settings: LeaseSettings,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client: tokio::sync::Mutex::new(client),
                target,
                part,
                held: Mutex::default(),
                done: Mutex::default(),
                wake: Notify::new(),
                stop: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                failure: Mutex::default(),
            }),
            runtime,
            settings,
            reporter: Mutex::default(),
        }
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("not poisoned").clone()
    }

    /// The job as the leader sees it; `Err` too if this node's part of it
    /// is over.
    fn job_status(&self) -> Result<JobStatus, String> {
        let checked = self.runtime.block_on(async {
            let mut client = self.shared.client.lock().await;
            check_part(&mut client, &self.shared.part, self.shared.target.node).await
        });
        match checked {
            PartCheck::Current(status) => Ok(*status),
            PartCheck::Over(reason) | PartCheck::Unknown(reason) => Err(reason),
        }
    }

    /// Registers the leased shards' files and cuts them into scans.
    fn take(
        &self,
        ctx: &JobContext,
        files: &mut FileRegister<'_>,
        leased: Vec<LeasedShard>,
    ) -> Result<Vec<Shard>, String> {
        let mut scans = Vec::new();
        for lease in leased {
            if lease.job != self.shared.target.job {
                return Err(format!(
                    "leased shard {} of job {} while running job {}",
                    lease.shard, lease.job, self.shared.target.job
                ));
            }
            let seq = u32::try_from(lease.file)
                .map_err(|_| format!("file number {} exceeds 2^32", lease.file))?;
            if self.renewed_in_part(seq, &lease) {
                continue;
            }
            // A lease's checkpoint is not resumed from: the shard is read
            // whole again (its owner's merge keeps the first sighting).
            // The size is the manifest's, so a file that changed since it
            // was listed is reported by the scan; the modification time is
            // taken now, so is one that changes while it is read.
            let path = PathBuf::from(&lease.path);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let file = InputFile {
                seq,
                path,
                size: lease.end,
                modified,
            };
            files.add(file.clone())?;
            if let Some(reason) = self.refused(&file) {
                tracing::warn!(path = %file.path.display(), "{reason}");
                let problem = FileProblem {
                    offset: None,
                    message: reason,
                };
                ctx.store
                    .put_problem(ctx.dataset.id, ctx.job.id, seq, &problem)
                    .map_err(|e| e.to_string())?;
                // Settled without a read: the shard is done, rejected.
                let mut done = self.shared.done.lock().expect("not poisoned");
                done.push((lease.shard, lease.epoch));
                continue;
            }
            let ranges: Vec<Shard> = plan_shards(Arc::new(file), ctx.config.split_bytes).collect();
            self.shared.held.lock().expect("not poisoned").insert(
                seq,
                Held {
                    shard: lease.shard,
                    epoch: lease.epoch,
                    ranges_left: ranges.len(),
                    scanned_bytes: 0,
                },
            );
            scans.extend(ranges);
        }
        Ok(scans)
    }

    /// Whether `lease` is of a shard this part has taken already (its
    /// earlier lease expired, say because a late copy of the part's
    /// start expired the node's leases, and the shard came back to this
    /// node): its records are read, or being read, once in this part, so
    /// it is not read again (its records would count twice); it is
    /// completed under the newer epoch instead. A shard completed and
    /// accepted is done and never comes back.
    fn renewed_in_part(&self, seq: u32, lease: &LeasedShard) -> bool {
        // Both locked, in `scanned`'s order, so a shard moving from one to
        // the other is found in one of them.
        let mut held = self.shared.held.lock().expect("not poisoned");
        let mut done = self.shared.done.lock().expect("not poisoned");
        if let Some(taken) = held.get_mut(&seq).filter(|h| h.shard == lease.shard) {
            taken.epoch = taken.epoch.max(lease.epoch);
            return true;
        }
        if let Some(taken) = done.iter_mut().find(|(shard, _)| *shard == lease.shard) {
            taken.1 = taken.1.max(lease.epoch);
            return true;
        }
        false
    }

    /// Why the node may not read `file`, if it may not.
    fn refused(&self, file: &InputFile) -> Option<String> {
        let roots = self.settings.roots.as_ref()?;
        roots.check(&file.path).err()
    }

    fn start_reporter(&self, ender: JobEnder, inbound: Option<Inbound>) {
        let shared = self.shared.clone();
        let interval = self.settings.heartbeat;
        let task = self.runtime.spawn(report(shared, interval, ender, inbound));
        *self.reporter.lock().expect("not poisoned") = Some(task);
    }

    /// Stops the reporter after its last report.
    fn stop_reporter(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(task) = self.reporter.lock().expect("not poisoned").take() {
            let _ = self.runtime.block_on(task);
        }
    }
}

impl<T: Transport> ShardFeed for LeaseFeed<T> {
    fn name(&self) -> &'static str {
        "lease feed"
    }

    fn run(&self, ctx: &JobContext, scanners: &Scanners) -> Result<(), String> {
        let inbound = ctx.shuffle.as_ref().map(|s| s.inbound.clone());
        self.start_reporter(scanners.job_ender(), inbound);
        self.lease_and_hand_out(ctx, scanners)
    }

    fn scanned(&self, shards: &[Shard]) {
        let mut held = self.shared.held.lock().expect("not poisoned");
        let mut done = self.shared.done.lock().expect("not poisoned");
        for shard in shards {
            let seq = shard.file.seq;
            let Some(lease) = held.get_mut(&seq) else {
                continue;
            };
            lease.ranges_left = lease.ranges_left.saturating_sub(1);
            lease.scanned_bytes += shard.listed_bytes();
            if lease.ranges_left == 0 {
                done.push((lease.shard, lease.epoch));
                held.remove(&seq);
            }
        }
        if done.len() >= MAX_LEASES_PER_COMMAND / 2 {
            self.shared.wake.notify_one();
        }
    }

    fn failed(&self) {
        self.shared.abandon();
    }

    fn cluster_part(&self) -> Option<ClusterPart> {
        Some(self.shared.part)
    }

    fn staged(&self, totals: &JobTotals) -> Result<(), NotPublished> {
        let outcome = self.stage_and_wait(totals);
        self.stop_reporter();
        outcome
    }
}

impl<T: Transport> LeaseFeed<T> {
    /// Leases shards and hands them to the scanners until every shard of
    /// the job is done (here or elsewhere) or the job has ended.
    fn lease_and_hand_out(&self, ctx: &JobContext, scanners: &Scanners) -> Result<(), String> {
        let mut files = FileRegister::new(ctx);
        let target = self.shared.target;
        let batch = self.settings.batch.clamp(1, MAX_LEASES_PER_COMMAND as u32);
        loop {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            // A job that ended (a stage failed) reads nothing more: leases
            // taken now would be held, and renewed, by no scanner.
            if scanners.job_ended() {
                return files.finish();
            }
            let reply = self
                .runtime
                .block_on(async {
                    self.shared
                        .client
                        .lock()
                        .await
                        .lease(
                            target.node,
                            batch,
                            Some((target.job, self.shared.part.map_epoch)),
                        )
                        .await
                })
                .map_err(|e| format!("asking for leases: {e}"))?;
            match reply {
                LeaseReply::Leased(leased) => {
                    let scans = self.take(ctx, &mut files, leased)?;
                    for bundle in bundles(scans) {
                        if !scanners.hand_out(bundle) {
                            return files.finish();
                        }
                    }
                }
                LeaseReply::NoWork => {
                    let status = self.job_status()?;
                    if status.phase != JobPhase::Submitting
                        && status.shards_pending + status.shards_leased == 0
                    {
                        return files.finish();
                    }
                    // Wake the reporter: our own finished shards may be
                    // what the job waits for.
                    self.shared.wake.notify_one();
                    std::thread::sleep(self.settings.poll);
                }
                LeaseReply::Refused(reason) => return Err(format!("lease refused: {reason}")),
                LeaseReply::Renewed { .. } => {
                    return Err("a lease request was answered as a renewal".into());
                }
            }
        }
    }

    /// Reports the owner's counts, then waits for the coordinators to
    /// decide the job (see `staged_parts::decide`).
    fn stage_and_wait(&self, totals: &JobTotals) -> Result<(), NotPublished> {
        let (node, part) = (self.shared.target.node, self.shared.part);
        // Every shard the part read must be accepted as done before its
        // counts are: one refused (its lease expired and another node
        // read it too) would count its records twice.
        let _ = self.runtime.block_on(report_once(&self.shared));
        if let Some(failure) = self.failure() {
            return Err(NotPublished::Refused(failure));
        }
        let reported = self.runtime.block_on(async {
            let mut client = self.shared.client.lock().await;
            staged_parts::report(&mut client, node, &part, staged_parts::counts_of(totals)).await
        });
        match reported {
            Ok(()) => {}
            Err(e @ ReportError::Refused { .. }) => {
                return Err(NotPublished::Refused(e.to_string()));
            }
            Err(e @ ReportError::Unreachable { .. }) => {
                return Err(NotPublished::Undecided(e.to_string()));
            }
        }
        tracing::info!(
            %node,
            job = %part.job,
            attempt = part.attempt,
            "staged this node's part; waiting for the coordinators to commit the job"
        );
        let deadline = Instant::now() + self.settings.commit_timeout;
        let mut last = String::from("no answer yet");
        loop {
            let asked = self
                .runtime
                .block_on(async { self.shared.client.lock().await.job(part.job).await });
            match asked {
                Ok(status) => match staged_parts::decide(status.as_ref(), &part, node) {
                    Decision::Publish => return Ok(()),
                    Decision::Discard(reason) => return Err(NotPublished::Refused(reason)),
                    Decision::Wait => {
                        if let Some(status) = &status
                            && let Some(recovery) = status.recovery
                            && staged_parts::recovers_here(status, &part, node)
                        {
                            return Err(NotPublished::Undecided(format!(
                                "job {} reads the partitions of lost node {} again on this \
                                 node: this part stays staged meanwhile",
                                part.job, recovery.lost
                            )));
                        }
                        if let Some(status) = status {
                            last = format!(
                                "{} shards pending, {} leased, owners {:?} not staged",
                                status.shards_pending, status.shards_leased, status.unstaged
                            );
                        }
                    }
                },
                Err(e) => last = format!("asking for job {}: {e}", part.job),
            }
            if Instant::now() >= deadline {
                return Err(NotPublished::Undecided(format!(
                    "job {} was not committed within {:?} of staging: {last}",
                    part.job, self.settings.commit_timeout
                )));
            }
            std::thread::sleep(self.settings.poll);
        }
    }
}

/// Scans gathered into bundles as a walk gathers them.
fn bundles(scans: Vec<Shard>) -> Vec<Vec<Shard>> {
    let mut bundles = Vec::new();
    let (mut bundle, mut bytes) = (Vec::new(), 0);
    for scan in scans {
        bytes += scan.listed_bytes();
        bundle.push(scan);
        if bundle.len() >= BUNDLE_SHARDS || bytes >= BUNDLE_BYTES {
            bundles.push(std::mem::take(&mut bundle));
            bytes = 0;
        }
    }
    if !bundle.is_empty() {
        bundles.push(bundle);
    }
    bundles
}

impl<T: Transport> Drop for LeaseFeed<T> {
    fn drop(&mut self) {
        self.shared.abandon();
    }
}

impl<T: Transport> Shared<T> {
    /// Ends the reporter without a last report.
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The reporter: every `interval`, or sooner when woken, reports finished
/// shards in batches and heartbeats; a last report when stopped after
/// staging, none once the part is abandoned (failed). Each time it also
/// asks whether the part is still current: the lease requests would tell
/// the feed the job moved on, but a part whose scanners wait on a lost
/// peer's stream asks for none, and lanes waiting for streams a failed
/// peer never opens hear nothing at all; the restarted job is then the
/// only news they get (or, for a part a recovery keeps, the lost owner
/// named: see `watch_part`). What ends the reporter (the node declared
/// lost, the part over) fails the job through `ender`, so that it never
/// waits on for input.
async fn report<T: Transport>(
    shared: Arc<Shared<T>>,
    interval: Duration,
    ender: JobEnder,
    inbound: Option<Inbound>,
) {
    loop {
        if shared.abandoned.load(Ordering::Acquire) {
            return;
        }
        let stopping = shared.stop.load(Ordering::Acquire);
        let mut outcome = report_once(&shared).await;
        if outcome.is_ok() && !stopping {
            outcome = watch_part(&shared, inbound.as_ref()).await;
        }
        if let Err(failure) = outcome {
            tracing::error!("{failure}");
            shared
                .failure
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| failure.clone());
            ender.fail(failure);
            return;
        }
        if stopping {
            return;
        }
        let _ = tokio::time::timeout(interval, shared.wake.notified()).await;
    }
}

/// `Err` naming why if the coordinators say this node's part is over;
/// coordinators that cannot be asked decide nothing (the next report asks
/// again). A part a recovery keeps (the job lost another owner before it
/// staged) is over too if that owner's streams to this node (`inbound`)
/// have not all ended: it never sends the rest, and records of shards it
/// reported done may be among them, so this part cannot stage whole.
async fn watch_part<T: Transport>(
    shared: &Shared<T>,
    inbound: Option<&Inbound>,
) -> Result<(), String> {
    let mut client = shared.client.lock().await;
    let (part, node) = (&shared.part, shared.target.node);
    match check_part(&mut client, part, node).await {
        PartCheck::Current(status) => match staged_parts::kept_beside(&status, part, node) {
            Some(lost) if inbound.and_then(|i| i.complete_from(part.job, lost)) == Some(false) => {
                Err(format!(
                    "owner node {lost} was lost before every stream it owed node {node} for job \
                     {} ended: this part misses records, and the job runs again whole",
                    part.job
                ))
            }
            _ => Ok(()),
        },
        PartCheck::Over(reason) => Err(reason),
        PartCheck::Unknown(reason) => {
            tracing::warn!("{reason}; asking again at the next report");
            Ok(())
        }
    }
}

/// What the leader says of a node's running part of a job.
enum PartCheck {
    /// Its attempt runs (or has just committed).
    Current(Box<JobStatus>),
    /// It never will again: the job was restarted, aborted, is another
    /// submission, or is unknown.
    Over(String),
    /// The leader could not be asked.
    Unknown(String),
}

async fn check_part<T: Transport>(
    client: &mut CoordinatorClient<T>,
    part: &ClusterPart,
    node: NodeId,
) -> PartCheck {
    match client.job(part.job).await {
        Err(e) => PartCheck::Unknown(format!("asking for job {}: {e}", part.job)),
        Ok(status) => match staged_parts::decide(status.as_ref(), part, node) {
            Decision::Discard(reason) => PartCheck::Over(reason),
            Decision::Wait | Decision::Publish => {
                PartCheck::Current(Box::new(status.expect("a job decided on exists")))
            }
        },
    }
}

/// Reports the finished shards and heartbeats; a failure is recorded
/// (`Shared::failure`) before the client is let go, so whoever reports
/// next sees it.
async fn report_once<T: Transport>(shared: &Shared<T>) -> Result<(), String> {
    let mut client = shared.client.lock().await;
    let reported = report_with(&mut client, shared).await;
    if let Err(failure) = &reported {
        let mut recorded = shared.failure.lock().expect("not poisoned");
        recorded.get_or_insert_with(|| failure.clone());
    }
    reported
}

async fn report_with<T: Transport>(
    client: &mut CoordinatorClient<T>,
    shared: &Shared<T>,
) -> Result<(), String> {
    let target = shared.target;
    loop {
        if shared.abandoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let batch: Vec<(ShardId, Epoch)> = {
            let mut done = shared.done.lock().expect("not poisoned");
            let take = done.len().min(MAX_LEASES_PER_COMMAND);
            done.drain(..take).collect()
        };
        if batch.is_empty() {
            break;
        }
        let answer = client
            .complete_shards(target.node, batch)
            .await
            .map_err(|e| format!("reporting finished shards: {e}"))?;
        match answer {
            Response::ShardsCompleted { refused, .. } if refused.is_empty() => {}
            Response::ShardsCompleted { refused, .. } => {
                let (shard, why) = &refused[0];
                return Err(format!(
                    "shard {shard} was read but its completion was refused ({why}): \
                     its records cannot count"
                ));
            }
            other => return Err(format!("reporting finished shards: {other:?}")),
        }
    }
    let progress: Vec<ShardProgress> = shared
        .held
        .lock()
        .expect("not poisoned")
        .values()
        .map(|h| ShardProgress {
            shard: h.shard,
            epoch: h.epoch,
            offset: h.scanned_bytes,
        })
        .collect();
    let memory = ProcessMemory::read().map(|m| m.anon);
    match client
        .heartbeat(target.node, target.incarnation, progress, memory)
        .await
        .map_err(|e| format!("heartbeat: {e}"))?
    {
        HeartbeatReply::Alive { .. } => Ok(()),
        HeartbeatReply::Unknown => Err(format!(
            "node {} (incarnation {}) was declared lost by the coordinators",
            target.node, target.incarnation
        )),
    }
}
