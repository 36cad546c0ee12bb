//! The threads a job runs on. Each job gets a tokio runtime of its own,
//! shut down when the job ends, so that:
//!
//! - no task or thread of a job outlives it (a stage that will not stop is
//!   named by the job and abandoned after [`SHUTDOWN_GRACE`]);
//! - the memory its threads' allocator pages held goes back to the OS with
//!   them. mimalloc reclaims a page emptied by another thread's frees only
//!   when the page's owner allocates again or exits, so the idle threads of
//!   a shared runtime would keep a job's pages for ever (measured: +5 MiB of
//!   resident memory per job, with the heap back at 0.1 MiB).
//!
//! While the job runs, a worker about to sleep collects its own heap, so
//! pages emptied by the other stages do not wait for the job's end.

use std::io;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::memory::TrackingAllocator;

/// How long the runtime waits for its threads once the job has ended. The
/// job has already waited its shutdown timeout for its stages; a thread
/// still busy now is one of those it named.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A multi-threaded runtime with `threads` workers (at least two: a stage
/// in blocking work must not leave the job without a worker).
pub fn build(threads: usize) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(2))
        .thread_name("quern-job")
        .on_thread_park(|| TrackingAllocator::collect_thread_heap(false))
        .enable_all()
        .build()
}
