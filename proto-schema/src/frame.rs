//! Frames: how archives travel through files and through the shuffle's
//! QUIC streams.
//!
//! ```text
//! magic "QRNF" | version u16 | kind u16 | payload length u32 | CRC-32 u32 | payload
//! ```
//! All integers little-endian; the header is 16 bytes. A reader checks every
//! header field and the checksum before handing the payload to rkyv, and its
//! errors carry the byte offset of the offending frame.

use std::io::{self, Read, Write};

use rkyv::util::AlignedVec;

use crate::batch::{BatchError, RunTrailer, ValidBatch};

pub const MAGIC: [u8; 4] = *b"QRNF";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 16;

/// What a frame's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    RecordBatch = 1,
    RunTrailer = 2,
    /// Per-file counters spilled by a node (its ledger's runs).
    FileCounts = 3,
    /// The first frame of a shuffle stream: whose records follow
    /// (`shuffle::StreamHeader`).
    StreamHeader = 4,
    /// The last frame of a shuffle stream: how many batches and records
    /// it carried (`shuffle::StreamEnd`).
    StreamEnd = 5,
    /// The receiver's answer on a shuffle stream (`shuffle::StreamReply`).
    StreamReply = 6,
    /// The first frame of a read stream: what a client asks a node's
    /// store for (`read::ReadRequest`).
    ReadRequest = 7,
    /// An answer on a read stream other than a batch (`read::ReadItem`).
    ReadItem = 8,
    /// The last frame of a read stream (`read::ReadEnd`).
    ReadEnd = 9,
}

impl FrameKind {
    fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::RecordBatch),
            2 => Some(Self::RunTrailer),
            3 => Some(Self::FileCounts),
            4 => Some(Self::StreamHeader),
            5 => Some(Self::StreamEnd),
            6 => Some(Self::StreamReply),
            7 => Some(Self::ReadRequest),
            8 => Some(Self::ReadItem),
            9 => Some(Self::ReadEnd),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("read error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("bad frame magic at byte {offset}: not a Quern frame")]
    BadMagic { offset: u64 },
    #[error("frame at byte {offset} has version {version}; this build reads version {VERSION}")]
    UnsupportedVersion { offset: u64, version: u16 },
    #[error("frame at byte {offset} has unknown kind {kind}")]
    UnknownKind { offset: u64, kind: u16 },
    #[error("frame at byte {offset} claims {len} payload bytes, over the limit of {max}")]
    TooLarge { offset: u64, len: u32, max: u32 },
    #[error("truncated frame at byte {offset}: {what}")]
    Truncated { offset: u64, what: &'static str },
    #[error(
        "checksum mismatch in frame at byte {offset}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    Checksum {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("frame at byte {offset}: {source}")]
    Invalid { offset: u64, source: BatchError },
    #[error("frame at byte {offset} is a {found:?} where a {expected:?} was expected")]
    UnexpectedKind {
        offset: u64,
        expected: FrameKind,
        found: FrameKind,
    },
}

/// Writes one frame and returns the bytes written.
pub fn write_frame(out: &mut impl Write, kind: FrameKind, payload: &[u8]) -> io::Result<u64> {
    out.write_all(&FrameHeader::encode(kind, payload)?)?;
    out.write_all(payload)?;
    Ok((HEADER_LEN + payload.len()) as u64)
}

/// A frame's header, checked field by field: what a reader of any byte
/// stream (a file, a QUIC stream) needs before it reads the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub len: u32,
    checksum: u32,
}

impl FrameHeader {
    /// The header of a frame carrying `payload`.
    pub fn encode(kind: FrameKind, payload: &[u8]) -> io::Result<[u8; HEADER_LEN]> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame payload over 4 GiB"))?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4..6].copy_from_slice(&VERSION.to_le_bytes());
        header[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..16].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        Ok(header)
    }

    /// Checks magic, version, kind and length (against `max_payload`,
    /// before anything is allocated) of the header at byte `offset`.
    pub fn parse(
        header: &[u8; HEADER_LEN],
        offset: u64,
        max_payload: u32,
    ) -> Result<Self, FrameError> {
        if header[0..4] != MAGIC {
            return Err(FrameError::BadMagic { offset });
        }
        let field16 = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let field32 = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let version = field16(4);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { offset, version });
        }
        let kind = FrameKind::from_u16(field16(6)).ok_or(FrameError::UnknownKind {
            offset,
            kind: field16(6),
        })?;
        let len = field32(8);
        if len > max_payload {
            return Err(FrameError::TooLarge {
                offset,
                len,
                max: max_payload,
            });
        }
        Ok(Self {
            kind,
            len,
            checksum: field32(12),
        })
    }

    /// Checks the payload read after this header against its checksum.
    pub fn check_payload(&self, payload: &[u8], offset: u64) -> Result<(), FrameError> {
        let computed = crc32fast::hash(payload);
        if computed == self.checksum {
            Ok(())
        } else {
            Err(FrameError::Checksum {
                offset,
                stored: self.checksum,
                computed,
            })
        }
    }
}

/// A checked frame: header valid, checksum matched. The payload sits in an
/// aligned buffer so rkyv can validate and read it in place.
pub struct Frame {
    pub kind: FrameKind,
    pub offset: u64,
    pub payload: AlignedVec,
}

impl Frame {
    /// Validates the payload as a record batch.
    pub fn into_batch(self) -> Result<ValidBatch, FrameError> {
        self.expect_kind(FrameKind::RecordBatch)?;
        let offset = self.offset;
        ValidBatch::new(self.payload).map_err(|source| FrameError::Invalid { offset, source })
    }

