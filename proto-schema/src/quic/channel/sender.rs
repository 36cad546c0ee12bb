//! The sending side: a [`Link`] is one connection to a peer; each
//! [`BatchStream`] on it carries one (job, partition range)'s batches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge};
use quinn::{ReadError, ReadExactError, SendStream, VarInt, WriteError};
use rkyv::util::AlignedVec;
use tokio::time::timeout;

use super::frames::{self, FrameStream, ReadFailure};
use super::windows::{LinkWindows, Registration};
use super::{
    ChannelConfig, ChannelError, SEND_BLOCKED_METRIC, SENT_BYTES_METRIC, connection_lost, link_name,
};
use crate::RecordBatch;
use crate::batch::BatchView;
use crate::frame::{FrameKind, HEADER_LEN};
use crate::shuffle::{MAX_CONTROL_FRAME, StreamEnd, StreamHeader, StreamReply};

/// Stream code: the sender gave up on a stream the peer stopped taking.
const RESET_STALLED: u32 = 1;
/// Stream code: the sender dropped the stream before its end.
const RESET_ABANDONED: u32 = 2;

/// A connection to one peer. Cheap to clone; clones share it, and the
/// last one dropped closes it.
#[derive(Clone)]
pub struct Link {
    pub(super) inner: Arc<LinkInner>,
}

pub(super) struct LinkInner {
    pub(super) connection: quinn::Connection,
    pub(super) addr: SocketAddr,
    name: Arc<str>,
    pub(super) config: Arc<ChannelConfig>,
    sent: Counter,
    blocked: Gauge,
    _share: Registration,
}

impl Link {
    pub(super) fn new(
        connection: quinn::Connection,
        addr: SocketAddr,
        config: Arc<ChannelConfig>,
        windows: &Arc<LinkWindows>,
    ) -> Self {
        let name = link_name(&connection, addr);
        let label = [("link", name.to_string())];
        Self {
            inner: Arc::new(LinkInner {
                _share: windows.register(&connection),
                sent: metrics::counter!(SENT_BYTES_METRIC, &label),
                blocked: metrics::gauge!(SEND_BLOCKED_METRIC, &label),
                connection,
                addr,
                name,
                config,
            }),
        }
    }

    /// The peer's certificate name (or address): the link's label.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Opens a stream for `header`'s job and partitions and sends the
    /// header. Waits (within the stall timeout) while the peer has as
    /// many of our streams open as it allows.
    pub async fn open(&self, header: StreamHeader) -> Result<BatchStream, ChannelError> {
        let inner = &self.inner;
        let after = inner.config.stall_timeout;
        let (send, recv) = match timeout(after, inner.connection.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(connection_lost(inner.addr, e)),
            Err(_) => return Err(self.stalled()),
        };
        let mut stream = BatchStream {
            link: self.clone(),
            send,
            replies: FrameStream::new(recv),
            buffer: AlignedVec::new(),
            batches: 0,
            records: 0,
            finished: false,
        };
        stream
            .write(FrameKind::StreamHeader, &header.to_bytes())
            .await?;
        Ok(stream)
    }

    /// Whether the connection has ended: streams on it fail.
    pub fn is_closed(&self) -> bool {
        self.inner.connection.close_reason().is_some()
    }

    /// Closes the connection; streams in flight fail at once, both ends.
    pub fn close(&self) {
        self.inner.connection.close(VarInt::from_u32(0), b"closed");
    }

    pub(super) fn stalled(&self) -> ChannelError {
        ChannelError::Stalled {
            peer: self.inner.name.to_string(),
            after: self.inner.config.stall_timeout,
        }
    }

    pub(super) fn failed(&self, reason: String) -> ChannelError {
        ChannelError::Stream {
            peer: self.inner.name.to_string(),
            reason,
        }
    }
}

/// What the owner took from a finished stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub batches: u64,
    pub records: u64,
}

/// One stream of batches to an owner. Dropping it before
/// [`finish`](Self::finish) abandons it (the owner sees a reset).
pub struct BatchStream {
    link: Link,
    send: SendStream,
    replies: FrameStream,
    /// The last frame's archive, reused for the next.
    buffer: AlignedVec,
    batches: u64,
    records: u64,
    finished: bool,
}

