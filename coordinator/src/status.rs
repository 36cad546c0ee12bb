//! Building what `quern status` shows (`StatusReport`: the Raft view and
//! the work) and a replica's own view (`ReplicaReport`), from this
//! replica's Raft metrics and its applied state.

use std::collections::BTreeMap;

use proto_schema::coordinator_api::{
    DatasetStatus, JobStatus, MAX_WORK_ITEMS, MemberStatus, ReplicaReport, StatusReport, WorkItem,
};
use proto_schema::ids::{DatasetId, JobId};

use crate::contacts::Contacts;
use crate::state::records::{Job, JobState};
use crate::state::{StateError, StateMachineStore};
use crate::{Raft, ReplicaId};

/// Jobs listed, newest first, across all datasets.
pub const RECENT_JOBS: usize = 50;

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
    let voters: Vec<ReplicaId> = membership.voter_ids().collect();
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
    let names: BTreeMap<DatasetId, String> = datasets
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

/// One job's status, or `None` if there is no such job.
pub fn job(state: &StateMachineStore, id: JobId) -> Result<Option<JobStatus>, StateError> {
    let Some(job) = state.job(id)? else {
        return Ok(None);
    };
    let names: BTreeMap<DatasetId, String> = state
        .datasets()?
        .into_iter()
        .map(|d| (d.id, d.spec.name))
        .collect();
    let leased = state.leased_per_job()?.get(&id).copied().unwrap_or(0);
    Ok(Some(job_status(&job, &names, leased)))
}

/// The jobs nodes may work on: submitted, neither committed nor aborted,
/// oldest first, among the `RECENT_JOBS` newest; at most `MAX_WORK_ITEMS`.
pub fn work(state: &StateMachineStore) -> Result<Vec<WorkItem>, StateError> {
    let specs: BTreeMap<DatasetId, _> = state
        .datasets()?
        .into_iter()
        .map(|d| (d.id, d.spec))
        .collect();
    let mut jobs = state.recent_jobs(RECENT_JOBS)?;
    jobs.retain(|job| job.state == JobState::Submitted);
    jobs.sort_by_key(|job| job.id);
    Ok(jobs
        .into_iter()
        .filter_map(|job| {
            let spec = specs.get(&job.dataset_id)?.clone();
            Some(WorkItem { job: job.id, spec })
        })
        .take(MAX_WORK_ITEMS)
        .collect())
}

fn job_status(job: &Job, names: &BTreeMap<DatasetId, String>, leased: u64) -> JobStatus {
    JobStatus {
        id: job.id,
        dataset: names.get(&job.dataset_id).cloned().unwrap_or_default(),
        began_ms: job.began_ms,
        submitting: job.state == JobState::Submitting,
        committed: job.state == JobState::Committed,
        aborted: job.state == JobState::Aborted,
        new: job.counts.new,
        changed: job.counts.changed,
        unchanged: job.counts.unchanged,
        gone: job.gone,
        shards_pending: job.shards_total.saturating_sub(job.shards_done + leased),
        shards_leased: leased,
        shards_done: job.shards_done,
        attempt: job.attempt,
        restarted: job.restarted.map(|cause| cause.to_string()),
    }
}
