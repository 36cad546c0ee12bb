//! An owner's staged parts of the coordinators' jobs, seen from the node:
//! reporting a part's counts, reading the coordinators' decision about it
//! ([`decide`]), and settling the parts a node finds staged in its store
//! when it starts ([`settle`]): a part whose job committed while the node
//! was down is published, one whose job moved on is discarded, and one
//! still undecided is reported again and waited for.
//!
//! Only a definite answer discards a part: a commit wait that runs out or
//! coordinators that cannot be reached leave it staged, since the job may
//! still commit with it.

use coordinator_client::{ClientError, CoordinatorClient, Transport};
use proto_schema::command::{Response, StagedCounts};
use proto_schema::coordinator_api::{JobPhase, JobStatus};
use proto_schema::ids::{JobId, NodeId};

use crate::store::catalog::{JobInfo, JobState, JobTotals};
use crate::store::staged::ClusterPart;
use crate::store::{Store, StoreError};

/// What the coordinators' view of a job means for a part staged in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The job committed in the part's attempt: publish.
    Publish,
    /// The job will never commit with this part: drop it, for this reason.
    Discard(String),
    /// Not decided yet.
    Wait,
}

/// The decision `status` (the coordinators' job `part.job`, `None` if they
/// know no such job) implies for `node`'s `part`, staged or still running
/// (a running part that would be discarded is over).
pub fn decide(status: Option<&JobStatus>, part: &ClusterPart, node: NodeId) -> Decision {
    let job = part.job;
    let Some(status) = status else {
        return Decision::Discard(format!("the coordinators know no job {job}"));
    };
    if status.began_ms != part.began_ms {
        return Decision::Discard(format!(
            "job {job} of the coordinators is another submission (began at {} ms, this node's \
             part's at {} ms)",
            status.began_ms, part.began_ms
        ));
    }
    let kept = kept_beside(status, part, node).is_some();
    if status.attempt != part.attempt && !kept {
        return Decision::Discard(format!(
            "job {job} was restarted ({}): attempt {} runs, this node's part is of attempt {}",
            status.restarted.as_deref().unwrap_or("no cause given"),
            status.attempt,
            part.attempt
        ));
    }
    match status.phase {
        JobPhase::Committed => Decision::Publish,
        JobPhase::Aborted => Decision::Discard(format!("job {job} was aborted")),
        JobPhase::Submitting | JobPhase::Scanning | JobPhase::Staging => Decision::Wait,
    }
}

/// The owner a recovering job lost, if `node`'s `part` is one of the
/// parts the recovery keeps: a recovering job keeps its base attempt's
/// parts under its base map, all but the lost owner's, whose partitions
/// are read again.
pub fn kept_beside(status: &JobStatus, part: &ClusterPart, node: NodeId) -> Option<NodeId> {
    status
        .recovery
        .filter(|r| {
            (r.base_attempt, r.base_epoch) == (part.attempt, part.map_epoch) && r.lost != node
        })
        .map(|r| r.lost)
}

/// Whether `status` asks `node` to read a lost owner's partitions again
/// while its `part` of the job's base attempt stays staged: that part
/// then ends undecided, and the node runs the recovery part.
pub fn recovers_here(status: &JobStatus, part: &ClusterPart, node: NodeId) -> bool {
    status.recovery.is_some_and(|r| {
        r.owner == node && r.base_attempt == part.attempt && status.attempt != part.attempt
    })
}

/// The counts an owner stages.
pub fn counts_of(totals: &JobTotals) -> StagedCounts {
    StagedCounts {
        read: totals.read,
        unique: totals.unique,
        duplicates: totals.duplicates,
        rejected: totals.rejected,
    }
}

/// Why a report of a staged part did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The coordinators could not be asked: the part stays staged.
    #[error("staging job {job}: {source}")]
    Unreachable { job: JobId, source: ClientError },
    /// The coordinators refused it: the part will never commit.
    #[error("staging job {job} refused: {answer}")]
    Refused { job: JobId, answer: String },
}

/// Reports `node`'s part `part` of a job with `counts` (again, if the
/// node reported it before it went down: a report replaces the last).
pub async fn report<T: Transport>(
    client: &mut CoordinatorClient<T>,
    node: NodeId,
    part: &ClusterPart,
    counts: StagedCounts,
) -> Result<(), ReportError> {
    let job = part.job;
    match client.stage(node, job, counts, part.map_epoch).await {
        Ok(Response::JobStaged { .. }) => Ok(()),
        Ok(Response::Error(e)) => Err(ReportError::Refused {
            job,
            answer: e.to_string(),
        }),
        Ok(other) => Err(ReportError::Refused {
            job,
            answer: format!("{other:?}"),
        }),
        Err(source) => Err(ReportError::Unreachable { job, source }),
    }
}

/// What [`settle`] did with a node's staged parts.
#[derive(Debug, Default)]
pub struct Settled {
    /// Committed while the node was away: now published.
    pub published: Vec<JobInfo>,
    /// Of jobs that moved on without them.
    pub discarded: Vec<JobInfo>,
    /// Jobs of the coordinators still deciding (or not reachable): the
    /// node must not run these again while its part waits (unless the job
    /// recovers a lost owner's partitions on this node).
    pub waiting: Vec<JobId>,
}

