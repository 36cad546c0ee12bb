//! A node's side of cluster reads: answering a read stream
//! (`proto_schema::read`) from the node's store. The store is read on a
//! blocking thread (RocksDB iterators are synchronous), which hands frames
//! to the stream through a queue of [`READ_QUEUE_FRAMES`]; a client that
//! reads slowly fills its QUIC windows, then the queue, then the thread
//! waits. What one stream holds is that queue and a merge's blocks
//! (`export::for_each_record`), whatever the dataset's size.
//!
//! Only an operator's certificate (the CLI's) or a node's may read; a
//! coordinator's or an unrecognised name is refused with the reason. A
//! node answers at most [`MAX_CONCURRENT_READS`] streams at once (each
//! holds a blocking thread, and an export its merge threads); more are
//! refused as busy, never queued without bound.

use std::sync::Arc;

use proto_schema::cert_role::Role;
use proto_schema::command::MAX_PATH_BYTES;
use proto_schema::quic::Peer;
use proto_schema::quic::channel::ReadOutput;
use proto_schema::read::{
    DatasetShape, FilePart, FoundRecord, JobPart, MAX_FILE_PROBLEMS, PublishedJobs,
    READ_BATCH_BYTES, ReadCounts, ReadItem, ReadRequest, RejectedPart, bounded_text,
};
use proto_schema::{BatchView, JobId, RecordBatch};
use tokio::sync::mpsc;

use crate::config::Format;
use crate::export::{self, ExportError};
use crate::store::Store;
use crate::store::catalog::{DatasetInfo, JobInfo, JobState};
use crate::store::ledger::FileCounts;

/// Read streams a node answers at once.
pub const MAX_CONCURRENT_READS: usize = 4;

/// Frames the store's reader may have ready before the stream takes them.
pub const READ_QUEUE_FRAMES: usize = 2;

/// Jobs, files or rejected records per item frame: far below the frame
/// limit for the largest entries their bounds allow.
const ITEMS_PER_FRAME: usize = 256;

/// Read streams refused (label `reason`: `certificate`, the role of the
/// one that opened it may not read; `busy`, at `MAX_CONCURRENT_READS`).
pub const READ_REFUSED_METRIC: &str = "quern_read_refused_total";

/// What the store's reader hands the stream.
pub(super) enum Piece {
    Item(ReadItem),
    Batch(RecordBatch),
}

/// Why a read stopped.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The stream went away: no one to tell.
    #[error("the client went away")]
    Gone,
}

/// Answers read streams from a node's store.
#[derive(Clone)]
pub struct ReadService {
    store: Arc<Store>,
    running: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl ReadService {
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_limit(store, MAX_CONCURRENT_READS)
    }

    /// At most `limit` streams answered at once.
    pub fn with_limit(store: Arc<Store>, limit: usize) -> Self {
        Self {
            store,
            running: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// Answers `request` from `peer` through `out`, ending the stream.
    pub async fn serve(&self, peer: &Peer, request: ReadRequest, mut out: ReadOutput) {
        let role = Role::of(peer.name.as_deref());
        if !matches!(role, Role::Operator | Role::Node(_)) {
            metrics::counter!(READ_REFUSED_METRIC, "reason" => "certificate").increment(1);
            tracing::warn!(remote = %peer.address, name = ?peer.name, "refused a read stream");
            let reason = format!("a {} certificate may not read", role.label());
            let _ = out.end(Some(reason)).await;
            return;
        }
        let Ok(_running) = self.running.clone().try_acquire_owned() else {
            metrics::counter!(READ_REFUSED_METRIC, "reason" => "busy").increment(1);
            let reason = format!(
                "busy: answering {} reads, the most it answers at once; try again",
                self.limit
            );
            let _ = out.end(Some(reason)).await;
            return;
        };
        let (send, mut pieces) = mpsc::channel(READ_QUEUE_FRAMES);
        let store = self.store.clone();
        let reader = tokio::task::spawn_blocking(move || answer(&store, &request, &send));
        let mut sent = Ok(());
        while let Some(piece) = pieces.recv().await {
            sent = match piece {
                Piece::Item(item) => out.item(&item).await,
                Piece::Batch(batch) => out.batch(&batch).await,
            };
            if sent.is_err() {
                break;
            }
        }
        // The reader stops at its next frame once the queue is gone.
        drop(pieces);
        let read = match reader.await {
            Ok(read) => read,
            Err(e) => Err(ServeError::Export(ExportError::Write(
                std::io::Error::other(format!("the store's reader failed: {e}")),
            ))),
        };
        let ended = match (sent, read) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(())) => out.end(None).await,
            (Ok(()), Err(e)) => out.end(Some(e.to_string())).await,
        };
        if let Err(e) = ended {
            tracing::debug!(remote = %peer.address, error = %e, "a read stream ended early");
        }
    }
}

