//! Writing commands through Raft, as the client API and tests do: encode,
//! propose, and turn "not the leader" into a redirect the caller follows.
//! Also the chunker that cuts a manifest into bounded `SubmitChunk`s.

use openraft::error::{ClientWriteError, RaftError};
use proto_schema::command::{Command, FileEntry, MAX_CHUNK_BYTES, MAX_CHUNK_FILES, Response};

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
