//! The client API one replica serves, whatever carried the request (the
//! QUIC endpoint in `service`, or the in-process `router`): writes are
//! proposed through Raft and answered once applied, by the leader only
//! (others redirect with `NotLeader`); status comes from the leader;
//! `Replica` from any replica; a node's requests (register, heartbeat,
//! lease, renew, complete, partition map) from the leader's `LeaseDesk`,
//! staging, job progress and the jobs to work on from the log and the
//! leader's state.
//! Every request passes `authorize` first, by its caller's certificate.
//! Raft RPCs are not client requests: transports serve them apart.

use std::sync::Arc;

use proto_schema::command::{self, Command, Response};
use proto_schema::coordinator_api::{
    Applied, LeaseReply, MAX_STATUS_NODES, Refusal, Reply, Request, StatusReport,
};
use proto_schema::ids::JobId;

use crate::authorize::{Caller, Gate, Subject};
use crate::clock::{self, Clock};
use crate::contacts::Contacts;
use crate::job_progress::JobClock;
use crate::lease_desk::{DeskError, LeaseDesk};
use crate::propose::{self, ProposeError};
use crate::state_reads::StateReads;
use crate::{Raft, StateMachineStore, status};

pub struct ClientApi {
    raft: Raft,
    state: StateMachineStore,
    desk: Arc<LeaseDesk>,
    contacts: Contacts,
    gate: Gate,
    reads: StateReads,
}

impl ClientApi {
    /// Serves `raft`'s replica, reading `state`; leases last `lease_ms`
    /// without a renewal; `contacts` are the peers' last answers, as the
    /// replica's network records them.
    pub fn new(raft: Raft, state: StateMachineStore, lease_ms: u64, contacts: Contacts) -> Self {
        Self::with_clock(raft, state, lease_ms, clock::system(), contacts)
    }

