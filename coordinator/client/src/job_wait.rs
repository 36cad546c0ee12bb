//! Following a submitted job to its end (`quern submit --wait`): the
//! leader's view of the job is read every `poll` until the job is
//! committed or aborted, or the wait runs out. Each status read is handed
//! to the caller (for progress); a wait that runs out returns the last one,
//! which names what the job still waits on. The job itself goes on.

use std::time::Duration;

use proto_schema::coordinator_api::{JobPhase, JobStatus};
use proto_schema::ids::JobId;
use tokio::time::Instant;

use crate::client::{ClientError, CoordinatorClient};
use crate::transport::Transport;

/// Between two reads of a waited-on job's status.
pub const DEFAULT_WAIT_POLL: Duration = Duration::from_millis(500);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Committed(JobStatus),
    Aborted(JobStatus),
    /// Still running when the wait ran out: the last status read, if any
    /// came back in time.
    TimedOut(Option<JobStatus>),
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the coordinators know no job {0}")]
    UnknownJob(JobId),
}

/// Reads `job`'s status every `poll` until it ends or `timeout` passes,
/// calling `on_status` with each read.
pub async fn wait_for_end<T: Transport>(
    client: &mut CoordinatorClient<T>,
    job: JobId,
    timeout: Duration,
    poll: Duration,
    mut on_status: impl FnMut(&JobStatus),
) -> Result<JobEnd, WaitError> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let Ok(answer) = tokio::time::timeout_at(deadline, client.job(job)).await else {
            return Ok(JobEnd::TimedOut(last));
        };
        let status = answer?.ok_or(WaitError::UnknownJob(job))?;
        on_status(&status);
        match status.phase {
            JobPhase::Committed => return Ok(JobEnd::Committed(status)),
            JobPhase::Aborted => return Ok(JobEnd::Aborted(status)),
            JobPhase::Submitting | JobPhase::Scanning | JobPhase::Staging => {
                last = Some(status);
            }
        }
        if Instant::now() + poll >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Ok(JobEnd::TimedOut(last));
        }
        tokio::time::sleep(poll).await;
    }
}
