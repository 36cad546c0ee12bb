//! `quern submit`: sends a dataset's inventory to the coordinators, in
//! path order (see `path_order` for why). A manifest is read first to
//! validate every line (so a bad line is reported with its number and
//! nothing is applied); a manifest already in path order is then read
//! again and sent as it streams, any other is sorted in that same first
//! pass and sent from the sort. A directory is walked, stat'ing each file,
//! into the sort. The entries go through the leader in bounded chunks
//! (`ManifestChunks`). The dataset is created if missing. At the end: new,
//! changed, unchanged and gone files, the shards made pending, elapsed
//! time and files per second.

use std::cmp::Ordering;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use coordinator::api::{ApiError, CoordinatorClient};
use coordinator::client::ManifestChunks;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto_schema::command::{
    Command, CommandError, DatasetFormat, DatasetSpec, DiffCounts, FileEntry, KeySpec, Response,
};

use crate::args::{AbortArgs, FormatArg, SubmitArgs};
use crate::cluster_client;
use crate::manifest::{ManifestFormat, ManifestReader, walk};
use crate::path_order::{PathOrderError, PathSorter, SortMemory};
use crate::read_ahead::read_ahead;

type Entries = Box<dyn Iterator<Item = anyhow::Result<FileEntry>>>;

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let memory = SortMemory {
        run_bytes: usize::try_from(args.sort_memory).unwrap_or(usize::MAX),
        temp_dir: args.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let (entries, total) = match (&args.manifest, &args.dir) {
        (Some(path), _) => read_manifest(path, &memory)?,
        (None, Some(dir)) => read_walk(dir, &memory)?,
        (None, None) => bail!("give --manifest FILE or a directory"),
    };
    let runtime = cluster_client::runtime()?;
    let summary = runtime.block_on(async {
        let mut client = cluster_client::connect(&args.client)?;
        ensure_dataset(&mut client, &args).await?;
        let progress = progress_bar(total, !args.no_progress);
        let summary = submit(
            &mut client,
            &args.dataset,
            entries,
            args.chunks_in_flight.into(),
            &progress,
        )
        .await;
        progress.finish_and_clear();
        summary
    })?;
    let elapsed = started.elapsed();
    print_summary(&args.dataset, &summary, elapsed);
    Ok(ExitCode::SUCCESS)
}

/// Reads a manifest through once, validating every line, and returns its
/// entries in path order with their count. While the paths come in order,
/// nothing is kept (the file is read again to send it); at the first path
/// out of order, the lines before it are read again into a sort and the
/// rest follow them there.
fn read_manifest(path: &Path, memory: &SortMemory) -> anyhow::Result<(Entries, u64)> {
    let format = ManifestFormat::detect(path)?;
    let mut lines = 0;
    let mut last: Option<String> = None;
    let mut sorter: Option<PathSorter> = None;
    for entry in read_ahead(ManifestReader::open(path, format)?)? {
        let entry = entry?;
        lines += 1;
        if let Some(sorter) = &mut sorter {
            sorter
                .push(&entry, lines)
                .map_err(|e| in_manifest(path, format, e))?;
            continue;
        }
        match last.as_deref().map(|l| l.cmp(&entry.path)) {
            Some(Ordering::Equal) => {
                return Err(repeated(path, &entry.path, lines - 1, lines));
            }
            Some(Ordering::Greater) => {
                let mut started = PathSorter::new(memory)?;
                let earlier = ManifestReader::open(path, format)?.take(lines as usize - 1);
                for (n, entry) in earlier.chain([Ok(entry)]).enumerate() {
                    started
                        .push(&entry?, n as u64 + 1)
                        .map_err(|e| in_manifest(path, format, e))?;
                }
                sorter = Some(started);
            }
            _ => last = Some(entry.path),
        }
    }
    let entries: Entries = match sorter {
        None => Box::new(
            read_ahead(ManifestReader::open(path, format)?)?.map(|e| e.map_err(Into::into)),
        ),
        Some(sorter) => {
            let sorted = sorter.finish().map_err(|e| in_manifest(path, format, e))?;
            let manifest = path.to_owned();
            Box::new(sorted.map(move |e| e.map_err(|e| in_manifest(&manifest, format, e))))
        }
    };
    Ok((entries, lines))
}

/// Walks a directory into the sort.
fn read_walk(dir: &Path, memory: &SortMemory) -> anyhow::Result<(Entries, u64)> {
    let mut sorter = PathSorter::new(memory)?;
    let mut files = 0;
    for entry in read_ahead(walk(dir)?)? {
        files += 1;
        sorter.push(&entry?, files)?;
    }
    let sorted = sorter.finish()?;
    Ok((Box::new(sorted.map(|e| e.map_err(Into::into))), files))
}