    /// `new`, with leases and liveness timed by `clock` (a test's).
    pub fn with_clock(
        raft: Raft,
        state: StateMachineStore,
        lease_ms: u64,
        clock: Clock,
        contacts: Contacts,
    ) -> Self {
        Self {
            desk: Arc::new(LeaseDesk::new(raft.clone(), state.clone(), lease_ms, clock)),
            raft,
            state,
            contacts,
            gate: Gate::default(),
            reads: StateReads::default(),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The progress the leader hears of jobs, for `job_progress::publish`.
    pub fn job_clock(&self) -> Arc<JobClock> {
        self.desk.job_clock()
    }

    /// This replica's own status report, through its whole-state reads.
    pub fn local_status(&self) -> LocalStatus {
        LocalStatus {
            raft: self.raft.clone(),
            state: self.state.clone(),
            contacts: self.contacts.clone(),
            reads: self.reads.clone(),
            desk: self.desk.clone(),
        }
    }

    /// Answers `caller`'s `request`, once `authorize` allows it.
    pub async fn answer(&self, caller: &Caller, request: &Request) -> Reply {
        if let Some(subject) = Subject::of_request(request)
            && let Err(forbidden) = self.gate.admit(caller, subject)
        {
            return Reply::Refused(Refusal::Forbidden(forbidden));
        }
        match request {
            Request::Raft(_) => Reply::Failed("a Raft RPC is not a client request".into()),
            Request::Write(bytes) => {
                // Before decoding: an entry replication could not carry.
                if let Err(e) = command::check_encoded_len(bytes.0.len()) {
                    return Reply::Refused(Refusal::Invalid(e));
                }
                let cmd = match bytes.decode() {
                    Ok(cmd) => cmd,
                    Err(e) => return Reply::Failed(e.to_string()),
                };
                if let Err(forbidden) = self.gate.admit(caller, Subject::of_command(&cmd)) {
                    return Reply::Refused(Refusal::Forbidden(forbidden));
                }
                self.propose(&cmd).await
            }
            Request::Status => self.status().await,
            Request::Register(registration) => written(self.desk.register(registration).await),
            Request::Heartbeat {
                node,
                incarnation,
                progress,
                memory_bytes,
            } => match self
                .desk
                .heartbeat(*node, *incarnation, progress.clone(), *memory_bytes)
                .await
            {
                Ok(reply) => Reply::Heartbeat(reply),
                Err(e) => desk_failed(e),
            },
            Request::Lease {
                node,
                max,
                job,
                map_epoch,
            } => desk_reply(self.desk.lease(*node, *max, *job, *map_epoch).await),
            Request::Renew { node, shard, epoch } => {
                desk_reply(self.desk.renew(*node, *shard, *epoch).await)
            }
            Request::Complete { node, shards } => written(self.desk.complete(*node, shards).await),
            Request::Stage {
                node,
                job,
                counts,
                map_epoch,
            } => {
                let stage = Command::StageJob {
                    job: *job,
                    node: *node,
                    counts: *counts,
                    map_epoch: *map_epoch,
                };
                let reply = self.propose(&stage).await;
                if let Reply::Written(Applied(Response::JobStaged {
                    job,
                    committed,
                    committing,
                })) = &reply
                    && (!committed || *committing)
                {
                    // A report repeated after the commit is no progress.
                    self.desk.staged(*job, *committed);
                }
                reply
            }
            Request::PartitionMap {
                node,
                dataset,
                job,
                lanes,
                part,
            } => match self
                .desk
                .partition_map(*node, dataset, *job, *lanes, *part)
                .await
            {
                Ok(Ok(map)) => Reply::PartitionMap(map),
                Ok(Err(reason)) => Reply::Failed(reason),
                Err(e) => desk_failed(e),
            },
            Request::Job { job } => self.job(*job).await,
            Request::Work { .. } => self.work().await,
            Request::Restart { node, job, attempt } => {
                written(self.desk.restart(*node, *job, *attempt).await)
            }
            Request::Replica => {
                let (raft, state) = (self.raft.clone(), self.state.clone());
                match self
                    .reads
                    .run("replica", move || status::replica_report(&raft, &state))
                    .await
                {
                    Ok(Ok(report)) => Reply::Replica(report),
                    Ok(Err(e)) => Reply::Failed(e.to_string()),
                    Err(e) => Reply::Failed(e),
                }
            }
        }
    }

    async fn propose(&self, cmd: &Command) -> Reply {
        match propose::propose(&self.raft, cmd).await {
            Ok(response) => Reply::Written(Applied(response)),
            Err(e) => write_refused(e),
        }
    }

    /// One job's progress, from the leader (so a node waiting for its
    /// commit reads what the leader applied), once a quorum confirmed it
    /// leads (`propose::confirm_leader`).
    async fn job(&self, job: JobId) -> Reply {
        if let Some(forward) = propose::confirm_leader(&self.raft).await {
            return write_refused(forward);
        }
        match status::job(&self.state, job) {
            Ok(found) => Reply::Job(found),
            Err(e) => Reply::Failed(e.to_string()),
        }
    }

    /// The jobs nodes may work on, from the leader (so a node does not
    /// start a job a stale follower, or a replaced leader, still lists).
    async fn work(&self) -> Reply {
        if let Some(forward) = propose::confirm_leader(&self.raft).await {
            return write_refused(forward);
        }
        match status::work(&self.state) {
            Ok(items) => Reply::Work(items),
            Err(e) => Reply::Failed(e.to_string()),
        }
    }

    /// The leader answers; a follower that knows the leader redirects, so
    /// the report carries the followers' health. Without a leader, the
    /// local view.
    async fn status(&self) -> Reply {
        if let Some(ProposeError::ForwardToLeader {
            leader: Some(leader),
            address: Some(address),
        }) = propose::not_the_leader(&self.raft)
        {
            return Reply::NotLeader {
                leader: Some(leader),
                address: Some(address),
            };
        }
        match self.local_status().report("status").await {
            Ok(report) => Reply::Status(report),
            Err(e) => Reply::Failed(e),
        }
    }
}

/// One replica's `StatusReport` as it sees it, never redirected to the
/// leader (a follower's has no health for the other members), read as a
/// whole-state read: it waits for a turn among `StateReads`' few, or is
/// refused as busy. The status page every replica serves reads it.
#[derive(Clone)]
pub struct LocalStatus {
    raft: Raft,
    state: StateMachineStore,
    contacts: Contacts,
    reads: StateReads,
    /// The leader's view of its nodes (`None` on a follower).
    desk: Arc<LeaseDesk>,
}

impl LocalStatus {
    /// `request` names the reader in `quern_state_reads_refused_total`.
    pub async fn report(&self, request: &'static str) -> Result<StatusReport, String> {
        let seen = self.desk.nodes_view(MAX_STATUS_NODES).await;
        let (raft, state, contacts) =
            (self.raft.clone(), self.state.clone(), self.contacts.clone());
        self.reads
            .run(request, move || {
                status::report(&raft, &state, &contacts, seen.as_ref())
            })
            .await?
            .map_err(|e| e.to_string())
    }
}

/// A failed write as the client sees it: a redirect, or the reason.
fn write_refused(error: ProposeError) -> Reply {
    match error {
        ProposeError::ForwardToLeader { leader, address } => Reply::NotLeader { leader, address },
        ProposeError::Invalid(e) => Reply::Refused(Refusal::Invalid(e)),
        e @ ProposeError::Raft(_) => Reply::Failed(e.to_string()),
    }
}

fn desk_reply(answer: Result<LeaseReply, DeskError>) -> Reply {
    match answer {
        Ok(reply) => Reply::Lease(reply),
        Err(e) => desk_failed(e),
    }
}

fn written(answer: Result<Response, DeskError>) -> Reply {
    match answer {
        Ok(response) => Reply::Written(Applied(response)),
        Err(e) => desk_failed(e),
    }
}

fn desk_failed(error: DeskError) -> Reply {
    match error {
        DeskError::Propose(e) => write_refused(e),
        e => Reply::Failed(e.to_string()),
    }
}
