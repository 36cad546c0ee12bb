//! The owner's side: every stream a peer opens is read frame by frame,
//! each frame checked ([`StreamCheck`]) before its batch is handed, read in
//! place, to the owner's [`BatchSink`]; the stream ends with one reply
//! saying what was taken or why the stream was refused. Refusals are
//! counted by reason and logged.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, VarInt};
use rkyv::util::AlignedVec;
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::frames::{self, FrameStream, ReadFailure};
use super::reads::ReadOutput;
use super::windows::LinkWindows;
use super::{
    ChannelConfig, RECEIVE_BLOCKED_METRIC, RECEIVED_BYTES_METRIC, REFUSED_METRIC, STREAMS_METRIC,
};
use crate::batch::ValidBatch;
use crate::frame::{Frame, FrameKind, HEADER_LEN};
use crate::quic::Peer;
use crate::quic::endpoint::{self, AcceptLimits, Slot};
use crate::quic::{DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HANDSHAKES_PER_ADDRESS};
use crate::read::{MAX_READ_REQUEST, ReadRequest};
use crate::shuffle::{
    MAX_CONTROL_FRAME, Refusal, StreamCheck, StreamEnd, StreamEvent, StreamHeader, StreamReply,
};

/// Stream code: the owner refused the stream (its reply says why).
const STOP_REFUSED: u32 = 1;

/// Where an owner's streams go: it decides whether to take a stream from
/// its header (the job, the partition-map epoch, the partitions, who
/// sends), and gives each accepted stream a sink.
pub trait StreamHandler: Send + Sync + 'static {
    type Sink: BatchSink;

    /// Accepts a stream with a sink for its batches, or refuses it. May
    /// wait, within a bound of its own (the owner may not have started
    /// the job yet).
    fn open(
        &self,
        peer: &Peer,
        header: &StreamHeader,
    ) -> impl Future<Output = Result<Self::Sink, Refusal>> + Send;

    /// Answers a read stream's `request` (bounds checked) through `out`,
    /// ending it. By default, a refusal: the endpoint serves no reads.
    fn read(
        &self,
        peer: &Peer,
        request: ReadRequest,
        out: ReadOutput,
    ) -> impl Future<Output = ()> + Send {
        let _ = (peer, request);
        async move {
            let _ = out.end(Some("this endpoint serves no reads".into())).await;
        }
    }
}

/// The owner's pipeline as one stream sees it.
pub trait BatchSink: Send + 'static {
    /// Room for one batch, taken before its bytes are read.
    type Room: Send + 'static;

    /// Waits for room for a batch frame of `bytes`: while it waits the
    /// stream is not read, so its window closes and the sender waits too.
    fn reserve(&mut self, bytes: u64) -> impl Future<Output = Result<Self::Room, Refusal>> + Send;

    /// Hands a checked batch on with the room reserved for it. Must not
    /// wait. May still refuse (the job's epoch moved on meanwhile).
    fn deliver(&mut self, batch: ValidBatch, room: Self::Room) -> Result<(), Refusal>;

    /// The stream's end checked out: every batch it counts was delivered.
    /// The owner's last chance to refuse before the sender is told.
    fn end(&mut self, end: &StreamEnd) -> Result<(), Refusal>;
}

/// Per-link figures of the receiving side.
#[derive(Clone)]
struct LinkFigures {
    received: Counter,
    blocked: Gauge,
}

/// Serves every link peers open to `endpoint` until it closes.
pub(super) async fn serve<H: StreamHandler>(
    endpoint: quinn::Endpoint,
    config: Arc<ChannelConfig>,
    windows: Arc<LinkWindows>,
    handler: Arc<H>,
) {
    let limits = AcceptLimits {
        max_connections: config.max_links,
        max_handshakes: DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    };
    endpoint::accept_loop(endpoint, limits, |incoming, slot| {
        serve_link(
            incoming,
            slot,
            config.clone(),
            windows.clone(),
            handler.clone(),
        )
    })
    .await;
}