/// A sort error in terms of the manifest: a repeated path with its line
/// numbers, found again in the file when the sort knew only the later one.
fn in_manifest(path: &Path, format: ManifestFormat, error: PathOrderError) -> anyhow::Error {
    let PathOrderError::Repeated {
        path: repeated_path,
        first,
        again,
    } = error
    else {
        return anyhow!("{}: {error}", path.display());
    };
    let found = || -> anyhow::Result<(String, u64)> {
        let listed = |n: u64| -> anyhow::Result<FileEntry> {
            let mut entries = ManifestReader::open(path, format)?.skip(n as usize - 1);
            Ok(entries
                .next()
                .ok_or_else(|| anyhow!("line {n} is gone"))??)
        };
        let repeated_path = match repeated_path {
            Some(p) => p,
            None => listed(again)?.path,
        };
        let first = match first {
            Some(first) => first,
            None => {
                let mut first = None;
                for (n, entry) in ManifestReader::open(path, format)?.enumerate() {
                    if entry?.path == repeated_path {
                        first = Some(n as u64 + 1);
                        break;
                    }
                }
                first.ok_or_else(|| anyhow!("the first listing is gone"))?
            }
        };
        Ok((repeated_path, first))
    };
    match found() {
        Ok((repeated_path, first)) => repeated(path, &repeated_path, first, again),
        Err(e) => anyhow!(
            "{}:{again}: the path is listed on an earlier line too (reading it again: {e})",
            path.display()
        ),
    }
}

fn repeated(manifest: &Path, path: &str, first: u64, again: u64) -> anyhow::Error {
    anyhow!(
        "{}:{again}: {path:?} is listed twice in the manifest (first on line {first})",
        manifest.display()
    )
}

/// `quern abort`: aborts the dataset's open submission, if it has one.
pub fn abort_open(args: AbortArgs) -> anyhow::Result<ExitCode> {
    let runtime = cluster_client::runtime()?;
    runtime.block_on(async {
        let mut client = cluster_client::connect(&args.client)?;
        let status = client.status().await?;
        let dataset = &args.dataset;
        let Some(found) = status.datasets.iter().find(|d| d.name == *dataset) else {
            bail!("the cluster has no dataset {dataset:?}");
        };
        let submission = match (found.open_submission, args.submission) {
            (None, _) => {
                eprintln!("dataset {dataset:?} has no open submission: nothing to abort");
                return Ok(ExitCode::SUCCESS);
            }
            (Some(open), Some(asked)) if open != asked => {
                bail!("dataset {dataset:?}'s open submission is {open}, not {asked}: left alone")
            }
            (Some(open), _) => open,
        };
        match abort(&mut client, dataset, submission).await? {
            Response::SubmissionAborted { .. } => {
                eprintln!("{}", aborted(dataset, submission));
                Ok(ExitCode::SUCCESS)
            }
            other => Err(refused(&format!("aborting submission {submission}"), other)),
        }
    })
}

/// What a finished submission reports.
struct Summary {
    submission: u64,
    files: u64,
    counts: DiffCounts,
    gone: u64,
    pending_shards: u64,
}

impl Summary {
    /// Counts a chunk's answer, in whatever order the answers arrive.
    fn add_chunk(&mut self, answer: Response, progress: &ProgressBar) -> anyhow::Result<()> {
        match answer {
            Response::ChunkApplied {
                shards_created,
                counts,
            } => {
                let files = counts.new + counts.changed + counts.unchanged;
                self.files += files;
                self.pending_shards += shards_created;
                progress.inc(files);
                Ok(())
            }
            Response::Error(CommandError::DuplicatePath { path }) => {
                bail!("{path:?} is listed twice in the manifest")
            }
            other => Err(refused("sending a chunk", other)),
        }
    }
}

async fn ensure_dataset(client: &mut CoordinatorClient, args: &SubmitArgs) -> anyhow::Result<()> {
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
    let create = Command::CreateDataset(DatasetSpec {
        name: args.dataset.clone(),
        format,
        key,
    });
    // Creating is idempotent (an existing dataset is fine): a write whose
    // answer was lost is sent again.
    let mut answer = client.write(&create).await;
    if let Err(ApiError::Ambiguous { .. }) = answer {
        answer = client.write(&create).await;
    }
    match answer? {
        Response::DatasetCreated { id } => {
            eprintln!("created dataset {:?} (id {id})", args.dataset);
            Ok(())
        }
        Response::Error(CommandError::DatasetExists { .. }) => Ok(()),
        other => Err(refused("creating the dataset", other)),
    }
}

async fn submit(
    client: &mut CoordinatorClient,
    dataset: &str,
    entries: Entries,
    chunks_in_flight: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let submission = begin(client, dataset).await?;
    match send_submission(
        client,
        dataset,
        submission,
        entries,
        chunks_in_flight,
        progress,
    )
    .await
    {
        Ok(summary) => Ok(summary),
        Err(error) => {
            // Nothing of a failed submission may count, and it must not
            // block the next one: abort it. The first error is the one to
            // report; a failed abort is added to it.
            let outcome = match abort(client, dataset, submission).await {
                Ok(Response::SubmissionAborted { .. }) => aborted(dataset, submission),
                // Only this command closes its submission: it finished,
                // and the answer was lost.
                Ok(Response::Error(CommandError::UnknownSubmission { .. })) => format!(
                    "submission {submission} of dataset {dataset:?} had finished, but its \
                     answer was lost: submit the same manifest again to see it unchanged"
                ),
                Ok(other) => format!(
                    "submission {submission} of dataset {dataset:?} is left open: {}",
                    refused("aborting it", other)
                ),
                Err(e) => format!(
                    "submission {submission} of dataset {dataset:?} is left open: aborting it \
                     failed: {e}"
                ),
            };
            Err(error.context(outcome))
        }
    }
}

