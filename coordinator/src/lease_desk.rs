//! The leader's lease desk: hands shards to the nodes that ask for work
//! and renews their leases.
//!
//! A node asks for a lease (`lease`): the desk re-grants a shard whose
//! lease expired, else grants the next pending one, through the Raft log
//! (`GrantLease` moves the shard to the next epoch, which fences the old
//! holder). Renewals (`renew`) touch only the leader's `LeaseTable`: no
//! log write. Reports and completion are ordinary commands. The answers
//! are `proto_schema::coordinator_api::LeaseReply`s.
//!
//! The desk belongs to one leader term. On the first request of a new
//! term it takes the leases over from the state machine, each with a full
//! deadline (see `lease`), and scans for pending shards from the start
//! again. Within a term its cursor only moves forward: shards below it are
//! leased or done, and a leased shard comes back through expiry, never as
//! pending.

use std::time::{SystemTime, UNIX_EPOCH};

use proto_schema::command::{CommandError, Response};
use proto_schema::coordinator_api::{LeaseReply, LeasedShard};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};
use tokio::sync::Mutex;

use crate::lease::LeaseTable;
use crate::propose::{self, ProposeError};
use crate::state::StateError;
use crate::state::records::{JobState, ShardState};
use crate::{Raft, StateMachineStore};

/// How long a lease lasts without a renewal, unless configured.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Shards read per step of the scan for pending work.
const SCAN_PAGE: usize = 1024;
/// Shards a single request may skip before answering `NoWork` for now:
/// bounds how long a request holds the desk.
const SCAN_LIMIT: usize = 64 * SCAN_PAGE;

/// Grants by the leader's desk (label `kind`: pending or expired).
pub const LEASE_GRANTS_METRIC: &str = "quern_lease_grants_total";
/// Renewals answered (label `outcome`: renewed or refused).
pub const LEASE_RENEWALS_METRIC: &str = "quern_lease_renewals_total";

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
    /// No pending shard has an id below this.
    cursor: ShardId,
}

pub struct LeaseDesk {
    raft: Raft,
    state: StateMachineStore,
    desk: Mutex<Desk>,
}

impl LeaseDesk {
    pub fn new(raft: Raft, state: StateMachineStore, lease_ms: u64) -> Self {
        Self {
            raft,
            state,
            desk: Mutex::new(Desk {
                term: None,
                table: LeaseTable::new(lease_ms),
                cursor: ShardId(0),
            }),
        }
    }

    /// Leases a shard to `node`: an expired one first, else the next
    /// pending one.
    pub async fn lease(&self, node: NodeId) -> Result<LeaseReply, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = now_ms();
        self.take_over_if_new_term(&mut desk, now).await?;
        for (shard, epoch) in desk.table.expired(now) {
            if let Some(reply) = self.grant(&mut desk, shard, epoch, node, now).await? {
                metrics::counter!(LEASE_GRANTS_METRIC, "kind" => "expired").increment(1);
                return Ok(reply);
            }
        }
        let mut skipped = 0;
        while skipped < SCAN_LIMIT {
            let page = self.state.shards_after(desk.cursor, SCAN_PAGE)?;
            let Some(last) = page.last().map(|s| s.id) else {
                break;
            };
            for shard in page {
                skipped += 1;
                if shard.state != ShardState::Pending || self.aborted(shard.job)? {
                    desk.cursor = shard.id;
                    continue;
                }
                if let Some(reply) = self
                    .grant(&mut desk, shard.id, shard.epoch, node, now)
                    .await?
                {
                    metrics::counter!(LEASE_GRANTS_METRIC, "kind" => "pending").increment(1);
                    return Ok(reply);
                }
                desk.cursor = shard.id;
            }
            desk.cursor = desk.cursor.max(last);
        }
        Ok(LeaseReply::NoWork)
    }

    /// Extends `node`'s lease of `shard` at `epoch`; no log write.
    pub async fn renew(
        &self,
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<LeaseReply, DeskError> {
        let mut desk = self.desk.lock().await;
        let now = now_ms();
        self.take_over_if_new_term(&mut desk, now).await?;
        let (reply, outcome) = match desk.table.renew(shard, node, epoch, now) {
            Ok(deadline_ms) => (LeaseReply::Renewed { deadline_ms }, "renewed"),
            Err(e) => (LeaseReply::Refused(e.to_string()), "refused"),
        };
        metrics::counter!(LEASE_RENEWALS_METRIC, "outcome" => outcome).increment(1);
        Ok(reply)
    }

    /// Proposes the grant of `shard` (now at `epoch`). `None`: the shard
    /// cannot be leased any more (done, aborted, or granted meanwhile);
    /// try another.
    async fn grant(
        &self,
        desk: &mut Desk,
        shard: ShardId,
        epoch: Epoch,
        node: NodeId,
        now: u64,
    ) -> Result<Option<LeaseReply>, DeskError> {
        let command = desk.table.grant(shard, node, epoch, now);
        match propose::propose(&self.raft, &command).await? {
            Response::LeaseGranted {
                epoch, deadline_ms, ..
            } => {
                desk.table.granted(shard, node, epoch, deadline_ms);
                let granted = self.state.shard(shard)?.ok_or_else(|| {
                    StateError::Inconsistent(format!("granted shard {shard} is missing"))
                })?;
                Ok(Some(LeaseReply::Leased(LeasedShard {
                    shard,
                    job: granted.job,
                    dataset_id: granted.dataset_id,
                    path: granted.path,
                    start: granted.start,
                    end: granted.end,
                    checkpoint: granted.checkpoint,
                    epoch,
                    deadline_ms,
                })))
            }
            Response::Error(
                CommandError::ShardDone { .. }
                | CommandError::SubmissionAborted { .. }
                | CommandError::StaleEpoch { .. },
            ) => {
                desk.table.completed(shard);
                Ok(None)
            }
            Response::Error(e) => Ok(Some(LeaseReply::Refused(e.to_string()))),
            other => Ok(Some(LeaseReply::Refused(format!(
                "unexpected answer {other:?}"
            )))),
        }
    }

    fn aborted(&self, job: JobId) -> Result<bool, StateError> {
        Ok(self
            .state
            .job(job)?
            .is_some_and(|j| j.state == JobState::Aborted))
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
            tracing::info!(term, held, "lease desk taken over");
            desk.term = Some(term);
            desk.cursor = ShardId(0);
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