async fn serve_link<H: StreamHandler>(
    incoming: quinn::Incoming,
    slot: Slot,
    config: Arc<ChannelConfig>,
    windows: Arc<LinkWindows>,
    handler: Arc<H>,
) {
    let Some((connection, peer)) =
        endpoint::handshake(incoming, slot, config.connect_timeout).await
    else {
        return;
    };
    let _share = windows.register(&connection);
    let link = peer
        .name
        .as_deref()
        .map_or_else(|| peer.address.to_string(), str::to_owned);
    let label = [("link", link)];
    let figures = LinkFigures {
        received: metrics::counter!(RECEIVED_BYTES_METRIC, &label),
        blocked: metrics::gauge!(RECEIVE_BLOCKED_METRIC, &label),
    };
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let stream = Stream {
                        peer: peer.clone(),
                        config: config.clone(),
                        figures: figures.clone(),
                        connection: connection.clone(),
                    };
                    streams.spawn(stream.serve(send, recv, handler.clone()));
                }
                Err(e) => {
                    tracing::debug!(remote = %peer.address, error = %e, "data link ended");
                    break;
                }
            },
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                if done.is_err_and(|e| e.is_panic()) {
                    tracing::warn!(remote = %peer.address, "a shuffle stream's handler panicked");
                }
            }
        }
    }
    streams.shutdown().await;
}

/// How a stream ended, if not accepted.
enum Failure {
    Refused(Refusal),
    /// The sender or the connection went away: no one to answer.
    Abandoned(String),
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Failure::Refused(refusal)
    }
}

impl From<ReadFailure> for Failure {
    fn from(failure: ReadFailure) -> Self {
        match failure {
            ReadFailure::Frame(e) => Failure::Refused(e.into()),
            ReadFailure::Stream(ReadExactError::ReadError(ReadError::Reset(code))) => {
                Failure::Abandoned(format!("the sender reset the stream (code {code})"))
            }
            ReadFailure::Stream(e) => Failure::Abandoned(e.to_string()),
        }
    }
}

/// One stream being served.
struct Stream {
    peer: Peer,
    config: Arc<ChannelConfig>,
    figures: LinkFigures,
    connection: quinn::Connection,
}

impl Stream {
    async fn serve<H: StreamHandler>(
        self,
        mut send: SendStream,
        recv: RecvStream,
        handler: Arc<H>,
    ) {
        let mut frames = FrameStream::new(recv);
        let outcome = match self.first(&mut frames).await {
            Ok(first) if first.kind == FrameKind::ReadRequest => {
                return self.read(first, send, &*handler).await;
            }
            Ok(first) => self.receive(first, &mut frames, &*handler).await,
            Err(failure) => Err(failure),
        };
        let remote = self.peer.address;
        let reply = match outcome {
            Ok((batches, records)) => {
                metrics::counter!(STREAMS_METRIC, "outcome" => "accepted").increment(1);
                StreamReply::Accepted { batches, records }
            }
            Err(Failure::Refused(refusal)) => {
                metrics::counter!(STREAMS_METRIC, "outcome" => "refused").increment(1);
                metrics::counter!(REFUSED_METRIC, "reason" => refusal.label()).increment(1);
                tracing::warn!(%remote, name = ?self.peer.name, %refusal, "refused a shuffle stream");
                let _ = frames.recv.stop(VarInt::from_u32(STOP_REFUSED));
                StreamReply::Refused(refusal)
            }
            Err(Failure::Abandoned(reason)) => {
                metrics::counter!(STREAMS_METRIC, "outcome" => "abandoned").increment(1);
                tracing::debug!(%remote, %reason, "a shuffle stream was abandoned");
                return;
            }
        };
        // A reply is a few bytes, well within any window; the bound is for
        // a peer that vanished meanwhile.
        let written = timeout(
            self.config.reply_timeout,
            frames::write(&mut send, FrameKind::StreamReply, &reply.to_bytes()),
        )
        .await;
        if let Ok(Ok(())) = written {
            let _ = send.finish();
        }
    }

