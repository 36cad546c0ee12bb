//! Whether the cluster's jobs move, as the leader sees them: a counter of
//! progress events, the running jobs, and the seconds since the oldest
//! running job last progressed, so that an alert can tell a job stalled
//! without a restart. Nodes work on the oldest running job first, so the
//! jobs queued behind it do not count as stalled; when it commits (or is
//! aborted), the next one's clock starts.
//!
//! Progress is what the leader hears of a job: a heartbeat that moves a
//! leased shard's scanned offset, a shard done, an owner's part staged
//! (the last one commits the job). An owner merging its part says nothing
//! until it stages: the merge shows on the node, in
//! `quern_job_records{outcome="merged"}`. The clock is the leader's memory
//! only: a new leader starts it again, as it gives every node a fresh
//! deadline. One task per replica publishes the gauges (zero on a
//! follower); `Service` stops and joins it when it shuts down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use proto_schema::ids::JobId;
use tokio::task::JoinHandle;

use crate::state::StateError;
use crate::state::records::JobState;
use crate::status::RECENT_JOBS;
use crate::{Raft, StateMachineStore};

/// Counter, on the leader: progress heard of jobs (label `event`:
/// scanned, shard_done, staged, committed).
pub const JOB_PROGRESS_METRIC: &str = "quern_job_progress_total";
/// Gauge, on the leader: seconds since the oldest running job last
/// progressed; 0 when no job runs, and on followers.
pub const JOB_PROGRESS_AGE_METRIC: &str = "quern_job_progress_age_seconds";
/// Gauge, on the leader: jobs submitted and neither committed nor
/// aborted (among the `RECENT_JOBS` newest).
pub const JOBS_RUNNING_METRIC: &str = "quern_jobs_running";
/// How often the gauges are set.
pub const JOB_PROGRESS_REFRESH: Duration = Duration::from_secs(5);

/// Every metric this module records, for the catalogue checks.
pub const METRICS: [&str; 3] = [
    JOB_PROGRESS_METRIC,
    JOB_PROGRESS_AGE_METRIC,
    JOBS_RUNNING_METRIC,
];

pub fn describe_metrics() {
    metrics::describe_counter!(
        JOB_PROGRESS_METRIC,
        "On the leader: progress heard of jobs (label event: scanned, a heartbeat moved a \
         leased shard's offset; shard_done; staged, an owner staged its part; committed, the \
         stage report that found its job committed)."
    );
    metrics::describe_gauge!(
        JOB_PROGRESS_AGE_METRIC,
        metrics::Unit::Seconds,
        "On the leader: seconds since the oldest running job last progressed (a scanned \
         offset moved, a shard done, an owner staged); 0 with no job running, and on followers."
    );
    metrics::describe_gauge!(
        JOBS_RUNNING_METRIC,
        "On the leader: jobs submitted and neither committed nor aborted."
    );
}

/// What the leader heard a job do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A heartbeat moved a leased shard's scanned offset.
    Scanned,
    ShardDone,
    /// An owner staged its part, and the job is not committed yet.
    Staged,
    /// A stage report found its job committed.
    Committed,
}

impl Progress {
    fn label(self) -> &'static str {
        match self {
            Self::Scanned => "scanned",
            Self::ShardDone => "shard_done",
            Self::Staged => "staged",
            Self::Committed => "committed",
        }
    }
}

/// The leader's clock of the oldest running job, shared by the lease desk
/// (which hears the progress) and the task publishing the gauges.
#[derive(Debug, Default)]
pub struct JobClock(Mutex<Clock>);

#[derive(Debug, Default)]
struct Clock {
    /// The leader term the clock belongs to.
    term: Option<u64>,
    /// The oldest running job and when it last progressed (ms).
    oldest: Option<(JobId, u64)>,
}

impl JobClock {
    /// Counts `count` progress events of one kind.
    pub fn count(&self, event: Progress, count: u64) {
        metrics::counter!(JOB_PROGRESS_METRIC, "event" => event.label()).increment(count);
    }

    /// The job whose progress moves the clock, if one runs.
    pub fn oldest(&self) -> Option<JobId> {
        self.lock().oldest.map(|(job, _)| job)
    }

    /// `job` progressed at `now_ms`: the clock starts again if it is the
    /// oldest running job.
    pub fn moved(&self, job: JobId, now_ms: u64) {
        if let Some((oldest, last)) = &mut self.lock().oldest
            && *oldest == job
        {
            *last = (*last).max(now_ms);
        }
    }

