//! The manifest submission protocol: create the dataset if missing, then
//! Begin / bounded chunks / Finish through the leader, with a window of
//! chunks in flight so Raft replicates and applies one while the next
//! arrive. Memory is the window's chunks, whatever the manifest's size.
//!
//! Nothing of a failed submission may count, and it must not block the
//! next one: it is aborted. A write whose answer was lost is handled by
//! what it was: creating a dataset is idempotent and is sent again; a
//! lost Begin is recovered (see `begin`); a lost chunk or Finish fails
//! the submission, which is then aborted.
//!
//! The caller sees progress through `SubmitEvent`s; nothing is printed.

use proto_schema::command::{Command, CommandError, DatasetSpec, DiffCounts, FileEntry, Response};
use proto_schema::ids::{DatasetId, JobId};

use crate::by_digest::{self, Sending};
use crate::chunks::InventoryChunks;
use crate::client::{ClientError, CoordinatorClient};
use crate::inventory::InventoryError;
use crate::transport::Transport;

/// Chunks in flight unless asked otherwise.
pub const DEFAULT_CHUNKS_IN_FLIGHT: usize = 8;
/// How many times `begin` sends `BeginSubmission`.
const BEGIN_TRIES: usize = 3;

#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Chunks sent before the first is answered.
    pub chunks_in_flight: usize,
    /// Files per chunk, at most `MAX_CHUNK_FILES` (fewer makes more log
    /// entries of the same manifest).
    pub max_chunk_files: usize,
    /// Whether the inventory goes in ranges (`by_digest`): as digests
    /// when the dataset's last finished submission listed files, and a
    /// range again with its files when its digest is not accepted; or
    /// else in chunks of files. The result is the same either way.
    pub by_digest: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        Self {
            chunks_in_flight: DEFAULT_CHUNKS_IN_FLIGHT,
            max_chunk_files: proto_schema::command::MAX_CHUNK_FILES,
            by_digest: true,
        }
    }
}

/// What happens along a submission, for progress and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitEvent {
    /// A chunk of this many files was applied.
    ChunkApplied { files: u64 },
    /// An open submission that this submission's own lost Begin had made
    /// was aborted, and a new one begun.
    LostBeginAborted { submission: JobId },
}

/// What a finished submission found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub submission: JobId,
    pub files: u64,
    pub counts: DiffCounts,
    pub gone: u64,
    /// Pending shards the chunks created (new and changed files).
    pub pending_shards: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An answer other than the expected one.
    #[error("{doing}: {}", refusal(response))]
    Refused { doing: String, response: Response },
    #[error("{path:?} is listed twice in the manifest")]
    DuplicatePath { path: String },
    #[error("beginning the submission: no answer after {BEGIN_TRIES} tries")]
    NoAnswerToBegin,
    /// Reading the entries failed while they were being sent.
    #[error(transparent)]
    Entries(#[from] InventoryError),
    /// The submission failed and was aborted (or could not be).
    #[error("{}", abort_outcome(dataset, *submission, outcome))]
    Abandoned {
        dataset: String,
        submission: JobId,
        outcome: AbortOutcome,
        #[source]
        error: Box<SubmitError>,
    },
    #[error("the cluster has no dataset {0:?}")]
    UnknownDataset(String),
    #[error("dataset {dataset:?}'s open submission is {open}, not {asked}: left alone")]
    OtherSubmissionOpen {
        dataset: String,
        open: JobId,
        asked: JobId,
    },
}

/// What aborting a failed submission came to.
#[derive(Debug)]
pub enum AbortOutcome {
    Aborted,
    /// It had finished: only the submission itself closes it, so its
    /// Finish was applied and the answer lost.
    HadFinished,
    Refused(Response),
    Failed(ClientError),
}

/// What an aborted submission means, as `submit` and `abort_open` say it.
pub fn aborted(dataset: &str, submission: JobId) -> String {
    format!("submission {submission} of dataset {dataset:?} was aborted: none of it counts")
}

fn abort_outcome(dataset: &str, submission: JobId, outcome: &AbortOutcome) -> String {
    let left_open = format!("submission {submission} of dataset {dataset:?} is left open");
    match outcome {
        AbortOutcome::Aborted => aborted(dataset, submission),
        AbortOutcome::HadFinished => format!(
            "submission {submission} of dataset {dataset:?} had finished, but its answer was \
             lost: submit the same manifest again to see it unchanged"
        ),
        AbortOutcome::Refused(response) => {
            format!("{left_open}: aborting it: {}", refusal(response))
        }
        AbortOutcome::Failed(e) => format!("{left_open}: aborting it failed: {e}"),
    }
}

