//! Frames on a QUIC stream: the file format's header checks
//! ([`FrameHeader`]), read in two steps so a receiver can wait for room
//! between learning a frame's size and reading its payload.

use quinn::{ReadExactError, RecvStream, SendStream, WriteError};
use rkyv::util::AlignedVec;

use super::ChannelError;
use crate::RecordBatch;
use crate::frame::{Frame, FrameError, FrameHeader, FrameKind, HEADER_LEN};

/// Why a frame could not be read.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// The stream or its connection failed.
    Stream(ReadExactError),
}

/// A stream read through frame by frame, with the byte offset of the next.
pub(super) struct FrameStream {
    pub(super) recv: RecvStream,
    offset: u64,
}

impl FrameStream {
    pub(super) fn new(recv: RecvStream) -> Self {
        Self { recv, offset: 0 }
    }

    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame's checked header, or `None` if the stream ends
    /// cleanly before it.
    pub(super) async fn header(
        &mut self,
        max_payload: u32,
    ) -> Result<Option<FrameHeader>, ReadFailure> {
        let mut bytes = [0u8; HEADER_LEN];
        match self.recv.read_exact(&mut bytes).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::FinishedEarly(_)) => {
                return Err(ReadFailure::Frame(FrameError::Truncated {
                    offset: self.offset,
                    what: "stream ends inside a frame header",
                }));
            }
            Err(e) => return Err(ReadFailure::Stream(e)),
        }
        FrameHeader::parse(&bytes, self.offset, max_payload)
            .map(Some)
            .map_err(ReadFailure::Frame)
    }

    /// The payload `header` announced, checked against its checksum, read
    /// into `buffer`.
    pub(super) async fn payload(
        &mut self,
        header: FrameHeader,
        mut buffer: AlignedVec,
    ) -> Result<Frame, ReadFailure> {
        let offset = self.offset;
        buffer.clear();
        buffer.resize(header.len as usize, 0);
        match self.recv.read_exact(&mut buffer).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => {
                return Err(ReadFailure::Frame(FrameError::Truncated {
                    offset,
                    what: "stream ends inside a frame payload",
                }));
            }
            Err(e) => return Err(ReadFailure::Stream(e)),
        }
        header
            .check_payload(&buffer, offset)
            .map_err(ReadFailure::Frame)?;
        self.offset += (HEADER_LEN + buffer.len()) as u64;
        Ok(Frame {
            kind: header.kind,
            offset,
            payload: buffer,
        })
    }

    /// A whole frame of at most `max_payload` bytes (a control frame).
    pub(super) async fn frame(&mut self, max_payload: u32) -> Result<Option<Frame>, ReadFailure> {
        match self.header(max_payload).await? {
            Some(header) => self.payload(header, AlignedVec::new()).await.map(Some),
            None => Ok(None),
        }
    }
}

/// A stream that writes record batches: each archived into a buffer it
/// keeps for the next, and checked against its frame limit first.
pub(super) trait BatchWriter {
    fn max_frame(&self) -> u32;
    /// The last batch's archive, reused for the next.
    fn buffer(&mut self) -> &mut AlignedVec;
    async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), ChannelError>;
}

/// Writes `batch` as one frame of `to`, unless its archive is over the
/// frame limit.
pub(super) async fn write_batch(
    to: &mut impl BatchWriter,
    batch: &RecordBatch,
) -> Result<(), ChannelError> {
    let payload = batch.archive_into(std::mem::take(to.buffer()));
    let max = to.max_frame();
    let result = if payload.len() > max as usize {
        Err(ChannelError::TooLarge {
            len: payload.len(),
            max,
        })
    } else {
        to.write_frame(FrameKind::RecordBatch, &payload).await
    };
    *to.buffer() = payload;
    result
}

/// Writes one frame.
pub(super) async fn write(
    send: &mut SendStream,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), WriteError> {
    let header = FrameHeader::encode(kind, payload).expect("frame sizes are checked before");
    send.write_all(&header).await?;
    send.write_all(payload).await
}
