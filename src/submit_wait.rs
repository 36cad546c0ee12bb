//! `quern submit --wait`: follows the submitted job until the coordinators
//! commit it (or it is aborted), within `--wait-timeout`, with a bar of
//! its shards on a terminal (a line every few seconds otherwise) saying
//! what it waits on; then prints the job's summary. The exit status is as
//! for `quern ingest`: 0 committed, `EXIT_REJECTED` committed with
//! rejected records, 1 aborted or not committed in time (naming what it
//! still waited on), `EXIT_INTERRUPTED` on Ctrl-C. Giving up the wait
//! never stops the job.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use coordinator_client::CoordinatorClient;
use coordinator_client::job_wait::{DEFAULT_WAIT_POLL, JobEnd, wait_for_end};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto_schema::coordinator_api::JobStatus;
use proto_schema::ids::JobId;

use crate::ingest::{EXIT_INTERRUPTED, EXIT_REJECTED};
use crate::progress::LOG_EVERY;
use crate::report::write_counts;
use crate::status::waits_on;

/// Waits for `job` of `dataset`; the exit status.
pub async fn wait(
    client: &mut CoordinatorClient,
    dataset: &str,
    job: JobId,
    timeout: Duration,
    bar: bool,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let mut watch = Watch::new(job, bar);
    let end = tokio::select! {
        end = wait_for_end(client, job, timeout, DEFAULT_WAIT_POLL, |s| watch.show(s)) => end,
        _ = tokio::signal::ctrl_c() => {
            watch.finish();
            tell!(
                "quern: stopped waiting (Ctrl-C); job {job} goes on (`quern status` follows it)"
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    watch.finish();
    Ok(match end? {
        JobEnd::Committed(status) => {
            print_summary(dataset, &status, started.elapsed())?;
            if status.staged.rejected == 0 {
                0
            } else {
                EXIT_REJECTED
            }
        }
        JobEnd::Aborted(_) => {
            tell!(
                "quern: job {job} of dataset {dataset:?} was aborted: its submission was \
                 abandoned before it finished, and none of it counts"
            );
            1
        }
        JobEnd::TimedOut(last) => {
            tell!("quern: {}", timed_out(job, timeout, last.as_ref()));
            1
        }
    })
}

/// Why a wait ran out, naming what the job still waited on.
fn timed_out(job: JobId, timeout: Duration, last: Option<&JobStatus>) -> String {
    let waited = humantime::format_duration(timeout);
    match last {
        None => format!(
            "no status of job {job} came back from the coordinators within {waited} \
             (--wait-timeout)"
        ),
        Some(status) => {
            let waits = waits_on(status).unwrap_or_else(|| "its submission".into());
            format!(
                "job {job} was not committed within {waited} (--wait-timeout): {}, waiting on \
                 {waits}; it goes on (`quern status` follows it)",
                status.phase.name()
            )
        }
    }
}

fn print_summary(dataset: &str, status: &JobStatus, elapsed: Duration) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let map = status
        .map_epoch
        .map_or_else(String::new, |epoch| format!(" under partition map {epoch}"));
    writeln!(
        out,
        "job {} of dataset {dataset:?} committed{map}: {} shards, after {:.1} s of waiting",
        status.id,
        status.shards_done,
        elapsed.as_secs_f64()
    )?;
    write_counts(&mut out, &status.staged, None)?;
    if status.staged.rejected > 0 {
        writeln!(
            out,
            "  the rejected records are listed by `quern stats --dataset {dataset}` on the nodes"
        )?;
    }
    Ok(())
}

/// The job's progress while waiting.
struct Watch {
    job: JobId,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Watch {
    fn new(job: JobId, bar: bool) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} job {prefix} [{bar:28}] {pos}/{len} shards {elapsed} {msg}",
                )
                .expect("progress template is valid")
                .progress_chars("=> "),
            );
            bar.set_prefix(job.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            job,
            bar,
            last_line: None,
        }
    }

    fn show(&mut self, status: &JobStatus) {
        let total = status.shards_pending + status.shards_leased + status.shards_done;
        let detail = match waits_on(status) {
            Some(waits) => format!("{}: waits on {waits}", status.phase.name()),
            None => status.phase.name().to_string(),
        };
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(status.shards_done);
                bar.set_message(detail);
            }
            None if self.last_line.is_none_or(|at| at.elapsed() >= LOG_EVERY) => {
                self.last_line = Some(Instant::now());
                tell!(
                    "quern: job {}: {}/{total} shards done, {detail}",
                    self.job,
                    status.shards_done
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::command::StagedCounts;
    use proto_schema::coordinator_api::JobPhase;
    use proto_schema::ids::{Epoch, NodeId};

    use super::*;

    fn status(phase: JobPhase) -> JobStatus {
        JobStatus {
            id: JobId(7),
            dataset: "ds".into(),
            began_ms: 0,
            phase,
            new: 3,
            changed: 0,
            unchanged: 0,
            gone: 0,
            shards_pending: 2,
            shards_leased: 1,
            shards_done: 0,
            map_epoch: Some(Epoch(4)),
            unstaged: vec![NodeId(2), NodeId(3)],
            staged: StagedCounts::default(),
            attempt: 0,
            restarted: None,
            recovery: None,
        }
    }

    #[test]
    fn a_wait_that_runs_out_names_what_the_job_waits_on() {
        let timeout = Duration::from_secs(90);
        let scanning = timed_out(JobId(7), timeout, Some(&status(JobPhase::Scanning)));
        assert_eq!(
            scanning,
            "job 7 was not committed within 1m 30s (--wait-timeout): scanning, waiting on 2 \
             shards pending, 1 leased; it goes on (`quern status` follows it)"
        );
        let staging = timed_out(JobId(7), timeout, Some(&status(JobPhase::Staging)));
        assert!(
            staging.contains("staging, waiting on node 2, 3 to stage under map 4"),
            "{staging}"
        );
        let submitting = timed_out(JobId(7), timeout, Some(&status(JobPhase::Submitting)));
        assert!(
            submitting.contains("waiting on its submission"),
            "{submitting}"
        );
        let silent = timed_out(JobId(7), timeout, None);
        assert!(
            silent.starts_with("no status of job 7 came back"),
            "{silent}"
        );
    }
}