fn refusal(response: &Response) -> String {
    match response {
        Response::Error(e) => format!("the coordinator refused: {e}"),
        other => format!("unexpected answer {other:?}"),
    }
}

fn refused(doing: impl Into<String>, response: Response) -> SubmitError {
    SubmitError::Refused {
        doing: doing.into(),
        response,
    }
}

/// Creates the dataset unless it exists; `Some(id)` when this call
/// created it. Creating is idempotent (an existing dataset is fine), so a
/// write whose answer was lost is sent again.
pub async fn ensure_dataset<T: Transport>(
    client: &mut CoordinatorClient<T>,
    spec: DatasetSpec,
) -> Result<Option<DatasetId>, SubmitError> {
    let create = Command::CreateDataset(spec);
    let mut answer = client.write(&create).await;
    if let Err(ClientError::Ambiguous { .. }) = answer {
        answer = client.write(&create).await;
    }
    match answer? {
        Response::DatasetCreated { id } => Ok(Some(id)),
        Response::Error(CommandError::DatasetExists { .. }) => Ok(None),
        other => Err(refused("creating the dataset", other)),
    }
}

/// Submits `entries` to `dataset` (which must exist). A failed
/// submission is aborted, and the error says how that went.
pub async fn submit<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    entries: impl Iterator<Item = Result<FileEntry, InventoryError>>,
    options: &SubmitOptions,
    mut on_event: impl FnMut(SubmitEvent),
) -> Result<Summary, SubmitError> {
    let submission = begin(client, dataset, &mut on_event).await?;
    let sent = send_submission(client, dataset, submission, entries, options, &mut on_event).await;
    let error = match sent {
        Ok(summary) => return Ok(summary),
        Err(error) => error,
    };
    // The first error is the one to report; how the abort went is added.
    let outcome = match abort(client, dataset, submission).await {
        Ok(Response::SubmissionAborted { .. }) => AbortOutcome::Aborted,
        Ok(Response::Error(CommandError::UnknownSubmission { .. })) => AbortOutcome::HadFinished,
        Ok(other) => AbortOutcome::Refused(other),
        Err(e) => AbortOutcome::Failed(e),
    };
    Err(SubmitError::Abandoned {
        dataset: dataset.to_owned(),
        submission,
        outcome,
        error: Box::new(error),
    })
}

/// Begins a submission. A `BeginSubmission` whose answer was lost (the
/// leader died) may have been applied: the dataset then holds an open
/// submission that nobody would abort, and that refuses every later one.
/// So it is sent again, and if the dataset's open submission is the one
/// it began (the job carries this client's `now_ms`), that one is aborted
/// and a new one begun.
async fn begin<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    on_event: &mut impl FnMut(SubmitEvent),
) -> Result<JobId, SubmitError> {
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
                    Response::SubmissionAborted { .. } => {
                        on_event(SubmitEvent::LostBeginAborted { submission })
                    }
                    other => return Err(refused("aborting the lost submission", other)),
                }
            }
            Ok(other) => return Err(refused("beginning the submission", other)),
            Err(ClientError::Ambiguous { .. }) => maybe_applied = true,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SubmitError::NoAnswerToBegin)
}

/// When job `submission` began, if it is among the recent jobs.
async fn began_at<T: Transport>(
    client: &mut CoordinatorClient<T>,
    submission: JobId,
) -> Result<Option<u64>, ClientError> {
    let status = client.status().await?;
    Ok(status
        .jobs
        .iter()
        .find(|job| job.id == submission)
        .map(|job| job.began_ms))
}

/// Aborts `submission` of `dataset`: none of it counts.
pub async fn abort<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    submission: JobId,
) -> Result<Response, ClientError> {
    let abort = Command::AbortSubmission {
        dataset: dataset.to_owned(),
        submission,
    };
    client.write(&abort).await
}

/// What `abort_open` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortedOpen {
    NothingOpen,
    Aborted { submission: JobId },
}