    /// Seconds since `oldest` (the oldest running job) last progressed, as
    /// of `now_ms`, on the leader of `term` (`None`: not leading, 0). A
    /// job the clock has not followed yet, or a new term, starts it now.
    fn age(&self, term: Option<u64>, oldest: Option<JobId>, now_ms: u64) -> f64 {
        let mut clock = self.lock();
        if clock.term != term {
            *clock = Clock { term, oldest: None };
        }
        let (Some(_), Some(job)) = (term, oldest) else {
            clock.oldest = None;
            return 0.0;
        };
        let last = match clock.oldest {
            Some((followed, last)) if followed == job => last,
            _ => now_ms,
        };
        clock.oldest = Some((job, last));
        now_ms.saturating_sub(last) as f64 / 1000.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The task publishing a replica's job gauges; stopped and joined by
/// `stop`.
pub struct JobProgressTask(JoinHandle<()>);

/// Sets the gauges every `JOB_PROGRESS_REFRESH` from `state`'s running
/// jobs and `clock`, while this replica leads (zero otherwise).
pub fn publish(raft: Raft, state: StateMachineStore, clock: Arc<JobClock>) -> JobProgressTask {
    JobProgressTask(tokio::spawn(async move {
        let running_gauge = metrics::gauge!(JOBS_RUNNING_METRIC);
        let age_gauge = metrics::gauge!(JOB_PROGRESS_AGE_METRIC);
        loop {
            let term = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.state == ServerState::Leader).then_some(m.current_term)
            };
            let running = match term {
                Some(_) => running_jobs(&state),
                None => Ok(Vec::new()),
            };
            match running {
                Ok(running) => {
                    let oldest = running.iter().min().copied();
                    let age = clock.age(term, oldest, crate::clock::system_ms());
                    running_gauge.set(running.len() as f64);
                    age_gauge.set(age);
                }
                Err(e) => tracing::warn!("reading the running jobs: {e}"),
            }
            tokio::time::sleep(JOB_PROGRESS_REFRESH).await;
        }
    }))
}

/// The jobs submitted and neither committed nor aborted, among the
/// `RECENT_JOBS` newest (as nodes are offered them).
fn running_jobs(state: &StateMachineStore) -> Result<Vec<JobId>, StateError> {
    Ok(state
        .recent_jobs(RECENT_JOBS)?
        .into_iter()
        .filter(|job| job.state == JobState::Submitted)
        .map(|job| job.id)
        .collect())
}

impl JobProgressTask {
    pub async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: Option<u64> = Some(3);

    #[test]
    fn the_clock_follows_the_oldest_running_job_and_its_progress() {
        let clock = JobClock::default();
        assert_eq!(clock.age(TERM, None, 1_000), 0.0, "no job runs");
        assert_eq!(clock.oldest(), None);
        // Job 5 runs from 2 s; 12 s later it has not moved.
        assert_eq!(clock.age(TERM, Some(JobId(5)), 2_000), 0.0);
        assert_eq!(clock.oldest(), Some(JobId(5)));
        assert_eq!(clock.age(TERM, Some(JobId(5)), 14_000), 12.0);
        // Progress of a job queued behind it does not count; its own does.
        clock.moved(JobId(6), 15_000);
        assert_eq!(clock.age(TERM, Some(JobId(5)), 16_000), 14.0);
        clock.moved(JobId(5), 15_000);
        assert_eq!(clock.age(TERM, Some(JobId(5)), 16_000), 1.0);
        // Heard out of order: the latest progress stands.
        clock.moved(JobId(5), 10_000);
        assert_eq!(clock.age(TERM, Some(JobId(5)), 16_000), 1.0);
        // Job 5 commits: job 6, queued since, starts its clock now.
        assert_eq!(clock.age(TERM, Some(JobId(6)), 20_000), 0.0);
        assert_eq!(clock.age(TERM, Some(JobId(6)), 50_500), 30.5);
    }

    #[test]
    fn a_follower_reports_nothing_and_a_new_term_starts_the_clock_again() {
        let clock = JobClock::default();
        clock.age(TERM, Some(JobId(1)), 0);
        assert_eq!(clock.age(TERM, Some(JobId(1)), 60_000), 60.0);
        assert_eq!(clock.age(None, Some(JobId(1)), 61_000), 0.0, "a follower");
        assert_eq!(clock.oldest(), None, "progress is no longer followed");
        clock.moved(JobId(1), 61_500);
        assert_eq!(
            clock.age(Some(4), Some(JobId(1)), 70_000),
            0.0,
            "leads again"
        );
        assert_eq!(clock.age(Some(4), Some(JobId(1)), 75_000), 5.0);
        // A term change without a step down in between starts it too.
        assert_eq!(clock.age(Some(6), Some(JobId(1)), 80_000), 0.0);
    }

    #[test]
    fn events_are_counted_by_kind() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let clock = JobClock::default();
            clock.count(Progress::Scanned, 3);
            clock.count(Progress::ShardDone, 2);
            clock.count(Progress::Committed, 1);
        });
        let text = handle.render();
        for line in [
            "quern_job_progress_total{event=\"scanned\"} 3",
            "quern_job_progress_total{event=\"shard_done\"} 2",
            "quern_job_progress_total{event=\"committed\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
