//! Read streams on the data channel (`crate::read`): a client opens one
//! stream per request, sends its [`ReadRequest`] and reads the node's
//! answer ([`ReadStream`]); the node writes it through a [`ReadOutput`].
//!
//! Back-pressure is QUIC's: the node's writes wait (each within the stall
//! timeout) while the client's windows are full, and the client reads a
//! frame only when its merge wants the next batch, so what a stream holds
//! at the client is its window and one frame, whose size is checked
//! against the client's frame limit ([`ChannelConfig::max_frame`]) from
//! its header, before its payload is read.

use std::sync::Arc;

use metrics::Counter;
use quinn::{ReadError, ReadExactError, SendStream, VarInt, WriteError};
use rkyv::util::AlignedVec;
use tokio::time::timeout;

use super::frames::{self, FrameStream, ReadFailure};
use super::sender::Link;
use super::{ChannelConfig, ChannelError, READ_STREAMS_METRIC, SENT_BYTES_METRIC, connection_lost};
use crate::RecordBatch;
use crate::batch::BatchView;
use crate::frame::{FrameKind, HEADER_LEN};
use crate::read::{ReadCheck, ReadEnd, ReadEvent, ReadItem, ReadRequest, bounded_text};

/// Stream code: the node gave up on a client that took nothing for the
/// stall timeout.
const RESET_STALLED: u32 = 3;

/// The node's side of one read stream. Dropping it before
/// [`end`](Self::end) resets the stream: the client sees it fail.
pub struct ReadOutput {
    send: Option<SendStream>,
    config: Arc<ChannelConfig>,
    peer: String,
    sent: Counter,
    buffer: AlignedVec,
    frames: u64,
    records: u64,
}

impl frames::BatchWriter for ReadOutput {
    fn max_frame(&self) -> u32 {
        self.config.max_frame
    }

    fn buffer(&mut self) -> &mut AlignedVec {
        &mut self.buffer
    }

    async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ChannelError> {
        self.write(kind, payload).await
    }
}

impl ReadOutput {
    pub(super) fn new(send: SendStream, config: Arc<ChannelConfig>, peer: String) -> Self {
        let sent = metrics::counter!(SENT_BYTES_METRIC, "link" => peer.clone());
        Self {
            send: Some(send),
            config,
            peer,
            sent,
            buffer: AlignedVec::new(),
            frames: 0,
            records: 0,
        }
    }

    /// Sends an item; waits while the client's windows are full.
    pub async fn item(&mut self, item: &ReadItem) -> Result<(), ChannelError> {
        self.write(FrameKind::ReadItem, &item.to_bytes()).await?;
        self.frames += 1;
        Ok(())
    }

    /// Sends a batch of records (keys ascending, after every earlier
    /// batch's); waits while the client's windows are full.
    pub async fn batch(&mut self, batch: &RecordBatch) -> Result<(), ChannelError> {
        frames::write_batch(self, batch).await?;
        self.frames += 1;
        self.records += batch.len() as u64;
        Ok(())
    }

    /// Ends the stream: complete if `failure` is `None`, else refused or
    /// cut short with that reason, which the client reports.
    pub async fn end(mut self, failure: Option<String>) -> Result<(), ChannelError> {
        let outcome = if failure.is_some() {
            "failed"
        } else {
            "complete"
        };
        metrics::counter!(READ_STREAMS_METRIC, "outcome" => outcome).increment(1);
        let end = ReadEnd {
            frames: self.frames,
            records: self.records,
            failure: failure.map(bounded_text),
        };
        self.write(FrameKind::ReadEnd, &end.to_bytes()).await?;
        if let Some(mut send) = self.send.take() {
            let _ = send.finish();
        }
        Ok(())
    }

    async fn write(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ChannelError> {
        let send = self.send.as_mut().expect("present until the end");
        let after = self.config.stall_timeout;
        match timeout(after, frames::write(send, kind, payload)).await {
            Ok(Ok(())) => {
                self.sent.increment((HEADER_LEN + payload.len()) as u64);
                Ok(())
            }
            Ok(Err(e)) => Err(ChannelError::Stream {
                peer: self.peer.clone(),
                reason: e.to_string(),
            }),
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(RESET_STALLED));
                self.send = None;
                Err(ChannelError::Stalled {
                    peer: self.peer.clone(),
                    after,
                })
            }
        }
    }
}

impl Drop for ReadOutput {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            metrics::counter!(READ_STREAMS_METRIC, "outcome" => "abandoned").increment(1);
            let _ = send.reset(VarInt::from_u32(RESET_STALLED));
        }
    }
}

/// The client's side of one read stream: the node's answer, frame by
/// frame, each checked ([`ReadCheck`]).
pub struct ReadStream {
    link: Link,
    frames: FrameStream,
    check: ReadCheck,
}

impl Link {
    /// Sends `request` on a new stream; the node's answer follows on it.
    pub async fn read(&self, request: &ReadRequest) -> Result<ReadStream, ChannelError> {
        let inner = &self.inner;
        let after = inner.config.stall_timeout;
        let (mut send, recv) = match timeout(after, inner.connection.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(connection_lost(inner.addr, e)),
            Err(_) => return Err(self.stalled()),
        };
        let written = timeout(
            after,
            frames::write(&mut send, FrameKind::ReadRequest, &request.to_bytes()),
        )
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(WriteError::ConnectionLost(e))) => return Err(connection_lost(inner.addr, e)),
            Ok(Err(e)) => return Err(self.failed(e.to_string())),
            Err(_) => return Err(self.stalled()),
        }
        let _ = send.finish();
        Ok(ReadStream {
            link: self.clone(),
            frames: FrameStream::new(recv),
            check: ReadCheck::new(),
        })
    }
}

impl ReadStream {
    /// The next checked frame; [`ReadEvent::End`] once the stream is
    /// complete. Waits at most the stall timeout for it.
    pub async fn next(&mut self) -> Result<ReadEvent, ChannelError> {
        let inner = &self.link.inner;
        let after = inner.config.stall_timeout;
        let read = async {
            let header = self.frames.header(inner.config.max_frame).await?;
            match header {
                Some(header) => self
                    .frames
                    .payload(header, AlignedVec::new())
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let frame = match timeout(after, read).await {
            Err(_) => return Err(self.link.stalled()),
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                return Err(self
                    .link
                    .failed("the node ended the stream before its end frame".into()));
            }
            Ok(Err(ReadFailure::Stream(ReadExactError::ReadError(ReadError::ConnectionLost(
                e,
            ))))) => return Err(connection_lost(inner.addr, e)),
            Ok(Err(ReadFailure::Stream(e))) => return Err(self.link.failed(e.to_string())),
            Ok(Err(ReadFailure::Frame(e))) => return Err(self.link.failed(e.to_string())),
        };
        self.check
            .next(frame)
            .map_err(|reason| self.link.failed(reason))
    }
}