/// Aborts the dataset's open submission (one whose submitter died), if
/// it has one, and only if it is `only` when that is given.
pub async fn abort_open<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    only: Option<JobId>,
) -> Result<AbortedOpen, SubmitError> {
    let status = client.status().await?;
    let Some(found) = status.datasets.iter().find(|d| d.name == dataset) else {
        return Err(SubmitError::UnknownDataset(dataset.to_owned()));
    };
    let submission = match (found.open_submission, only) {
        (None, _) => return Ok(AbortedOpen::NothingOpen),
        (Some(open), Some(asked)) if open != asked => {
            return Err(SubmitError::OtherSubmissionOpen {
                dataset: dataset.to_owned(),
                open,
                asked,
            });
        }
        (Some(open), _) => open,
    };
    match abort(client, dataset, submission).await? {
        Response::SubmissionAborted { .. } => Ok(AbortedOpen::Aborted { submission }),
        other => Err(refused(format!("aborting submission {submission}"), other)),
    }
}

/// Sends the entries in chunks and finishes the submission.
async fn send_submission<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    submission: JobId,
    entries: impl Iterator<Item = Result<FileEntry, InventoryError>>,
    options: &SubmitOptions,
    on_event: &mut impl FnMut(SubmitEvent),
) -> Result<Summary, SubmitError> {
    // The entries' first error stops the chunks; it is reported after the
    // chunk in hand.
    let mut failure = None;
    let valid = entries.map_while(|entry| entry.map_err(|e| failure = Some(e)).ok());
    let mut summary = Summary {
        submission,
        files: 0,
        counts: DiffCounts::default(),
        gone: 0,
        pending_shards: 0,
    };
    if options.by_digest {
        let how = Sending {
            by_digest: listed_files(client, dataset).await? > 0,
            max_chunk_files: options.max_chunk_files,
        };
        let mut pipeline = client.pipeline(options.chunks_in_flight);
        by_digest::send(
            &mut pipeline,
            dataset,
            submission,
            valid,
            how,
            &mut summary,
            on_event,
        )
        .await?;
        return finish(client, dataset, submission, summary, failure).await;
    }
    let mut pipeline = client.pipeline(options.chunks_in_flight);
    // Chunks are numbered from their place in the inventory, so that a
    // file's number does not depend on which chunk is applied first.
    let mut first_file = 0;
    for files in InventoryChunks::with_max_files(valid, options.max_chunk_files) {
        let sent = files.len() as u64;
        let chunk = Command::SubmitChunk {
            dataset: dataset.to_owned(),
            submission,
            first_file,
            files,
        };
        first_file += sent;
        if let Some((_, answer)) = pipeline.send(&chunk, 0).await? {
            summary.add_chunk(answer, on_event)?;
        }
    }
    while let Some((_, answer)) = pipeline.next().await? {
        summary.add_chunk(answer, on_event)?;
    }
    finish(client, dataset, submission, summary, failure).await
}

/// Files the dataset's last finished submission listed.
async fn listed_files<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
) -> Result<u64, ClientError> {
    let status = client.status().await?;
    Ok(status
        .datasets
        .iter()
        .find(|d| d.name == dataset)
        .map_or(0, |d| d.files))
}

/// Finishes a submission whose entries were all applied, unless reading
/// them failed.
async fn finish<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
    submission: JobId,
    mut summary: Summary,
    failure: Option<InventoryError>,
) -> Result<Summary, SubmitError> {
    if let Some(e) = failure {
        return Err(e.into());
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

impl Summary {
    /// Counts a chunk's answer, in whatever order the answers arrive.
    pub(crate) fn add_chunk(
        &mut self,
        answer: Response,
        on_event: &mut impl FnMut(SubmitEvent),
    ) -> Result<(), SubmitError> {
        match answer {
            Response::ChunkApplied {
                shards_created,
                counts,
            } => {
                self.add_counts(counts, shards_created, on_event);
                Ok(())
            }
            Response::Error(CommandError::DuplicatePath { path }) => {
                Err(SubmitError::DuplicatePath { path })
            }
            other => Err(refused("sending a chunk", other)),
        }
    }

    /// Counts files applied (and the shards they made pending).
    pub(crate) fn add_counts(
        &mut self,
        counts: DiffCounts,
        shards_created: u64,
        on_event: &mut impl FnMut(SubmitEvent),
    ) {
        let files = counts.new + counts.changed + counts.unchanged;
        self.files += files;
        self.pending_shards += shards_created;
        on_event(SubmitEvent::ChunkApplied { files });
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