/// Answers `request` from `store` on a blocking thread, as a node
/// answers a read stream, handing its pieces to the receiver: how reads
/// of stores on this machine go through the same answers as a cluster's.
/// The thread's result says why the answer stopped short, if it did.
pub(super) fn answer_here(
    store: Arc<Store>,
    request: ReadRequest,
) -> (
    mpsc::Receiver<Piece>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let (send, pieces) = mpsc::channel(READ_QUEUE_FRAMES);
    let reader = tokio::task::spawn_blocking(move || {
        answer(&store, &request, &send).map_err(|e| e.to_string())
    });
    (pieces, reader)
}

/// Reads the answer to `request` from `store` into `send`.
fn answer(
    store: &Store,
    request: &ReadRequest,
    send: &mpsc::Sender<Piece>,
) -> Result<(), ServeError> {
    let put = |piece: Piece| send.blocking_send(piece).map_err(|_| ServeError::Gone);
    let Some(dataset) = store.dataset(request.dataset())? else {
        return put(Piece::Item(ReadItem::Absent));
    };
    // An export or a get reads one snapshot and says which jobs it holds,
    // so the client can tell whether a job was published during its read.
    let snapshot = matches!(
        request,
        ReadRequest::Export { .. } | ReadRequest::Get { .. }
    )
    .then(|| store.db().snapshot());
    let published = match &snapshot {
        Some(snapshot) => Some(PublishedJobs::of(
            store.published_cluster_jobs(dataset.id, snapshot)?,
        )),
        None => None,
    };
    put(Piece::Item(ReadItem::Dataset(DatasetShape {
        key_field: match dataset.format {
            Format::Lines => None,
            Format::Tsv { key_field } => Some(key_field as u32),
        },
        partitions: dataset.partitions,
        created_unix: dataset.created_unix,
        published,
    })))?;
    match request {
        ReadRequest::Export { .. } => {
            let snapshots = [snapshot.expect("taken for an export")];
            let mut batch = RecordBatch::new();
            export::for_each_record_at(&[(store, &dataset)], &snapshots, |record| {
                batch.push(record);
                if batch.payload_bytes() >= READ_BATCH_BYTES {
                    let full = std::mem::take(&mut batch);
                    put(Piece::Batch(full)).map_err(|_| gone())?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                put(Piece::Batch(batch))?;
            }
            Ok(())
        }
        ReadRequest::Get { key, .. } => {
            let snapshot = snapshot.expect("taken for a get");
            let found = crate::lookup::get_at(store, &dataset, key, &snapshot)?;
            let found = match found {
                Some(found) => Some(FoundRecord {
                    record: found.record,
                    job: found.cluster_job,
                    file: found.first_seen.position.file,
                    offset: found.first_seen.position.offset,
                    path: found.path.as_deref().and_then(wire_path),
                }),
                None => None,
            };
            put(Piece::Item(ReadItem::Found(found)))
        }
        ReadRequest::Jobs { .. } => {
            let jobs = store.jobs(dataset.id)?;
            let parts: Vec<JobPart> = parts(&jobs)
                .flat_map(|(job, locals)| locals.into_iter().map(move |l| job_part(job, l)))
                .collect();
            for chunk in parts.chunks(ITEMS_PER_FRAME) {
                put(Piece::Item(ReadItem::Jobs(chunk.to_vec())))?;
            }
            Ok(())
        }
        ReadRequest::Files { job, .. } => {
            let jobs = store.jobs(dataset.id)?;
            files(store, &dataset, &parts_of(&jobs, *job), &put)
        }
        ReadRequest::FilePath { job, file, .. } => {
            let jobs = store.jobs(dataset.id)?;
            let mut path = None;
            for local in parts_of(&jobs, *job) {
                path = store.file_path(dataset.id, local.id, *file)?;
                if path.is_some() {
                    break;
                }
            }
            put(Piece::Item(ReadItem::Path(
                path.as_deref().and_then(wire_path),
            )))
        }
    }
}

fn gone() -> ExportError {
    ExportError::Write(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the client went away",
    ))
}

/// A path as the read protocol carries it; `None` past its bound.
fn wire_path(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    (bytes.len() <= MAX_PATH_BYTES).then(|| bytes.to_vec())
}

/// The local jobs that are this node's parts of each of the coordinators'
/// jobs, in job order: the committed ones (two, where the node recovered
/// a lost owner's partitions of a job it had a part of), else the last one
/// (a part that failed and ran again left both).
fn parts(jobs: &[JobInfo]) -> impl Iterator<Item = (JobId, Vec<&JobInfo>)> {
    let mut chosen: std::collections::BTreeMap<JobId, Vec<&JobInfo>> = Default::default();
    for local in jobs {
        let Some(job) = local.cluster.map(|part| part.job) else {
            continue;
        };
        let kept = chosen.entry(job).or_default();
        let committed = |j: &JobInfo| j.state == JobState::Committed;
        if committed(local) {
            kept.retain(|k| committed(k));
            kept.push(local);
        } else if !kept.iter().any(|k| committed(k)) {
            *kept = vec![local];
        }
    }
    chosen.into_iter()
}

fn parts_of(jobs: &[JobInfo], job: JobId) -> Vec<&JobInfo> {
    parts(jobs)
        .find(|(id, _)| *id == job)
        .map_or_else(Vec::new, |(_, locals)| locals)
}

fn attempt_of(local: &JobInfo) -> u32 {
    local.cluster.map_or(0, |part| part.attempt)
}

fn job_part(job: JobId, local: &JobInfo) -> JobPart {
    let totals = local.totals.unwrap_or_default();
    JobPart {
        job,
        attempt: attempt_of(local),
        state: bounded_text(local.state.to_string()),
        started_unix: local.started_unix,
        files: totals.files,
        problem_files: totals.problem_files,
        bytes: totals.bytes,
        counts: ReadCounts {
            read: totals.read,
            unique: totals.unique,
            duplicates: totals.duplicates,
            rejected: totals.rejected,
        },
    }
}

fn counts(c: FileCounts) -> ReadCounts {
    ReadCounts {
        read: c.read,
        unique: c.unique,
        duplicates: c.duplicates,
        rejected: c.rejected,
    }
}

/// The files of this node's `parts` of a job in file order (a file both
/// parts counted comes twice, once with each part's attempt), then the
/// rejected records of its latest part: a recovery part read every record
/// again, the earlier part's rejections among them.
fn files(
    store: &Store,
    dataset: &DatasetInfo,
    parts: &[&JobInfo],
    put: &impl Fn(Piece) -> Result<(), ServeError>,
) -> Result<(), ServeError> {
    let mut each: Vec<_> = parts
        .iter()
        .map(|local| part_files(store, dataset, local).peekable())
        .collect();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    loop {
        let mut next: Option<(usize, u32)> = None;
        for (i, files) in each.iter_mut().enumerate() {
            match files.peek() {
                Some(Ok(f)) if next.is_none_or(|(_, seq)| f.seq < seq) => next = Some((i, f.seq)),
                Some(Err(_)) => return Err(files.next().expect("peeked").unwrap_err()),
                _ => {}
            }
        }
        let Some((i, _)) = next else { break };
        let part = each[i].next().expect("peeked")?;
        bytes += 64
            + part.path.as_ref().map_or(0, Vec::len)
            + part.problems.iter().map(String::len).sum::<usize>();
        chunk.push(part);
        if chunk.len() >= ITEMS_PER_FRAME || bytes >= READ_BATCH_BYTES {
            put(Piece::Item(ReadItem::Files(std::mem::take(&mut chunk))))?;
            bytes = 0;
        }
    }
    if !chunk.is_empty() {
        put(Piece::Item(ReadItem::Files(chunk)))?;
    }
    let Some(local) = parts.iter().max_by_key(|local| attempt_of(local)) else {
        return Ok(());
    };
    let attempt = attempt_of(local);
    let mut rejected = Vec::new();
    for r in store.rejections(dataset.id, local.id) {
        let r = r?;
        let path = store.file_path(dataset.id, local.id, r.file)?;
        rejected.push(RejectedPart {
            attempt,
            file: r.file,
            offset: r.offset,
            path: path.as_deref().and_then(wire_path),
            rejection: bounded_text(&r.rejection),
            excerpt: bounded_text(&r.excerpt),
        });
        if rejected.len() >= ITEMS_PER_FRAME {
            put(Piece::Item(ReadItem::Rejected(std::mem::take(
                &mut rejected,
            ))))?;
        }
    }
    if !rejected.is_empty() {
        put(Piece::Item(ReadItem::Rejected(rejected)))?;
    }
    Ok(())
}

/// The files of one local part in file order: the ones it listed (path,
/// size, problems) and the ones it only counted records of.
fn part_files<'a>(
    store: &'a Store,
    dataset: &DatasetInfo,
    local: &JobInfo,
) -> impl Iterator<Item = Result<FilePart, ServeError>> + 'a {
    let attempt = attempt_of(local);
    let mut listed = store.files(dataset.id, local.id).peekable();
    let mut counted = store.counted_files(dataset.id, local.id).peekable();
    std::iter::from_fn(move || {
        let next_listed = match listed.peek() {
            Some(Ok(row)) => Some(row.seq),
            Some(Err(_)) => return Some(Err(listed.next()?.unwrap_err().into())),
            None => None,
        };
        let next_counted = match counted.peek() {
            Some(Ok((seq, _))) => Some(*seq),
            Some(Err(_)) => return Some(Err(counted.next()?.unwrap_err().into())),
            None => None,
        };
        Some(Ok(match (next_listed, next_counted) {
            (None, None) => return None,
            (Some(l), c) if c.is_none_or(|c| l <= c) => {
                if c == Some(l) {
                    counted.next();
                }
                let row = match listed.next()? {
                    Ok(row) => row,
                    Err(e) => return Some(Err(e.into())),
                };
                let mut problems: Vec<String> = row.problems.iter().map(bounded_text).collect();
                if problems.len() > MAX_FILE_PROBLEMS {
                    let more = problems.len() - (MAX_FILE_PROBLEMS - 1);
                    problems.truncate(MAX_FILE_PROBLEMS - 1);
                    problems.push(format!("and {more} more problems"));
                }
                FilePart {
                    seq: row.seq,
                    attempt,
                    path: wire_path(&row.path),
                    size: row.size,
                    counts: counts(row.counts),
                    problems,
                }
            }
            _ => match counted.next()? {
                Ok((seq, c)) => FilePart {
                    seq,
                    attempt,
                    path: None,
                    size: 0,
                    counts: counts(c),
                    problems: Vec::new(),
                },
                Err(e) => return Some(Err(e.into())),
            },
        }))
    })
}
