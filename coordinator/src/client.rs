//! Writing commands through Raft, as the client API and tests do: encode,
//! propose, and turn "not the leader" into a redirect the caller follows.
//! Also the chunker that cuts a manifest into bounded `SubmitChunk`s, and
//! `submit`, which keeps a bounded window of chunks in flight so Raft can
//! replicate and apply one while the next is appended.

use openraft::error::{ClientWriteError, RaftError};
use proto_schema::command::{
    Command, CommandError, DiffCounts, FileEntry, MAX_CHUNK_BYTES, MAX_CHUNK_FILES, Response,
};
use tokio::task::JoinSet;

use crate::{CommandBytes, NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This replica is not the leader: send the command to `leader`.
    #[error("not the leader; the leader is {leader:?} at {address:?}")]
    ForwardToLeader {
        leader: Option<NodeId>,
        address: Option<String>,
    },
    #[error("raft: {0}")]
    Raft(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The state machine refused a command; the submission was aborted.
    #[error("submission refused: {0}")]
    Refused(CommandError),
    #[error("unexpected response {0:?}")]
    Unexpected(Response),
}

/// What a finished submission found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub submission: u64,
    pub counts: DiffCounts,
    pub gone: u64,
    /// Pending shards the chunks created (new and changed files).
    pub shards_created: u64,
}

/// `ForwardToLeader` if this replica is not the leader (with the leader's
/// id and address when known), from its Raft metrics; `None` if it leads.
pub fn not_the_leader(raft: &Raft) -> Option<WriteError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader == Some(metrics.id) {
        return None;
    }
    let leader = metrics.current_leader;
    let address = leader.and_then(|id| {
        let membership = metrics.membership_config.membership();
        membership.get_node(&id).map(|node| node.addr.clone())
    });
    Some(WriteError::ForwardToLeader { leader, address })
}

/// Proposes `cmd` and waits until it is committed and applied here.
pub async fn write(raft: &Raft, cmd: &Command) -> Result<Response, WriteError> {
    match raft.client_write(CommandBytes::encode(cmd)).await {
        Ok(written) => Ok(written.data.0),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(WriteError::ForwardToLeader {
                leader: forward.leader_id,
                address: forward.leader_node.map(|n| n.addr),
            })
        }
        Err(e) => Err(WriteError::Raft(e.to_string())),
    }
}

/// Cuts manifest entries into chunks within `MAX_CHUNK_FILES` files and
/// `MAX_CHUNK_BYTES` bytes, holding one chunk at a time.
pub struct ManifestChunks<I: Iterator> {
    entries: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = FileEntry>> ManifestChunks<I> {
    pub fn new(entries: I) -> Self {
        Self {
            entries: entries.peekable(),
        }
    }
}

impl<I: Iterator<Item = FileEntry>> Iterator for ManifestChunks<I> {
    type Item = Vec<FileEntry>;

    fn next(&mut self) -> Option<Vec<FileEntry>> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.entries.peek() {
            let full = chunk.len() == MAX_CHUNK_FILES || bytes + next.weight() > MAX_CHUNK_BYTES;
            if full && !chunk.is_empty() {
                break;
            }
            bytes += next.weight();
            chunk.push(self.entries.next().expect("peeked"));
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// Submits a whole manifest through `raft` (the leader): begins a
/// submission, proposes its chunks with at most `window` in flight, and
/// finishes it. Memory is `window` chunks, whatever the manifest's size.
/// If a chunk is refused the submission is aborted, so the dataset is not
/// left with an open submission.
pub async fn submit(
    raft: &Raft,
    dataset: &str,
    now_ms: u64,
    entries: impl Iterator<Item = FileEntry>,
    window: usize,
) -> Result<Submitted, SubmitError> {
    let begin = Command::BeginSubmission {
        dataset: dataset.into(),
        now_ms,
    };
    let submission = match write(raft, &begin).await? {
        Response::SubmissionBegun { submission } => submission,
        Response::Error(e) => return Err(SubmitError::Refused(e)),
        other => return Err(SubmitError::Unexpected(other)),
    };
    match send_chunks(raft, dataset, submission, entries, window.max(1)).await {
        Ok(shards_created) => {
            let finish = Command::FinishSubmission {
                dataset: dataset.into(),
                submission,
            };
            match write(raft, &finish).await? {
                Response::SubmissionFinished { counts, gone, .. } => Ok(Submitted {
                    submission,
                    counts,
                    gone,
                    shards_created,
                }),
                Response::Error(e) => Err(SubmitError::Refused(e)),
                other => Err(SubmitError::Unexpected(other)),
            }
        }
        Err(e) => {
            let abort = Command::AbortSubmission {
                dataset: dataset.into(),
                submission,
            };
            // The first error is the one to report; a failed abort leaves
            // the submission open for an operator's explicit abort.
            let _ = write(raft, &abort).await;
            Err(e)
        }
    }
}

/// Proposes the chunks with at most `window` in flight; returns the number
/// of shards they created.
async fn send_chunks(
    raft: &Raft,
    dataset: &str,
    submission: u64,
    entries: impl Iterator<Item = FileEntry>,
    window: usize,
) -> Result<u64, SubmitError> {
    let mut in_flight = JoinSet::new();
    let mut shards = 0;
    let mut chunks = ManifestChunks::new(entries.fuse());
    loop {
        let next = if in_flight.len() < window {
            chunks.next()
        } else {
            None
        };
        match next {
            Some(files) => {
                let raft = raft.clone();
                let cmd = Command::SubmitChunk {
                    dataset: dataset.into(),
                    submission,
                    files,
                };
                in_flight.spawn(async move { write(&raft, &cmd).await });
            }
            None => match in_flight.join_next().await {
                None => return Ok(shards),
                Some(joined) => match joined.map_err(|e| WriteError::Raft(e.to_string()))?? {
                    Response::ChunkApplied { shards_created, .. } => shards += shards_created,
                    Response::Error(e) => return Err(SubmitError::Refused(e)),
                    other => return Err(SubmitError::Unexpected(other)),
                },
            },
        }
    }
}
