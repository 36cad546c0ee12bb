//! `quern submit` and `quern abort`: the command line of
//! `coordinator_client`'s submission protocol. Reads the manifest (or
//! walks the directory) in path order, validating it whole before
//! anything is sent; creates the dataset if missing; submits with a
//! progress bar; prints new, changed, unchanged and gone files, the
//! shards made pending, elapsed time and files per second. With `--wait`,
//! then follows the job to its commit (`submit_wait`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use coordinator_client::inventory;
use coordinator_client::path_order::SortMemory;
use coordinator_client::submission::{self, AbortedOpen, SubmitEvent, SubmitOptions, Summary};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto_schema::command::{DatasetFormat, DatasetSpec, KeySpec};
use proto_schema::ids::JobId;

use crate::args::{AbortArgs, FormatArg, SubmitArgs};
use crate::{cluster_client, submit_wait};

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let memory = SortMemory {
        bytes: usize::try_from(args.sort_memory).unwrap_or(usize::MAX),
        temp_dir: args.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let inventory = match (&args.manifest, &args.dir) {
        (Some(path), _) => inventory::read_manifest(path, &memory)?,
        (None, Some(dir)) => inventory::read_walk(dir, &memory)?,
        (None, None) => bail!("give --manifest FILE or a directory"),
    };
    let runtime = cluster_client::runtime()?;
    runtime.block_on(async {
        let mut client = cluster_client::connect(&args.client)?;
        if let Some(id) = submission::ensure_dataset(&mut client, dataset_spec(&args)).await? {
            tell!("created dataset {:?} (id {id})", args.dataset);
        }
        let progress = progress_bar(inventory.files(), !args.no_progress);
        let options = SubmitOptions {
            chunks_in_flight: args.chunks_in_flight.into(),
            ..SubmitOptions::default()
        };
        let on_event = |event| match event {
            SubmitEvent::ChunkApplied { files } => progress.inc(files),
            SubmitEvent::LostBeginAborted { submission } => tell!(
                "aborted submission {submission}, begun by this command before the \
                 coordinator's answer was lost"
            ),
        };
        let summary =
            submission::submit(&mut client, &args.dataset, inventory, &options, on_event).await;
        progress.finish_and_clear();
        let summary = summary?;
        print_summary(&args.dataset, &summary, started.elapsed())?;
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let code = submit_wait::wait(
            &mut client,
            &args.dataset,
            summary.submission,
            args.wait_timeout,
            !args.no_progress,
        )
        .await?;
        Ok(ExitCode::from(code))
    })
}

/// A new dataset's format and key, from the flags.
fn dataset_spec(args: &SubmitArgs) -> DatasetSpec {
    let (format, key) = match args.format {
        FormatArg::Lines => (DatasetFormat::Lines, KeySpec::WholeLine),
        FormatArg::Tsv => (
            DatasetFormat::Tsv,
            KeySpec::Field {
                index: args.key_field,
                delimiter: b'\t',
            },
        ),
    };
    DatasetSpec {
        name: args.dataset.clone(),
        format,
        key,
        partitions: node::config::DEFAULT_PARTITIONS,
    }
}

/// `quern abort`: aborts the dataset's open submission, if it has one.
pub fn abort_open(args: AbortArgs) -> anyhow::Result<ExitCode> {
    let runtime = cluster_client::runtime()?;
    runtime.block_on(async {
        let mut client = cluster_client::connect(&args.client)?;
        let dataset = &args.dataset;
        match submission::abort_open(&mut client, dataset, args.submission.map(JobId)).await? {
            AbortedOpen::NothingOpen => {
                tell!("dataset {dataset:?} has no open submission: nothing to abort")
            }
            AbortedOpen::Aborted { submission } => {
                tell!("{}", submission::aborted(dataset, submission))
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn progress_bar(total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} submit [{bar:28}] {human_pos}/{human_len} files {per_sec} eta {eta}",
        )
        .expect("progress template is valid")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A write error (a closed pipe: `quern submit | head`) is returned, for
/// `main` to end quietly on.
fn print_summary(dataset: &str, s: &Summary, elapsed: Duration) -> std::io::Result<()> {
    let seconds = elapsed.as_secs_f64();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "submission {} of dataset {dataset:?}: {} files in {seconds:.1} s ({:.0} files/s)",
        s.submission,
        s.files,
        s.files as f64 / seconds.max(1e-9)
    )?;
    writeln!(out, "  new             {}", s.counts.new)?;
    writeln!(out, "  changed         {}", s.counts.changed)?;
    writeln!(out, "  unchanged       {}", s.counts.unchanged)?;
    writeln!(out, "  gone            {}", s.gone)?;
    writeln!(out, "  pending shards  {}", s.pending_shards)?;
    out.flush()
}
