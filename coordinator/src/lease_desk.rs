//! The leader's lease desk: registers nodes, tracks their liveness,
//! hands shards to the nodes that ask for work, renews their leases and
//! takes their completions.
//!
//! A node asks for leases (`lease`, up to `max` at a time): the desk
//! re-grants shards whose leases expired, then the next pending ones, all
//! in one `GrantLeases` through the Raft log (each shard moves to its next
//! epoch, which fences the old holder). Renewals (`renew`) and heartbeats
//! (`heartbeat`, which extend every lease the node holds) touch only the
//! leader's memory: no log write. Completions come in batches
//! (`CompleteShards`) and take the shards off the lease table. A node
//! silent past its deadline is declared lost through the log
//! (`DeclareNodeLost`): its leases go back to pending, and each running
//! job it owned partitions of and had not staged runs again (`RestartJob`;
//! one it had staged commits without it hearing). The answers are
//! `proto_schema::coordinator_api` replies. What it hears of jobs
//! (offsets moved in heartbeats, shards done, stage reports) goes to the
//! leader's clock of job progress (`job_progress`).
//!
//! The desk belongs to one leader term. On the first request of a new
//! term it takes the leases and the live nodes over from the state
//! machine, each with a full deadline (see `lease` and `liveness`), and
//! scans for pending shards from the start again. Within a term its
//! cursors (one per job asked for) only move forward, except when leases
//! go back to pending (a node lost or registered again): shards below
//! them are leased or done, and a leased shard comes back through expiry,
//! never as pending.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use proto_schema::PartitionMap;
use proto_schema::command::{
    Command, CommandError, MAX_LEASES_PER_COMMAND, NodeInfo, Response, RestartCause, ShardDone,
};
use proto_schema::coordinator_api::{
    HeartbeatReply, LeaseReply, LeasedShard, MAX_NODE_LANES, NodeRegistration, Owner, OwnerMap,
    ShardProgress,
};
use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId, ShardId};
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::job_progress::{JobClock, Progress};
use crate::lease::LeaseTable;
use crate::liveness::{Liveness, NodeView, StartedPart};
use crate::propose::{self, ProposeError};
use crate::state::StateError;
use crate::state::records::{Job, JobState, Node, Shard, ShardState};
use crate::status::RECENT_JOBS;
use crate::{Raft, StateMachineStore};

/// How long a lease lasts without a renewal, unless configured.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shards read per step of the scan for pending work.
const SCAN_PAGE: usize = 1024;
/// Shards a single request may skip before answering `NoWork` for now:
/// bounds how long a request holds the desk.
const SCAN_LIMIT: usize = 64 * SCAN_PAGE;

/// Jobs whose scan positions the desk remembers at once.
const MAX_JOB_CURSORS: usize = 1024;
/// How long `status` waits for the desk (held while a grant goes through
/// the log) before it shows the nodes without their liveness.
pub const STATUS_DESK_WAIT: Duration = Duration::from_millis(500);

/// Grants by the leader's desk (label `kind`: pending or expired).
pub const LEASE_GRANTS_METRIC: &str = "quern_lease_grants_total";
/// Jobs restarted (`RestartJob`): an owner was lost or started again.
pub const JOB_RESTARTS_METRIC: &str = "quern_job_restarts_total";
/// Jobs recovering a lost owner's partitions alone (`RecoverJob`).
pub const JOB_RECOVERIES_METRIC: &str = "quern_job_recoveries_total";
/// Renewals answered (label `outcome`: renewed or refused).
pub const LEASE_RENEWALS_METRIC: &str = "quern_lease_renewals_total";
/// Heartbeats answered (label `outcome`: alive or unknown).
pub const HEARTBEATS_METRIC: &str = "quern_node_heartbeats_total";
/// Nodes declared lost by the leader.
pub const NODES_LOST_METRIC: &str = "quern_nodes_lost_total";