    /// Validates the payload as a run trailer.
    pub fn into_trailer(self) -> Result<RunTrailer, FrameError> {
        self.expect_kind(FrameKind::RunTrailer)?;
        RunTrailer::from_archive(&self.payload).map_err(|source| FrameError::Invalid {
            offset: self.offset,
            source,
        })
    }

    /// The payload of a frame of `expected` kind, for formats that check
    /// their own payload.
    pub fn into_payload(self, expected: FrameKind) -> Result<AlignedVec, FrameError> {
        self.expect_kind(expected)?;
        Ok(self.payload)
    }

    fn expect_kind(&self, expected: FrameKind) -> Result<(), FrameError> {
        if self.kind == expected {
            Ok(())
        } else {
            Err(FrameError::UnexpectedKind {
                offset: self.offset,
                expected,
                found: self.kind,
            })
        }
    }
}

/// Reads frames one at a time from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    max_payload: u32,
}

impl<R: Read> FrameReader<R> {
    /// `max_payload` bounds the buffer a corrupt length field could make us
    /// allocate.
    pub fn new(inner: R, max_payload: u32) -> Self {
        Self {
            inner,
            offset: 0,
            max_payload,
        }
    }

    /// The byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, or `None` at a clean end of stream (between frames).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.next_frame_in(AlignedVec::new())
    }

    /// As [`next_frame`](Self::next_frame), reading the payload into
    /// `buffer` (a previous frame's, given back), so a reader going through
    /// a long stream reuses one allocation.
    pub fn next_frame_in(&mut self, mut buffer: AlignedVec) -> Result<Option<Frame>, FrameError> {
        let offset = self.offset;
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.inner, &mut header)
            .map_err(|source| FrameError::Io { offset, source })?
        {
            0 => return Ok(None),
            HEADER_LEN => {}
            _ => {
                return Err(FrameError::Truncated {
                    offset,
                    what: "stream ends inside a frame header",
                });
            }
        }
        let checked = FrameHeader::parse(&header, offset, self.max_payload)?;
        let (kind, len) = (checked.kind, checked.len);

        let mut payload = {
            buffer.clear();
            buffer
        };
        payload.resize(len as usize, 0);
        let got = read_full(&mut self.inner, &mut payload)
            .map_err(|source| FrameError::Io { offset, source })?;
        if got != len as usize {
            return Err(FrameError::Truncated {
                offset,
                what: "stream ends inside a frame payload",
            });
        }
        checked.check_payload(&payload, offset)?;
        self.offset += (HEADER_LEN + len as usize) as u64;
        Ok(Some(Frame {
            kind,
            offset,
            payload,
        }))
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordBatch;
    use crate::batch::tests::arb_batch;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 24;

    fn encode(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        for batch in batches {
            write_frame(&mut out, FrameKind::RecordBatch, &batch.to_archive()).unwrap();
        }
        out
    }

    /// Decodes every frame of a stream, stopping at the first error.
    fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, FrameError> {
        let mut reader = FrameReader::new(bytes, MAX);
        let mut out = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            out.push(frame.into_batch()?.to_owned_batch());
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn frames_round_trip(batches in proptest::collection::vec(arb_batch(), 0..5)) {
            prop_assert_eq!(decode(&encode(&batches)).unwrap(), batches);
        }

        /// Any single flipped byte is caught: by the header checks, the
        /// checksum, or validation. Never a panic, never silently other data.
        #[test]
        fn a_flipped_byte_is_detected(
            batches in proptest::collection::vec(arb_batch(), 1..4),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = encode(&batches);
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(decode(&bytes).is_err(), "flip at byte {} went unnoticed", i);
        }

        #[test]
        fn truncation_is_detected(
            batches in proptest::collection::vec(arb_batch(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&batches);
            let cut = cut.index(bytes.len());
            let frame_starts: Vec<usize> = {
                let mut starts = vec![0];
                for b in &batches {
                    let next = starts.last().unwrap() + HEADER_LEN + b.to_archive().len();
                    starts.push(next);
                }
                starts
            };
            match decode(&bytes[..cut]) {
                // A cut exactly between frames is a shorter valid stream; run
                // files add a trailer frame to catch that case.
                Ok(got) => {
                    prop_assert!(frame_starts.contains(&cut));
                    prop_assert_eq!(&got[..], &batches[..got.len()]);
                }
                Err(e) => prop_assert!(!frame_starts.contains(&cut), "clean cut refused: {}", e),
            }
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let batch = {
            let mut b = RecordBatch::new();
            b.push(crate::Record {
                partition: 0,
                key: b"k",
                value: b"",
                position: crate::Position { file: 0, offset: 0 },
            });
            b
        };
        let mut bytes = encode(&[batch.clone(), batch]);
        let second = bytes.len() / 2;
        bytes[second + HEADER_LEN] ^= 0xff;
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, FrameError::Checksum { offset, .. } if offset == second as u64));
        assert!(err.to_string().contains(&format!("at byte {second}")));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut bytes = encode(&[RecordBatch::new()]);
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::TooLarge { len: u32::MAX, .. })
        ));
    }

    #[test]
    fn kinds_are_checked() {
        let mut bytes = Vec::new();
        let trailer = RunTrailer {
            records: 1,
            frames: 1,
        };
        write_frame(&mut bytes, FrameKind::RunTrailer, &trailer.to_archive()).unwrap();
        let frame = FrameReader::new(&bytes[..], MAX)
            .next_frame()
            .unwrap()
            .unwrap();
        assert!(matches!(
            frame.into_batch(),
            Err(FrameError::UnexpectedKind { .. })
        ));
        let frame = FrameReader::new(&bytes[..], MAX)
            .next_frame()
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_trailer().unwrap(), trailer);
    }
}
