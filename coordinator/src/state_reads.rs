//! Whole-state reads a client may ask for (`Status`: every dataset and
//! recent job; `Replica`: a digest of every state record). Each costs work
//! in proportion to the state, so a replica runs at most
//! `MAX_CONCURRENT_STATE_READS` at once, off the async threads, and a
//! request waits at most `STATE_READ_WAIT` for its turn: past that it is
//! refused as busy and counted, instead of queueing work without bound. A
//! request whose client gives up stops waiting with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Whole-state reads one replica runs at once.
pub const MAX_CONCURRENT_STATE_READS: usize = 2;
/// How long a whole-state read waits for its turn before it is refused.
pub const STATE_READ_WAIT: Duration = Duration::from_secs(2);
/// Counter of whole-state reads refused as busy (label `request`).
pub const STATE_READS_REFUSED_METRIC: &str = "quern_state_reads_refused_total";

pub fn describe_metrics() {
    metrics::describe_counter!(
        STATE_READS_REFUSED_METRIC,
        "Whole-state reads (status, replica) refused because the replica already ran its \
         limit of them for longer than a request may wait (label request)."
    );
}

#[derive(Clone)]
pub struct StateReads {
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl Default for StateReads {
    fn default() -> Self {
        Self::new(MAX_CONCURRENT_STATE_READS, STATE_READ_WAIT)
    }
}

impl StateReads {
    pub fn new(max_concurrent: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            wait,
        }
    }

    /// Runs `read` on a blocking thread once a turn is free, or says why
    /// not.
    pub async fn run<T: Send + 'static>(
        &self,
        request: &'static str,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let permit = match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err("the replica is shutting down".into()),
            Err(_) => {
                metrics::counter!(STATE_READS_REFUSED_METRIC, "request" => request).increment(1);
                return Err(format!(
                    "busy: {request} reads the whole state and this replica already runs \
                         its limit of such reads; ask again later"
                ));
            }
        };
        tokio::task::spawn_blocking(move || {
            let _turn = permit;
            read()
        })
        .await
        .map_err(|e| format!("reading the state: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn reads_past_the_limit_wait_their_turn_then_are_refused() {
        let reads = StateReads::new(1, Duration::from_millis(100));
        let (release, held) = mpsc::channel::<()>();
        let slow = {
            let reads = reads.clone();
            tokio::spawn(async move { reads.run("status", move || held.recv().is_ok()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = reads.run("replica", || 1).await.unwrap_err();
        assert!(refused.starts_with("busy: replica"), "{refused}");
        // Once the turn is free, the next read runs.
        release.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), Ok(true));
        assert_eq!(reads.run("replica", || 2).await, Ok(2));
    }
}