pub fn describe_metrics() {
    metrics::describe_counter!(
        LEASE_GRANTS_METRIC,
        "Shards leased to nodes by the leader (label kind: pending, or expired for a lease \
         not renewed within --lease-time and granted again at the next epoch)."
    );
    metrics::describe_counter!(
        LEASE_RENEWALS_METRIC,
        "Lease renewals answered by the leader without a log write (label outcome: renewed, \
         refused)."
    );
    metrics::describe_counter!(
        HEARTBEATS_METRIC,
        "Node heartbeats answered by the leader without a log write (label outcome: alive, or \
         unknown for an incarnation the leader does not hold live)."
    );
    metrics::describe_counter!(
        JOB_RECOVERIES_METRIC,
        "Jobs whose owner was lost once every shard was done, before it staged: its \
         partitions alone are read again, by a live neighbour."
    );
    metrics::describe_counter!(
        NODES_LOST_METRIC,
        "Nodes declared lost through the log after a silence past --lease-time; their leases \
         went back to pending."
    );
}

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    State(#[from] StateError),
}

struct Desk {
    /// The leader term the table belongs to.
    term: Option<u64>,
    table: LeaseTable,
    nodes: Liveness,
    /// Where the scan for pending shards resumes, per job asked for
    /// (`None`: any job): no pending shard of it has an id below.
    cursors: HashMap<Option<JobId>, ShardId>,
}

impl Desk {
    /// `node`'s leases went back to pending through the log.
    fn released(&mut self, node: NodeId) {
        self.table.forget_node(node);
        self.cursors.clear();
    }
}

pub struct LeaseDesk {
    raft: Raft,
    state: StateMachineStore,
    desk: Mutex<Desk>,
    clock: Clock,
    /// The progress the desk hears of jobs (`job_progress`).
    progress: Arc<JobClock>,
}

impl LeaseDesk {
    /// The desk of `raft`'s replica: leases last `lease_ms` by `clock`.
    pub fn new(raft: Raft, state: StateMachineStore, lease_ms: u64, clock: Clock) -> Self {
        Self {
            raft,
            state,
            clock,
            desk: Mutex::new(Desk {
                term: None,
                table: LeaseTable::new(lease_ms),
                nodes: Liveness::new(lease_ms),
                cursors: HashMap::new(),
            }),
            progress: Arc::default(),
        }
    }

    pub fn job_clock(&self) -> Arc<JobClock> {
        self.progress.clone()
    }

    /// An owner's stage report of `job` was accepted.
    pub fn staged(&self, job: JobId, committed: bool) {
        let event = if committed {
            Progress::Committed
        } else {
            Progress::Staged
        };
        self.progress.count(event, 1);
        self.progress.moved(job, (self.clock)());
    }

    /// Counts `event` for each of `shards`, and moves the job clock if one
    /// is of the oldest running job.
    fn progressed(&self, shards: &[ShardId], event: Progress) -> Result<(), StateError> {
        self.progress.count(event, shards.len() as u64);
        let Some(oldest) = self.progress.oldest() else {
            return Ok(());
        };
        for &shard in shards {
            if self.state.shard(shard)?.is_some_and(|s| s.job == oldest) {
                self.progress.moved(oldest, (self.clock)());
                break;
            }
        }
        Ok(())
    }

