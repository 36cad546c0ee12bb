//! Progress of a running job: a bar on a terminal, a log line every few
//! seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use node::counters::JobCounters;
use node::memory::ProcessMemory;

use crate::logging::LogTarget;

pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: LogTarget,
}

const BAR_TICK: Duration = Duration::from_millis(200);
/// Between two progress lines when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Reports `counters` until [`Progress::finish`]. A bar needs stderr to
    /// be a terminal and `bar` to be true.
    pub fn start(counters: Arc<JobCounters>, bar: bool, log: &LogTarget) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:8} [{bar:28}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("progress template is valid")
                .progress_chars("=> "),
            );
            bar
        });
        log.show_above(bar.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || report_until(&stop, &counters, bar))
        };
        Self {
            stop,
            thread: Some(thread),
            log: log.clone(),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.log.show_above(None);
    }
}

fn report_until(stop: &AtomicBool, counters: &JobCounters, bar: Option<ProgressBar>) {
    let started = Instant::now();
    let mut last_log = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(BAR_TICK);
        let get = JobCounters::get;
        let (scanned, listed, read, merged) = (
            get(&counters.bytes_scanned),
            get(&counters.bytes_listed),
            get(&counters.read),
            get(&counters.merged),
        );
        let phase = if merged == 0 { "scanning" } else { "merging" };
        let rate = read as f64 / started.elapsed().as_secs_f64().max(0.001);
        let memory = ProcessMemory::read().map_or(String::new(), |m| {
            format!(", memory {} anon", ByteSize(m.anon).display().iec())
        });
        let detail = if merged == 0 {
            format!("{read} records ({rate:.0}/s){memory}")
        } else {
            format!("{merged}/{read} records merged{memory}")
        };
        match &bar {
            Some(bar) => {
                bar.set_prefix(phase);
                bar.set_length(listed.max(scanned));
                bar.set_position(scanned);
                bar.set_message(detail);
            }
            None if last_log.elapsed() >= LOG_EVERY => {
                last_log = Instant::now();
                tell!(
                    "quern: {phase}: {} of {} read, {detail}",
                    ByteSize(scanned).display().iec(),
                    ByteSize(listed).display().iec()
                );
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
