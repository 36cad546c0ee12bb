//! The sampling thread: reads the allocator every [`SAMPLE_INTERVAL`], feeds
//! the governor, keeps peaks, and publishes the memory metrics.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::governor::Governor;
use super::process::ProcessMemory;
use super::tracking::{Account, TrackingAllocator, Usage};

/// How often the allocator is read and the governor updated.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
/// Metrics (and `/proc`) are refreshed every this many samples.
const PUBLISH_EVERY: u32 = 5;

/// Memory held outside the tracked heap, by name (RocksDB's block cache and
/// memtables).
pub type ExternalUsage = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send>;

/// Highest figures seen while the monitor ran.
#[derive(Debug, Clone, Default)]
pub struct MemoryPeaks {
    /// Tracked heap, all accounts.
    pub heap: u64,
    /// Anonymous resident memory (sampled every [`PUBLISH_EVERY`] ticks).
    pub anon: u64,
    /// Per account, largest first; accounts that never held memory left out.
    pub accounts: Vec<(String, u64)>,
}

pub struct Monitor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<MemoryPeaks>>,
}

impl Monitor {
    pub fn start(governor: Arc<Governor>, external: ExternalUsage) -> io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("quern-memory".into())
                .spawn(move || sample_until_stopped(&stop, &governor, &external))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and joins the thread; returns the peaks it saw.
    pub fn stop(mut self) -> MemoryPeaks {
        self.join()
    }

    fn join(&mut self) -> MemoryPeaks {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.join();
        }
    }
}

fn sample_until_stopped(
    stop: &(Mutex<bool>, Condvar),
    governor: &Governor,
    external: &ExternalUsage,
) -> MemoryPeaks {
    let mut peaks = Peaks::default();
    let mut tick = 0u32;
    let (flag, wake) = stop;
    let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let usage = Usage::read();
        governor.observe(usage.total());
        peaks.record(&usage);
        // The last sample is always published: a job shorter than one
        // publishing interval would otherwise leave its actors' figures
        // unpublished.
        let last = *stopped;
        if last || tick.is_multiple_of(PUBLISH_EVERY) {
            peaks.publish(&usage, external);
        }
        tick = tick.wrapping_add(1);
        if last {
            break;
        }
        stopped = wake
            .wait_timeout(stopped, SAMPLE_INTERVAL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    peaks.finish()
}

#[derive(Default)]
struct Peaks {
    heap: u64,
    anon: u64,
    accounts: Vec<(Account, u64)>,
}

impl Peaks {
    fn record(&mut self, usage: &Usage) {
        self.heap = self.heap.max(usage.total());
        for (account, live) in usage.accounts() {
            match self.accounts.iter_mut().find(|(a, _)| *a == account) {
                Some((_, peak)) => *peak = (*peak).max(live),
                None => self.accounts.push((account, live)),
            }
        }
    }

    fn publish(&mut self, usage: &Usage, external: &ExternalUsage) {
        metrics::gauge!("quern_allocator_live_bytes").set(usage.total() as f64);
        metrics::gauge!("quern_allocator_peak_bytes").set(self.heap as f64);
        metrics::gauge!("quern_allocator_committed_bytes")
            .set(TrackingAllocator::committed_bytes() as f64);
        for (account, live) in usage.accounts() {
            let peak = self
                .accounts
                .iter()
                .find(|(a, _)| *a == account)
                .map_or(live, |(_, p)| *p);
            let label = [("actor", account.name())];
            metrics::gauge!("quern_actor_live_bytes", &label).set(live as f64);
            metrics::gauge!("quern_actor_peak_bytes", &label).set(peak as f64);
        }
        if let Some(process) = ProcessMemory::read() {
            self.anon = self.anon.max(process.anon);
            metrics::gauge!("quern_process_anon_rss_bytes").set(process.anon as f64);
            metrics::gauge!("quern_process_file_rss_bytes").set(process.file as f64);
        }
        for (name, bytes) in external() {
            metrics::gauge!(name).set(bytes as f64);
        }
    }

    fn finish(self) -> MemoryPeaks {
        let mut accounts: Vec<(String, u64)> = self
            .accounts
            .into_iter()
            .filter(|(_, peak)| *peak > 0)
            .map(|(account, peak)| (account.name(), peak))
            .collect();
        accounts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        MemoryPeaks {
            heap: self.heap,
            anon: self.anon,
            accounts,
        }
    }
}