    /// A stream's first frame, within the header timeout: a read
    /// stream's request (at most `MAX_READ_REQUEST` bytes) or else a
    /// shuffle stream's header (at most `MAX_CONTROL_FRAME`), each limit
    /// checked from the frame's header, before its payload is read.
    async fn first(&self, frames: &mut FrameStream) -> Result<Frame, Failure> {
        let after = self.config.header_timeout;
        let read = async {
            let header = frames
                .header(MAX_READ_REQUEST.max(MAX_CONTROL_FRAME))
                .await?
                .ok_or_else(|| Refusal::damaged("the stream ended before its header"))?;
            if header.kind != FrameKind::ReadRequest && header.len > MAX_CONTROL_FRAME {
                return Err(Failure::from(Refusal::damaged(format!(
                    "a {:?} frame of {} bytes opens the stream, over the limit of \
                     {MAX_CONTROL_FRAME}",
                    header.kind, header.len
                ))));
            }
            Ok(frames.payload(header, AlignedVec::new()).await?)
        };
        let first = timeout(after, read)
            .await
            .map_err(|_| Refusal::damaged(format!("no header within {after:?}")))??;
        self.count(first.payload.len());
        Ok(first)
    }

    /// Serves a read stream: its request decoded and within bounds, then
    /// answered by the handler.
    async fn read<H: StreamHandler>(self, first: Frame, send: SendStream, handler: &H) {
        let peer = self
            .peer
            .name
            .as_deref()
            .map_or_else(|| self.peer.address.to_string(), str::to_owned);
        let out = ReadOutput::new(send, self.config.clone(), peer);
        let request = ReadRequest::from_bytes(&first.payload)
            .map_err(|e| e.to_string())
            .and_then(|request| request.check_bounds().map(|()| request));
        match request {
            Ok(request) => handler.read(&self.peer, request, out).await,
            Err(reason) => {
                tracing::warn!(remote = %self.peer.address, %reason, "refused a read stream");
                let _ = out.end(Some(format!("a bad read request: {reason}"))).await;
            }
        }
    }

    /// Reads and checks the whole stream after its first frame (checked
    /// to be within `MAX_CONTROL_FRAME`), handing its batches to the
    /// handler's sink; returns the batches and records taken.
    async fn receive<H: StreamHandler>(
        &self,
        first: Frame,
        frames: &mut FrameStream,
        handler: &H,
    ) -> Result<(u64, u64), Failure> {
        let mut check = StreamCheck::open(first)?;
        let mut sink = handler.open(&self.peer, check.header()).await?;
        loop {
            let header = frames
                .header(self.config.max_frame)
                .await?
                .ok_or_else(|| Refusal::damaged("the stream ended without its end frame"))?;
            let room = match header.kind {
                FrameKind::RecordBatch => {
                    Some(self.room(&mut sink, header.len, check.header()).await?)
                }
                _ if header.len > MAX_CONTROL_FRAME => {
                    return Err(Refusal::damaged(format!(
                        "frame at byte {}: a {:?} frame of {} bytes, over the limit of {MAX_CONTROL_FRAME}",
                        frames.offset(),
                        header.kind,
                        header.len
                    ))
                    .into());
                }
                _ => None,
            };
            let frame = frames.payload(header, AlignedVec::new()).await?;
            self.count(frame.payload.len());
            match (check.next(frame)?, room) {
                (StreamEvent::Batch(batch), Some(room)) => sink.deliver(batch, room)?,
                (StreamEvent::End(end), _) => {
                    sink.end(&end)?;
                    return Ok((end.batches, end.records));
                }
                (StreamEvent::Batch(_), None) => {
                    unreachable!("only batch frames check out as batches, and they take room")
                }
            }
        }
    }

    /// Room in the owner's pipeline for a frame of `len` bytes, within the
    /// stall timeout; the time waited is the link's receive-blocked time.
    async fn room<S: BatchSink>(
        &self,
        sink: &mut S,
        len: u32,
        header: &StreamHeader,
    ) -> Result<S::Room, Failure> {
        let start = Instant::now();
        let after = self.config.stall_timeout;
        let outcome = tokio::select! {
            room = timeout(after, sink.reserve(u64::from(len))) => room,
            reason = self.connection.closed() => {
                return Err(Failure::Abandoned(format!("the link was lost waiting for room: {reason}")));
            }
        };
        self.figures
            .blocked
            .increment(start.elapsed().as_secs_f64());
        match outcome {
            Ok(room) => Ok(room?),
            Err(_) => Err(Refusal::OwnerStalled {
                job: header.job,
                millis: after.as_millis().try_into().unwrap_or(u64::MAX),
            }
            .into()),
        }
    }

    fn count(&self, payload: usize) {
        self.figures
            .received
            .increment((HEADER_LEN + payload) as u64);
    }
}