/// Begins a submission. A `BeginSubmission` whose answer was lost (the
/// leader died) may have been applied: the dataset then holds an open
/// submission that nobody would abort, and that refuses every later one.
/// So it is sent again, and if the dataset's open submission is the one
/// it began (the job carries this client's `now_ms`), that one is aborted
/// and a new one begun.
async fn begin(client: &mut CoordinatorClient, dataset: &str) -> anyhow::Result<u64> {
    let began_ms = now_ms();
    let begin = Command::BeginSubmission {
        dataset: dataset.to_owned(),
        now_ms: began_ms,
    };
    let mut maybe_applied = false;
    for _ in 0..BEGIN_TRIES {
        match client.write(&begin).await {
            Ok(Response::SubmissionBegun { submission }) => return Ok(submission),
            Ok(Response::Error(CommandError::SubmissionOpen { submission, .. }))
                if maybe_applied && began_at(client, submission).await? == Some(began_ms) =>
            {
                match abort(client, dataset, submission).await? {
                    Response::SubmissionAborted { .. } => eprintln!(
                        "aborted submission {submission}, begun by this command before the \
                         coordinator's answer was lost"
                    ),
                    other => return Err(refused("aborting the lost submission", other)),
                }
            }
            Ok(other) => return Err(refused("beginning the submission", other)),
            Err(ApiError::Ambiguous { .. }) => maybe_applied = true,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("beginning the submission: no answer after {BEGIN_TRIES} tries")
}

/// How many times `begin` sends `BeginSubmission`.
const BEGIN_TRIES: usize = 3;

/// When job `submission` began, if it is among the recent jobs.
async fn began_at(client: &mut CoordinatorClient, submission: u64) -> anyhow::Result<Option<u64>> {
    let status = client.status().await?;
    Ok(status
        .jobs
        .iter()
        .find(|job| job.id == submission)
        .map(|job| job.began_ms))
}

/// What an aborted submission means, as both `submit` and `abort` say it.
fn aborted(dataset: &str, submission: u64) -> String {
    format!("submission {submission} of dataset {dataset:?} was aborted: none of it counts")
}

async fn abort(
    client: &mut CoordinatorClient,
    dataset: &str,
    submission: u64,
) -> Result<Response, ApiError> {
    let abort = Command::AbortSubmission {
        dataset: dataset.to_owned(),
        submission,
    };
    client.write(&abort).await
}

/// Sends the entries in chunks and finishes the submission.
async fn send_submission(
    client: &mut CoordinatorClient,
    dataset: &str,
    submission: u64,
    entries: Entries,
    chunks_in_flight: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    // The walk's or manifest's first error stops the chunks; it is
    // reported after the chunk in hand.
    let mut failure = None;
    let valid = entries.map_while(|entry| entry.map_err(|e| failure = Some(e)).ok());
    let mut summary = Summary {
        submission,
        files: 0,
        counts: DiffCounts::default(),
        gone: 0,
        pending_shards: 0,
    };
    let mut pipeline = client.pipeline(chunks_in_flight);
    for files in ManifestChunks::new(valid) {
        let chunk = Command::SubmitChunk {
            dataset: dataset.to_owned(),
            submission,
            files,
        };
        if let Some(answer) = pipeline.send(&chunk).await? {
            summary.add_chunk(answer, progress)?;
        }
    }
    while let Some(answer) = pipeline.next().await? {
        summary.add_chunk(answer, progress)?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let finish = Command::FinishSubmission {
        dataset: dataset.to_owned(),
        submission,
    };
    match client.write(&finish).await? {
        Response::SubmissionFinished { counts, gone, .. } => {
            summary.counts = counts;
            summary.gone = gone;
            Ok(summary)
        }
        other => Err(refused("finishing the submission", other)),
    }
}

/// A response other than the expected one, as an error.
fn refused(doing: &str, response: Response) -> anyhow::Error {
    match response {
        Response::Error(e) => anyhow!("{doing}: the coordinator refused: {e}"),
        other => anyhow!("{doing}: unexpected answer {other:?}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

fn print_summary(dataset: &str, s: &Summary, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "submission {} of dataset {dataset:?}: {} files in {seconds:.1} s ({:.0} files/s)",
        s.submission,
        s.files,
        s.files as f64 / seconds.max(1e-9)
    );
    println!("  new             {}", s.counts.new);
    println!("  changed         {}", s.counts.changed);
    println!("  unchanged       {}", s.counts.unchanged);
    println!("  gone            {}", s.gone);
    println!("  pending shards  {}", s.pending_shards);
}