impl frames::BatchWriter for BatchStream {
    fn max_frame(&self) -> u32 {
        self.link.inner.config.max_frame
    }

    fn buffer(&mut self) -> &mut AlignedVec {
        &mut self.buffer
    }

    async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ChannelError> {
        self.write(kind, payload).await
    }
}

impl BatchStream {
    /// Sends one batch; returns once the peer's windows have taken it
    /// (waiting meanwhile: this is where a full owner holds its senders
    /// back). A refusal by the owner comes back as
    /// [`ChannelError::Refused`] with its reason.
    pub async fn send(&mut self, batch: &RecordBatch) -> Result<(), ChannelError> {
        frames::write_batch(self, batch).await?;
        self.batches += 1;
        self.records += batch.len() as u64;
        Ok(())
    }

    /// Batches and records sent so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.batches, self.records)
    }

    /// Ends the stream and waits (within the reply timeout) for the owner
    /// to confirm that it took every batch.
    pub async fn finish(mut self) -> Result<Receipt, ChannelError> {
        let end = StreamEnd {
            batches: self.batches,
            records: self.records,
        };
        self.write(FrameKind::StreamEnd, &end.to_bytes()).await?;
        self.finished = true;
        let _ = self.send.finish();
        match self.reply().await? {
            StreamReply::Accepted { batches, records } if (batches, records) == self.counts() => {
                Ok(Receipt { batches, records })
            }
            StreamReply::Accepted { batches, records } => Err(self.link.failed(format!(
                "the owner took {batches} batches and {records} records of the {} and {} sent",
                self.batches, self.records
            ))),
            StreamReply::Refused(refusal) => Err(self.refused(refusal)),
        }
    }

    async fn write(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ChannelError> {
        let inner = &self.link.inner;
        let start = Instant::now();
        let outcome = timeout(
            inner.config.stall_timeout,
            frames::write(&mut self.send, kind, payload),
        )
        .await;
        inner.blocked.increment(start.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(())) => {
                inner.sent.increment((HEADER_LEN + payload.len()) as u64);
                Ok(())
            }
            // The owner stopped reading: its reply says why.
            Ok(Err(WriteError::Stopped(_))) => Err(match self.reply().await {
                Ok(StreamReply::Refused(refusal)) => self.refused(refusal),
                Ok(StreamReply::Accepted { .. }) => self
                    .link
                    .failed("the owner stopped reading, yet accepted the stream".into()),
                Err(e) => e,
            }),
            Ok(Err(WriteError::ConnectionLost(e))) => Err(connection_lost(inner.addr, e)),
            Ok(Err(e)) => Err(self.link.failed(e.to_string())),
            Err(_) => {
                let _ = self.send.reset(VarInt::from_u32(RESET_STALLED));
                self.finished = true;
                Err(self.link.stalled())
            }
        }
    }

    /// The owner's one reply frame, within the reply timeout.
    async fn reply(&mut self) -> Result<StreamReply, ChannelError> {
        let inner = &self.link.inner;
        let after = inner.config.reply_timeout;
        let frame = match timeout(after, self.replies.frame(MAX_CONTROL_FRAME)).await {
            Err(_) => {
                return Err(ChannelError::NoReply {
                    peer: inner.name.to_string(),
                    after,
                });
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                return Err(self
                    .link
                    .failed("the owner ended the stream without a reply".into()));
            }
            Ok(Err(ReadFailure::Stream(ReadExactError::ReadError(ReadError::ConnectionLost(
                e,
            ))))) => return Err(connection_lost(inner.addr, e)),
            Ok(Err(ReadFailure::Stream(e))) => return Err(self.link.failed(e.to_string())),
            Ok(Err(ReadFailure::Frame(e))) => {
                return Err(self.link.failed(format!("a bad reply: {e}")));
            }
        };
        let payload = frame
            .into_payload(FrameKind::StreamReply)
            .map_err(|e| self.link.failed(format!("a bad reply: {e}")))?;
        StreamReply::decode(&payload).map_err(|e| self.link.failed(format!("a bad reply: {e}")))
    }

    fn refused(&self, refusal: crate::shuffle::Refusal) -> ChannelError {
        ChannelError::Refused {
            peer: self.link.inner.name.to_string(),
            refusal,
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(VarInt::from_u32(RESET_ABANDONED));
        }
    }
}