/// Settles every part staged in `store`, as `node`: publishes those whose
/// job committed in their attempt, discards those whose job moved on,
/// and reports the undecided ones again (the report may have been lost
/// with the node), leaving them staged.
pub async fn settle<T: Transport>(
    client: &mut CoordinatorClient<T>,
    store: &Store,
    node: NodeId,
) -> Result<Settled, StoreError> {
    let mut settled = Settled::default();
    for job in store.staged_jobs()? {
        let Some(part) = job.cluster.filter(|_| job.state == JobState::Staged) else {
            continue;
        };
        let status = match client.job(part.job).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(job = %part.job, "asking about a staged part: {e}");
                settled.waiting.push(part.job);
                continue;
            }
        };
        match decide(status.as_ref(), &part, node) {
            Decision::Publish => settled.published.push(store.publish_staged(&job)?),
            Decision::Discard(reason) => {
                settled.discarded.push(store.discard_staged(&job, reason)?);
            }
            Decision::Wait => {
                let counts = counts_of(&job.totals.unwrap_or_default());
                match report(client, node, &part, counts).await {
                    Err(ReportError::Refused { answer, .. }) => {
                        settled.discarded.push(store.discard_staged(&job, answer)?)
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        settled.waiting.push(part.job);
                    }
                    // The node may run the job's recovery part meanwhile.
                    Ok(())
                        if status
                            .as_ref()
                            .is_some_and(|s| recovers_here(s, &part, node)) => {}
                    Ok(()) => settled.waiting.push(part.job),
                }
            }
        }
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_schema::coordinator_api::JobRecovery;
    use proto_schema::ids::{Epoch, PartitionId};

    fn part() -> ClusterPart {
        ClusterPart {
            job: JobId(4),
            began_ms: 1000,
            attempt: 1,
            map_epoch: Epoch(2),
        }
    }

    fn status(phase: JobPhase, attempt: u32, began_ms: u64) -> JobStatus {
        JobStatus {
            id: JobId(4),
            dataset: "d".into(),
            began_ms,
            phase,
            new: 0,
            changed: 0,
            unchanged: 0,
            gone: 0,
            shards_pending: 0,
            shards_leased: 0,
            shards_done: 0,
            map_epoch: Some(Epoch(2)),
            unstaged: Vec::new(),
            staged: StagedCounts::default(),
            attempt,
            restarted: None,
            recovery: None,
        }
    }

    #[test]
    fn a_part_publishes_only_when_its_own_attempt_of_its_own_job_committed() {
        let part = part();
        let decided =
            |phase, attempt, began| decide(Some(&status(phase, attempt, began)), &part, NodeId(1));
        assert_eq!(decided(JobPhase::Committed, 1, 1000), Decision::Publish);
        assert_eq!(decided(JobPhase::Staging, 1, 1000), Decision::Wait);
        assert_eq!(decided(JobPhase::Scanning, 1, 1000), Decision::Wait);
        for (phase, attempt, began, why) in [
            (JobPhase::Committed, 2, 1000, "restarted"),
            (JobPhase::Staging, 2, 1000, "restarted"),
            (JobPhase::Committed, 1, 999, "another submission"),
            (JobPhase::Aborted, 1, 1000, "aborted"),
        ] {
            match decided(phase, attempt, began) {
                Decision::Discard(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{phase:?} attempt {attempt}: {other:?}"),
            }
        }
        assert!(
            matches!(decide(None, &part, NodeId(1)), Decision::Discard(r) if r.contains("know no job 4"))
        );
    }

    /// A job recovering a lost owner's partitions keeps the parts of its
    /// base attempt staged under its base map, and no other earlier part:
    /// not the lost owner's (staged before it came back, never reported).
    #[test]
    fn a_recovering_job_keeps_the_parts_of_its_base_attempt() {
        let recovering = |base_attempt, base_epoch, phase| JobStatus {
            recovery: Some(JobRecovery {
                base_attempt,
                base_epoch: Epoch(base_epoch),
                lost: NodeId(2),
                owner: NodeId(1),
                start: PartitionId(21),
                end: PartitionId(42),
            }),
            ..status(phase, 2, 1000)
        };
        let part = part();
        let decided = |status: JobStatus| decide(Some(&status), &part, NodeId(1));
        assert_eq!(
            decided(recovering(1, 2, JobPhase::Scanning)),
            Decision::Wait
        );
        assert_eq!(
            decided(recovering(1, 2, JobPhase::Committed)),
            Decision::Publish
        );
        for (base_attempt, base_epoch) in [(0, 2), (1, 1)] {
            let decision = decided(recovering(base_attempt, base_epoch, JobPhase::Committed));
            assert!(
                matches!(&decision, Decision::Discard(r) if r.contains("restarted")),
                "{decision:?}"
            );
        }
        let of_the_lost_owner = decide(
            Some(&recovering(1, 2, JobPhase::Committed)),
            &part,
            NodeId(2),
        );
        assert!(
            matches!(&of_the_lost_owner, Decision::Discard(r) if r.contains("restarted")),
            "{of_the_lost_owner:?}"
        );
    }
}
