//! What `quern status` shows: the Raft view (leader, term, members with
//! the leader's matched index and last contact) and the work (datasets,
//! recent jobs with pending / leased / done shards). Built by the replica
//! that answers, from its Raft metrics and its applied state; only the
//! leader knows its followers' health, so other replicas redirect.
//!
//! `ReplicaReport` is one replica's own view, which every replica answers
//! without redirecting: the index its state has applied and a digest of
//! that state, so replicas can be compared (equal indexes, equal digests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::records::{Job, JobState};
use crate::state::{StateError, StateMachineStore};
use crate::transport::Contacts;
use crate::{NodeId, Raft};

/// Jobs listed, newest first, across all datasets.
pub const RECENT_JOBS: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The replica that answered.
    pub replica: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub datasets: Vec<DatasetStatus>,
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    /// The last log index the leader knows this member holds.
    pub matched_index: Option<u64>,
    /// Milliseconds since the leader last heard from it (0 for itself).
    pub last_contact_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStatus {
    pub name: String,
    pub id: u32,
    pub format: String,
    pub open_submission: Option<u64>,
    /// Files the last finished submission listed.
    pub files: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub dataset: String,
    /// The submitter's clock when it began the submission (ms since the
    /// epoch); a submitter recognises its own submission by it.
    pub began_ms: u64,
    pub submitting: bool,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub gone: u64,
    pub shards_pending: u64,
    pub shards_leased: u64,
    pub shards_done: u64,
}

/// One replica's own view of itself, for comparing replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: NodeId,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last log index applied to the state the digest covers.
    pub last_applied: Option<u64>,
    /// Records in the replicated state (catalogue entries, jobs, shards, ...).
    pub state_records: u64,
    /// XXH3 of the replicated state's records.
    pub state_hash: u64,
}

/// This replica's own view. Reads the whole state: blocking, and seconds
/// for millions of catalogue entries.
pub fn replica_report(raft: &Raft, state: &StateMachineStore) -> Result<ReplicaReport, StateError> {
    let metrics = raft.metrics().borrow().clone();
    let (last_applied, digest) = state.applied_digest()?;
    Ok(ReplicaReport {
        replica: metrics.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied,
        state_records: digest.records,
        state_hash: digest.hash,
    })
}

/// This replica's report.
pub fn report(
    raft: &Raft,
    state: &StateMachineStore,
    contacts: &Contacts,
) -> Result<StatusReport, StateError> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, node)| {
            let is_self = id == metrics.id;
            let matched_index = match &metrics.replication {
                _ if is_self => metrics.last_log_index,
                Some(replication) => replication.get(&id).copied().flatten().map(|l| l.index),
                None => None,
            };
            MemberStatus {
                id,
                address: node.addr.clone(),
                voter: voters.contains(&id),
                matched_index,
                last_contact_ms: if is_self {
                    Some(0)
                } else {
                    contacts.since(id).map(|d| d.as_millis() as u64)
                },
            }
        })
        .collect();
    let datasets = state.datasets()?;
    let names: BTreeMap<u32, String> = datasets
        .iter()
        .map(|d| (d.id, d.spec.name.clone()))
        .collect();
    let leased = state.leased_per_job()?;
    let jobs = state
        .recent_jobs(RECENT_JOBS)?
        .into_iter()
        .map(|job| job_status(&job, &names, leased.get(&job.id).copied().unwrap_or(0)))
        .collect();
    Ok(StatusReport {
        replica: metrics.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        last_applied: metrics.last_applied.map(|l| l.index),
        members,
        datasets: datasets
            .into_iter()
            .map(|d| DatasetStatus {
                format: format!("{:?}", d.spec.format).to_lowercase(),
                name: d.spec.name,
                id: d.id,
                open_submission: d.open_submission,
                files: d.live_files,
            })
            .collect(),
        jobs,
    })
}

fn job_status(job: &Job, names: &BTreeMap<u32, String>, leased: u64) -> JobStatus {
    JobStatus {
        id: job.id,
        dataset: names.get(&job.dataset_id).cloned().unwrap_or_default(),
        began_ms: job.began_ms,
        submitting: job.state == JobState::Submitting,
        new: job.counts.new,
        changed: job.counts.changed,
        unchanged: job.counts.unchanged,
        gone: job.gone,
        shards_pending: job.shards_total.saturating_sub(job.shards_done + leased),
        shards_leased: leased,
        shards_done: job.shards_done,
    }
}