    /// Registers `node` (or its newer incarnation) through the log; the
    /// leases an older incarnation held go back to pending. A newer
    /// incarnation of a node not declared lost (restarted within its
    /// lease) replaces one whose received records died with it
    /// (`recover_jobs_of_restarted`).
    pub async fn register(&self, registration: &NodeRegistration) -> Result<Response, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        let replaces_live = self
            .state
            .node(registration.node)?
            .is_some_and(|known| !known.lost && known.info.incarnation < registration.incarnation);
        let command = Command::RegisterNode(NodeInfo {
            id: registration.node,
            incarnation: registration.incarnation,
            address: registration.address.clone(),
            cert_fingerprint: registration.cert_fingerprint,
        });
        let response = propose::propose(&self.raft, &command).await?;
        if let Response::NodeRegistered {
            id,
            incarnation,
            released,
        } = response
        {
            if released > 0 {
                desk.released(id);
            }
            desk.nodes.registered(id, incarnation, now);
            tracing::info!(node = %id, incarnation, released, "node registered");
            if replaces_live {
                self.recover_jobs_of_restarted(&mut desk, id).await?;
            }
        }
        Ok(response)
    }

    /// A node's heartbeat: extends its own deadline and every lease it
    /// holds, and keeps the progress and memory it reports; no log write.
    pub async fn heartbeat(
        &self,
        node: NodeId,
        incarnation: u64,
        progress: Vec<ShardProgress>,
        memory_bytes: Option<u64>,
    ) -> Result<HeartbeatReply, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        self.declare_silent_lost(&mut desk, now).await?;
        self.know_registered(&mut desk, node, now)?;
        let advanced = desk.nodes.advanced(node, incarnation, &progress);
        let (reply, outcome) =
            match desk
                .nodes
                .heartbeat(node, incarnation, progress, memory_bytes, now)
            {
                Some(deadline_ms) => {
                    self.progressed(&advanced, Progress::Scanned)?;
                    let renewed = desk.table.heartbeat(node, now) as u64;
                    (
                        HeartbeatReply::Alive {
                            deadline_ms,
                            renewed,
                        },
                        "alive",
                    )
                }
                None => (HeartbeatReply::Unknown, "unknown"),
            };
        metrics::counter!(HEARTBEATS_METRIC, "outcome" => outcome).increment(1);
        Ok(reply)
    }

    /// Leases up to `max` shards (of `job` only, if named, for a part
    /// running under `map_epoch`) to `node` in one log write: expired
    /// ones first, then the next pending ones.
    pub async fn lease(
        &self,
        node: NodeId,
        max: u32,
        job: Option<JobId>,
        map_epoch: Option<Epoch>,
    ) -> Result<LeaseReply, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        self.declare_silent_lost(&mut desk, now).await?;
        self.know_registered(&mut desk, node, now)?;
        desk.nodes.touch(node, now);
        if !desk.nodes.is_live(node, now) {
            return Ok(LeaseReply::Refused(format!(
                "node {node} is not registered, or was declared lost: register again"
            )));
        }
        if let Some(job) = job
            && let Some(refusal) = self.part_is_over(&desk, node, job, map_epoch)?
        {
            return Ok(LeaseReply::Refused(refusal));
        }
        let max = (max as usize).clamp(1, MAX_LEASES_PER_COMMAND);
        let of_job = |shard: &Shard| job.is_none_or(|j| shard.job == j);
        let mut scanned = 0;
        let mut attempts = HashMap::new();
        loop {
            let mut wanted: Vec<(ShardId, Epoch)> = Vec::new();
            for (id, epoch) in desk.table.expired(now) {
                if wanted.len() == max {
                    break;
                }
                if job.is_none() || self.state.shard(id)?.is_some_and(|s| of_job(&s)) {
                    wanted.push((id, epoch));
                }
            }
            let expired = wanted.len();
            let mut cursor = desk.cursors.get(&job).copied().unwrap_or(ShardId(0));
            while wanted.len() < max && scanned < SCAN_LIMIT {
                let page = self.state.shards_after(cursor, SCAN_PAGE)?;
                let Some(last) = page.last().map(|s| s.id) else {
                    break;
                };
                for shard in page {
                    if wanted.len() == max {
                        break;
                    }
                    scanned += 1;
                    cursor = shard.id;
                    if of_job(&shard) && self.to_read(&shard, &mut attempts)? {
                        wanted.push((shard.id, shard.epoch));
                    }
                }
                if wanted.len() < max {
                    cursor = cursor.max(last);
                }
            }
            if desk.cursors.len() >= MAX_JOB_CURSORS {
                // Cursors only save rescanning: forgetting them is safe.
                desk.cursors.clear();
            }
            desk.cursors.insert(job, cursor);
            if wanted.is_empty() {
                return Ok(LeaseReply::NoWork);
            }
            let leased = self.grant(&mut desk, node, &wanted, now).await?;
            match leased {
                Granted::Shards(shards) if shards.is_empty() => {
                    // All passed over (granted meanwhile, done): look again.
                    if scanned >= SCAN_LIMIT {
                        return Ok(LeaseReply::NoWork);
                    }
                }
                Granted::Shards(shards) => {
                    let again = shards
                        .iter()
                        .filter(|s| wanted[..expired].iter().any(|&(id, _)| id == s.shard));
                    let again = again.count() as u64;
                    metrics::counter!(LEASE_GRANTS_METRIC, "kind" => "expired").increment(again);
                    metrics::counter!(LEASE_GRANTS_METRIC, "kind" => "pending")
                        .increment(shards.len() as u64 - again);
                    return Ok(LeaseReply::Leased(shards));
                }
                Granted::Refused(reason) => {
                    // The shards taken from the scan are still pending.
                    desk.cursors.clear();
                    return Ok(LeaseReply::Refused(reason));
                }
            }
        }
    }

    /// Completes `node`'s `shards` (`(shard, epoch)`) in one log write
    /// and forgets their leases.
    pub async fn complete(
        &self,
        node: NodeId,
        shards: &[(ShardId, Epoch)],
    ) -> Result<Response, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        let command = Command::CompleteShards {
            node,
            shards: shards
                .iter()
                .map(|&(shard, epoch)| ShardDone { shard, epoch })
                .collect(),
        };
        let response = propose::propose(&self.raft, &command).await?;
        if let Response::ShardsCompleted { completed, .. } = &response {
            for &shard in completed {
                desk.table.completed(shard);
            }
            self.progressed(completed, Progress::ShardDone)?;
        }
        Ok(response)
    }

    /// A node registered by a plain write (or before this term, and not
    /// yet heard from) joins the live table with a full deadline.
    fn know_registered(&self, desk: &mut Desk, node: NodeId, now: u64) -> Result<(), DeskError> {
        if desk.nodes.get(node).is_none()
            && let Some(known) = self.state.node(node)?
            && !known.lost
        {
            desk.nodes.registered(node, known.info.incarnation, now);
        }
        Ok(())
    }

    /// `dataset`'s partition map with its owners' addresses and lanes.
    /// The current map stays while its owners live and a job of the
    /// dataset runs (a node that joins meanwhile waits for the next job);
    /// otherwise, if the live nodes changed (or there is no map), a new
    /// one at the next epoch through the log. `node` starts its part of
    /// `job` with `lanes` lanes; each owner's lanes are known once it has
    /// started `job` too. `Err`: why there is none.
    pub async fn partition_map(
        &self,
        node: NodeId,
        dataset: &str,
        job: JobId,
        lanes: u16,
        part: u64,
    ) -> Result<Result<OwnerMap, String>, DeskError> {
        if lanes == 0 || lanes > MAX_NODE_LANES {
            return Ok(Err(format!(
                "node {node} announced {lanes} lanes: 1 to {MAX_NODE_LANES} are allowed"
            )));
        }
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        self.declare_silent_lost(&mut desk, now).await?;
        self.know_registered(&mut desk, node, now)?;
        // A node waiting for its peers to start asks again and again.
        desk.nodes.touch(node, now);
        // A new part: the node's earlier one is gone, and its heartbeats
        // must not keep that part's leases. The same part asking again
        // (waiting for its peers, or a late copy) keeps its own.
        if !desk.nodes.is_started(node, job, part) {
            let released = desk.table.expire_node(node, now);
            if released > 0 {
                tracing::info!(%node, %job, released, "leases of the node's earlier part expired");
            }
        }
        let Some(found) = self.state.dataset(dataset)? else {
            return Ok(Err(CommandError::UnknownDataset {
                name: dataset.into(),
            }
            .to_string()));
        };
        // In id order: the nodes column family is keyed by big-endian id.
        let nodes = self.state.nodes()?;
        let live = live_ids(&nodes);
        let current = self.state.partition_map(found.id)?;
        let epoch = current.as_ref().map_or(Epoch(0), |m| m.epoch);
        let wanted = PartitionMap::split(found.spec.partitions, &live, epoch.next());
        let map = match current {
            Some(map) if map.ranges == wanted.ranges => map,
            Some(map) if self.map_held(found.id, &map, &live)? => map,
            _ => {
                let assign = Command::AssignPartitions {
                    dataset: dataset.into(),
                    map: wanted.clone(),
                };
                match propose::propose(&self.raft, &assign).await? {
                    Response::PartitionsAssigned { epoch } => {
                        tracing::info!(dataset, %epoch, nodes = live.len(), "partitions assigned");
                        wanted
                    }
                    Response::Error(e) => return Ok(Err(e.to_string())),
                    other => return Ok(Err(format!("unexpected answer {other:?}"))),
                }
            }
        };
        desk.nodes.started(
            node,
            StartedPart {
                job,
                epoch: map.epoch,
                lanes,
                part,
            },
        );
        let owners = map
            .nodes()
            .into_iter()
            .map(|owner| Owner {
                node: owner,
                address: nodes
                    .iter()
                    .find(|n| n.info.id == owner)
                    .map(|n| n.info.address.clone())
                    .unwrap_or_default(),
                lanes: desk.nodes.lanes_for(owner, job, map.epoch),
            })
            .collect();
        Ok(Ok(OwnerMap { map, owners }))
    }

    /// Whether a running job of `dataset` (submitted, not yet committed or
    /// aborted, among the `RECENT_JOBS` newest) holds `map`: while every
    /// owner lives, and once an owner has staged under it whatever became
    /// of that owner (the job then commits under this map, or runs again
    /// under a new one).
    fn map_held(
        &self,
        dataset: DatasetId,
        map: &PartitionMap,
        live: &[NodeId],
    ) -> Result<bool, StateError> {
        let owners_live = map.nodes().iter().all(|owner| live.contains(owner));
        Ok(self.state.recent_jobs(RECENT_JOBS)?.iter().any(|job| {
            job.dataset_id == dataset
                && job.state == JobState::Submitted
                && (owners_live || job.staging_under(map.epoch))
        }))
    }

    /// Declares lost, through the log, every node silent past its deadline.
    async fn declare_silent_lost(&self, desk: &mut Desk, now: u64) -> Result<(), DeskError> {
        for (node, incarnation) in desk.nodes.silent(now) {
            let command = Command::DeclareNodeLost { node, incarnation };
            let response = propose::propose(&self.raft, &command).await?;
            if let Response::NodeDeclaredLost { released, .. } = response {
                tracing::warn!(
                    %node,
                    incarnation,
                    released,
                    "node declared lost: no heartbeat within the lease time"
                );
                metrics::counter!(NODES_LOST_METRIC).increment(1);
            }
            // Lost now, or already replaced by a newer incarnation.
            desk.nodes.lost(node);
            desk.released(node);
            self.restart_jobs_owned_by(desk, node).await?;
        }
        Ok(())
    }

    /// Runs again every running job whose dataset's map gave `lost`
    /// partitions it had not staged: what it was sent is gone with it.
    /// Once every shard was done, only its partitions are read again, by a
    /// live neighbour (`RecoverJob`); otherwise, or if that recovery is
    /// what was lost, the whole job (`RestartJob`). A job it staged goes
    /// on: every shard was done, its part is durable in its store, and it
    /// publishes the part when it is back.
    async fn restart_jobs_owned_by(&self, desk: &mut Desk, lost: NodeId) -> Result<(), DeskError> {
        for (job, map) in self.unstaged_jobs_of(lost)? {
            if job.shards_done == job.shards_total && self.recover(desk, &job, &map, lost).await? {
                continue;
            }
            let cause = RestartCause::OwnerLost { node: lost };
            self.restart_job(desk, job.id, job.attempt, cause).await?;
        }
        Ok(())
    }

    /// As `restart_jobs_owned_by` for a node restarted within its lease,
    /// but only for jobs whose every shard was done: its earlier part was
    /// running then (no shard is leased before every owner has started),
    /// so what it was sent died with it, and only its partitions are read
    /// again. Any other job its new part restarts itself if it must (its
    /// store shows whether an earlier part of the attempt ran there).
    async fn recover_jobs_of_restarted(
        &self,
        desk: &mut Desk,
        node: NodeId,
    ) -> Result<(), DeskError> {
        for (job, map) in self.unstaged_jobs_of(node)? {
            if job.shards_done == job.shards_total {
                self.recover(desk, &job, &map, node).await?;
            }
        }
        Ok(())
    }

    /// The running jobs whose dataset's map gives `node` partitions it has
    /// not staged, with that map.
    fn unstaged_jobs_of(&self, node: NodeId) -> Result<Vec<(Job, PartitionMap)>, DeskError> {
        let mut unstaged = Vec::new();
        for job in self.state.recent_jobs(RECENT_JOBS)? {
            if job.state != JobState::Submitted {
                continue;
            }
            let Some(map) = self.state.partition_map(job.dataset_id)? else {
                continue;
            };
            if !map.nodes().contains(&node) {
                continue;
            }
            if job.staged_all_of(node, map.epoch) {
                tracing::warn!(
                    job = %job.id,
                    %node,
                    "an owner lost or restarted had staged its part: the job goes on, and the node \
                     publishes the part when it is back"
                );
                continue;
            }
            unstaged.push((job, map));
        }
        Ok(unstaged)
    }

    /// Proposes that a live neighbour of `lost` in `map` reads its
    /// partitions of `job` again (`RecoverJob`); whether the job now
    /// recovers them.
    async fn recover(
        &self,
        desk: &mut Desk,
        job: &Job,
        map: &PartitionMap,
        lost: NodeId,
    ) -> Result<bool, DeskError> {
        if job.recovery.is_some() {
            return Ok(false);
        }
        let live = live_ids(&self.state.nodes()?);
        let Some((owner, joined)) = map.without(lost, |n| live.contains(&n), map.epoch.next())
        else {
            return Ok(false);
        };
        let command = Command::RecoverJob {
            job: job.id,
            attempt: job.attempt,
            lost,
            owner,
            map: joined,
        };
        match propose::propose(&self.raft, &command).await? {
            Response::JobRestarted { attempt, epoch, .. } => {
                tracing::warn!(
                    job = %job.id,
                    attempt,
                    %epoch,
                    "owner node {lost} was lost before it staged: node {owner} reads its \
                     partitions again"
                );
                metrics::counter!(JOB_RECOVERIES_METRIC).increment(1);
                desk.cursors.clear();
                Ok(true)
            }
            other => {
                tracing::warn!(
                    job = %job.id,
                    "recovering the partitions of node {lost}: {other:?}; the job runs again whole"
                );
                Ok(false)
            }
        }
    }

    /// Extends `node`'s lease of `shard` at `epoch`; no log write.
    pub async fn renew(
        &self,
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<LeaseReply, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        desk.nodes.touch(node, now);
        let (reply, outcome) = match desk.table.renew(shard, node, epoch, now) {
            Ok(deadline_ms) => (LeaseReply::Renewed { deadline_ms }, "renewed"),
            Err(e) => (LeaseReply::Refused(e.to_string()), "refused"),
        };
        metrics::counter!(LEASE_RENEWALS_METRIC, "outcome" => outcome).increment(1);
        Ok(reply)
    }

    /// Proposes the grant of `wanted` (`(shard, current epoch)`) to
    /// `node`: the shards granted, read back for the node; the ones
    /// passed over leave the table.
    async fn grant(
        &self,
        desk: &mut Desk,
        node: NodeId,
        wanted: &[(ShardId, Epoch)],
        now: u64,
    ) -> Result<Granted, DeskError> {
        let command = desk.table.grant(node, wanted, now);
        match propose::propose(&self.raft, &command).await? {
            Response::LeasesGranted {
                granted,
                passed,
                deadline_ms,
                ..
            } => {
                for shard in passed {
                    desk.table.completed(shard);
                }
                let mut shards = Vec::with_capacity(granted.len());
                for (shard, epoch) in granted {
                    desk.table.granted(shard, node, epoch, deadline_ms);
                    let record = self.state.shard(shard)?.ok_or_else(|| {
                        StateError::Inconsistent(format!("granted shard {shard} is missing"))
                    })?;
                    shards.push(LeasedShard {
                        shard,
                        job: record.job,
                        file: record.file,
                        dataset_id: record.dataset_id,
                        path: record.path,
                        start: record.start,
                        end: record.end,
                        checkpoint: record.checkpoint,
                        epoch,
                        deadline_ms,
                    });
                }
                Ok(Granted::Shards(shards))
            }
            Response::Error(e) => Ok(Granted::Refused(e.to_string())),
            other => Ok(Granted::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Why `node` may not lease shards of `job` any more, if so: its part
    /// began under a map the job has since left (the job was restarted).
    /// A shard it leased now would count in the new attempt while its
    /// records went to the old owners. The part's map is the one the node
    /// presents, else the one this leader saw it start under (a part
    /// neither names is not refused).
    fn part_is_over(
        &self,
        desk: &Desk,
        node: NodeId,
        job: JobId,
        presented: Option<Epoch>,
    ) -> Result<Option<String>, StateError> {
        let Some(began) = presented.or_else(|| desk.nodes.started_under(node, job)) else {
            return Ok(None);
        };
        let Some(found) = self.state.job(job)? else {
            return Ok(None);
        };
        let current = self.state.map_epoch(found.dataset_id)?;
        Ok((began != current).then(|| {
            format!(
                "node {node}'s part of job {job} began under partition map {began}, and the \
                 job runs under map {current} now (attempt {}): start the part again",
                found.attempt
            )
        }))
    }

    /// Whether `shard` waits to be read: pending, or read (or being read)
    /// in an earlier attempt of its job, and its job not aborted.
    /// `attempts` caches each job's current attempt (`None`: aborted).
    fn to_read(
        &self,
        shard: &Shard,
        attempts: &mut HashMap<JobId, Option<u32>>,
    ) -> Result<bool, StateError> {
        let attempt = match attempts.get(&shard.job) {
            Some(&attempt) => attempt,
            None => {
                let job = self.state.job(shard.job)?;
                let attempt = job
                    .filter(|j| j.state != JobState::Aborted)
                    .map(|j| j.attempt);
                attempts.insert(shard.job, attempt);
                attempt
            }
        };
        Ok(attempt
            .is_some_and(|current| shard.state == ShardState::Pending || shard.attempt < current))
    }

    /// Runs `job` again as its next attempt under a new map over the live
    /// nodes (`RestartJob`), if it is still at `attempt`; the desk scans
    /// for its shards from the start again.
    async fn restart_job(
        &self,
        desk: &mut Desk,
        job: JobId,
        attempt: u32,
        cause: RestartCause,
    ) -> Result<Response, DeskError> {
        let Some(found) = self.state.job(job)? else {
            return Ok(Response::Error(CommandError::JobNotSubmitted { job }));
        };
        let Some(dataset) = self
            .state
            .datasets()?
            .into_iter()
            .find(|d| d.id == found.dataset_id)
        else {
            return Ok(Response::Error(CommandError::JobNotSubmitted { job }));
        };
        let live = live_ids(&self.state.nodes()?);
        let epoch = self.state.map_epoch(dataset.id)?;
        let command = Command::RestartJob {
            job,
            attempt,
            map: PartitionMap::split(dataset.spec.partitions, &live, epoch.next()),
            cause,
        };
        let response = propose::propose(&self.raft, &command).await?;
        if let Response::JobRestarted { attempt, epoch, .. } = &response {
            tracing::warn!(%job, attempt, %epoch, "job restarted: {cause}");
            metrics::counter!(JOB_RESTARTS_METRIC).increment(1);
            desk.cursors.clear();
        }
        Ok(response)
    }

    /// `node` starts its part of `job` after shards of `attempt` were
    /// done: the job runs again.
    pub async fn restart(
        &self,
        node: NodeId,
        job: JobId,
        attempt: u32,
    ) -> Result<Response, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = (self.clock)();
        self.take_over_if_new_term(&mut desk, now).await?;
        desk.nodes.touch(node, now);
        let cause = RestartCause::OwnerStartedAgain { node };
        self.restart_job(&mut desk, job, attempt, cause).await
    }

    /// A new leader term starts a fresh table from the state machine. A
    /// replica that is not the leader refuses (the caller redirects).
    async fn take_over_if_new_term(&self, desk: &mut Desk, now: u64) -> Result<(), DeskError> {
        if let Some(forward) = propose::not_the_leader(&self.raft) {
            return Err(forward.into());
        }
        let term = self.raft.metrics().borrow().current_term;
        if desk.term != Some(term) {
            // Everything the last leader committed is applied first, so
            // no grant of its is missing from the table.
            self.raft
                .ensure_linearizable()
                .await
                .map_err(|e| ProposeError::Raft(e.to_string()))?;
            let held = desk.table.take_over_from(&self.state, now)?;
            let live = self.state.nodes()?.into_iter().filter(|n| !n.lost);
            desk.nodes
                .take_over(live.map(|n| (n.info.id, n.info.incarnation)), now);
            tracing::info!(term, held, "lease desk taken over");
            desk.term = Some(term);
            desk.cursors.clear();
        }
        Ok(())
    }

    /// The `limit` live nodes of lowest id as this leader tracks them, for
    /// `status`; `None` on a follower, before the desk has taken over
    /// this term (it has served no node yet), or if it stays busy past
    /// `STATUS_DESK_WAIT`. Reads only: declares no node lost.
    pub async fn nodes_view(&self, limit: usize) -> Option<BTreeMap<NodeId, NodeView>> {
        if propose::not_the_leader(&self.raft).is_some() {
            return None;
        }
        let desk = tokio::time::timeout(STATUS_DESK_WAIT, self.desk.lock())
            .await
            .ok()?;
        let term = self.raft.metrics().borrow().current_term;
        (desk.term == Some(term)).then(|| desk.nodes.view(limit, (self.clock)()))
    }
}

/// What a grant came to.
enum Granted {
    Shards(Vec<LeasedShard>),
    Refused(String),
}

/// The ids of `nodes` not declared lost, in their order.
fn live_ids(nodes: &[Node]) -> Vec<NodeId> {
    nodes
        .iter()
        .filter(|n| !n.lost)
        .map(|n| n.info.id)
        .collect()
}
