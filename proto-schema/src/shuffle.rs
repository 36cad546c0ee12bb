//! The shuffle's stream protocol: what a stream of record batches from one
//! node to a partition range's owner carries besides the batches, and the
//! checks its receiver makes on every frame.
//!
//! ```text
//! sender → owner:  StreamHeader | RecordBatch ... | StreamEnd
//! owner → sender:  StreamReply  (Accepted with the counts it took, or Refused and why)
//! ```
//! Each is one frame (`frame.rs`): rkyv inside, header and checksum checked
//! before the archive is validated. The batches are the spill files'
//! `RecordBatch` frames (same archive, same validation); the stream adds
//! its own invariants, checked by [`StreamCheck`]: the header comes first,
//! every record's partition lies in the header's range, nothing follows
//! the end, and the end's counts are what arrived (a stream cut between
//! two frames would otherwise look complete).

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

use crate::batch::{BatchView, ValidBatch};
use crate::command::codec;
use crate::frame::{Frame, FrameError, FrameKind};
use crate::ids::{Epoch, JobId, NodeId, PartitionId};

/// The longest reason a refusal carries; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 512;
/// The largest header, end or reply frame a reader accepts: every field
/// is fixed-size but a refusal's reason.
pub const MAX_CONTROL_FRAME: u32 = 4096;

/// Contiguous partitions `start..end`, never empty.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionRange {
    pub start: PartitionId,
    pub end: PartitionId,
}

impl PartitionRange {
    /// `start..end`, or `None` if empty.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start < end).then_some(Self {
            start: PartitionId(start),
            end: PartitionId(end),
        })
    }

    pub fn contains(&self, partition: u16) -> bool {
        (self.start.get()..self.end.get()).contains(&partition)
    }

    /// Whether `other` lies wholly inside this range.
    pub fn covers(&self, other: &PartitionRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

impl fmt::Display for PartitionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partitions {}..{}", self.start, self.end)
    }
}

/// The first frame of a stream: which job's records follow, under which
/// partition map, from whom, for which partitions.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub job: JobId,
    /// The partition-map epoch the sender routed by.
    pub epoch: Epoch,
    /// The sending node; its certificate must be named for it.
    pub sender: NodeId,
    pub partitions: PartitionRange,
}

/// The last frame of a stream: what the sender sent.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    pub batches: u64,
    pub records: u64,
}

/// The owner's answer, the one frame it writes on a stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum StreamReply {
    /// Every batch was checked and handed to the owner's pipeline.
    Accepted {
        batches: u64,
        records: u64,
    },
    Refused(Refusal),
}

/// Why an owner refused a stream. What was delivered before a refusal
/// stays delivered: a refused stream is sent again whole, and the owner's
/// dedup drops what it already has.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The owner runs no such job (never did, or it has ended).
    UnknownJob { job: JobId },
    /// The sender routed by another partition map than the owner's
    /// (older: it is fenced; newer: the owner has not learned it yet).
    StaleEpoch {
        job: JobId,
        stream: Epoch,
        current: Epoch,
    },
    /// The owner does not own the stream's partitions (as one lane) under
    /// its current map.
    NotOwner {
        job: JobId,
        partitions: PartitionRange,
    },
    /// The header names another node than the sender's certificate.
    WrongSender { claimed: NodeId },
    /// A frame failed its checks: header, checksum, archive, batch or
    /// stream invariants. The reason names the frame.
    Damaged { reason: String },
    /// The owner's pipeline for the job stopped taking batches.
    OwnerGone { job: JobId },
    /// The owner's pipeline took nothing for this long (its stall
    /// timeout).
    OwnerStalled { job: JobId, millis: u64 },
}

impl Refusal {
    /// A damaged-frame refusal whose reason is cut to [`MAX_REASON_BYTES`].
    pub fn damaged(reason: impl fmt::Display) -> Self {
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Refusal::Damaged { reason }
    }

    /// The reason's label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownJob { .. } => "unknown_job",
            Refusal::StaleEpoch { .. } => "stale_epoch",
            Refusal::NotOwner { .. } => "not_owner",
            Refusal::WrongSender { .. } => "wrong_sender",
            Refusal::Damaged { .. } => "damaged",
            Refusal::OwnerGone { .. } => "owner_gone",
            Refusal::OwnerStalled { .. } => "owner_stalled",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownJob { job } => write!(f, "job {job} is unknown here"),
            Refusal::StaleEpoch {
                job,
                stream,
                current,
            } => write!(
                f,
                "job {job}: the stream was routed by partition map {stream}, the owner's is {current}"
            ),
            Refusal::NotOwner { job, partitions } => {
                write!(f, "job {job}: {partitions} are not one lane of this owner")
            }
            Refusal::WrongSender { claimed } => write!(
                f,
                "the stream claims to come from node {claimed}, whose certificate the sender does not hold"
            ),
            Refusal::Damaged { reason } => write!(f, "damaged stream: {reason}"),
            Refusal::OwnerGone { job } => write!(f, "job {job}'s pipeline stopped taking batches"),
            Refusal::OwnerStalled { job, millis } => {
                write!(f, "job {job}'s pipeline took nothing for {millis} ms")
            }
        }
    }
}

codec!(StreamHeader, "stream header");
codec!(StreamEnd, "stream end");
codec!(StreamReply, "stream reply");

impl StreamReply {
    /// Decodes a reply and checks its one unbounded field.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let reply = Self::from_bytes(bytes).map_err(|e| e.to_string())?;
        match &reply {
            StreamReply::Refused(Refusal::Damaged { reason })
                if reason.len() > MAX_REASON_BYTES =>
            {
                Err(format!(
                    "a refusal's reason of {} bytes is over the limit of {MAX_REASON_BYTES}",
                    reason.len()
                ))
            }
            _ => Ok(reply),
        }
    }
}

/// What a checked frame after a stream's header is.
pub enum StreamEvent {
    Batch(ValidBatch),
    /// The stream is complete; its counts matched.
    End(StreamEnd),
}

/// The receiver's checks on a stream's frames, in order. Frames come here
/// with header and checksum already checked (`FrameHeader`).
#[derive(Debug)]
pub struct StreamCheck {
    header: StreamHeader,
    batches: u64,
    records: u64,
    ended: bool,
}

impl StreamCheck {
    /// Checks a stream's first frame, which must be its header.
    pub fn open(frame: Frame) -> Result<Self, Refusal> {
        let offset = frame.offset;
        let payload = frame
            .into_payload(FrameKind::StreamHeader)
            .map_err(|e| Refusal::damaged(format!("the stream must open with its header: {e}")))?;
        let header = StreamHeader::from_bytes(&payload)
            .map_err(|e| Refusal::damaged(format!("frame at byte {offset}: {e}")))?;
        if header.partitions.start >= header.partitions.end {
            return Err(Refusal::damaged(format!(
                "frame at byte {offset}: empty {}",
                header.partitions
            )));
        }
        Ok(Self {
            header,
            batches: 0,
            records: 0,
            ended: false,
        })
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Checks the stream's next frame.
    pub fn next(&mut self, frame: Frame) -> Result<StreamEvent, Refusal> {
        let offset = frame.offset;
        let damaged = |what: String| Refusal::damaged(format!("frame at byte {offset}: {what}"));
        if self.ended {
            return Err(damaged(format!("a {:?} frame after the end", frame.kind)));
        }
        match frame.kind {
            FrameKind::RecordBatch => {
                let batch = frame.into_batch().map_err(Refusal::damaged)?;
                let range = self.header.partitions;
                if let Some(i) =
                    (0..batch.len()).find(|&i| !range.contains(batch.record(i).partition))
                {
                    let partition = batch.record(i).partition;
                    return Err(damaged(format!(
                        "record {i} is in partition {partition}, outside the stream's {range}"
                    )));
                }
                self.batches += 1;
                self.records += batch.len() as u64;
                Ok(StreamEvent::Batch(batch))
            }
            FrameKind::StreamEnd => {
                let end =
                    StreamEnd::from_bytes(&frame.payload).map_err(|e| damaged(e.to_string()))?;
                if (end.batches, end.records) != (self.batches, self.records) {
                    return Err(damaged(format!(
                        "the end counts {} batches and {} records, {} and {} arrived",
                        end.batches, end.records, self.batches, self.records
                    )));
                }
                self.ended = true;
                Ok(StreamEvent::End(end))
            }
            other => Err(damaged(format!("a {other:?} frame inside a stream"))),
        }
    }

    /// Whether the end frame has been checked.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// A frame error as a refusal: the frame reader's checks (magic, version,
/// kind, length, checksum) failed.
impl From<FrameError> for Refusal {
    fn from(error: FrameError) -> Self {
        Refusal::damaged(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::arb_batch;
    use crate::frame::{FrameReader, HEADER_LEN, write_frame};
    use crate::{Position, Record, RecordBatch};
    use proptest::prelude::*;

    const MAX: u32 = 1 << 24;

    fn arb_range() -> impl Strategy<Value = PartitionRange> {
        (0u16..u16::MAX).prop_flat_map(|start| {
            (start + 1..=u16::MAX).prop_map(move |end| PartitionRange::new(start, end).unwrap())
        })
    }

    fn arb_header() -> impl Strategy<Value = StreamHeader> {
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_range()).prop_map(
            |(job, epoch, sender, partitions)| StreamHeader {
                job: JobId(job),
                epoch: Epoch(epoch),
                sender: NodeId(sender),
                partitions,
            },
        )
    }

    fn arb_refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            any::<u64>().prop_map(|job| Refusal::UnknownJob { job: JobId(job) }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(j, s, c)| Refusal::StaleEpoch {
                job: JobId(j),
                stream: Epoch(s),
                current: Epoch(c)
            }),
            (any::<u64>(), arb_range()).prop_map(|(j, partitions)| Refusal::NotOwner {
                job: JobId(j),
                partitions
            }),
            any::<u64>().prop_map(|n| Refusal::WrongSender { claimed: NodeId(n) }),
            ".{0,600}".prop_map(Refusal::damaged),
            any::<u64>().prop_map(|job| Refusal::OwnerGone { job: JobId(job) }),
            (any::<u64>(), any::<u64>()).prop_map(|(j, millis)| Refusal::OwnerStalled {
                job: JobId(j),
                millis
            }),
        ]
    }

    /// Batches whose partitions are moved into `range`.
    fn in_range(batch: &RecordBatch, range: PartitionRange) -> RecordBatch {
        let width = u32::from(range.end.get() - range.start.get());
        let mut out = RecordBatch::new();
        for i in 0..batch.len() {
            let r = batch.record(i);
            let partition = range.start.get() + (u32::from(r.partition) % width) as u16;
            out.push(Record { partition, ..r });
        }
        out
    }

    /// A whole stream's bytes: header, batches, end.
    fn encode_stream(header: &StreamHeader, batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, FrameKind::StreamHeader, &header.to_bytes()).unwrap();
        let mut records = 0;
        for b in batches {
            write_frame(&mut out, FrameKind::RecordBatch, &b.to_archive()).unwrap();
            records += b.len() as u64;
        }
        let end = StreamEnd {
            batches: batches.len() as u64,
            records,
        };
        write_frame(&mut out, FrameKind::StreamEnd, &end.to_bytes()).unwrap();
        out
    }

    /// What a receiver makes of a stream's bytes: the header and batches,
    /// once the end has checked out.
    fn receive(bytes: &[u8]) -> Result<(StreamHeader, Vec<RecordBatch>), Refusal> {
        let mut reader = FrameReader::new(bytes, MAX);
        let first = reader
            .next_frame()?
            .ok_or_else(|| Refusal::damaged("the stream ended before its header"))?;
        let mut check = StreamCheck::open(first)?;
        let mut batches = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            match check.next(frame)? {
                StreamEvent::Batch(b) => batches.push(b.to_owned_batch()),
                StreamEvent::End(_) => {}
            }
        }
        if check.ended() {
            Ok((*check.header(), batches))
        } else {
            Err(Refusal::damaged("the stream ended without its end frame"))
        }
    }

    proptest! {
        #[test]
        fn control_frames_round_trip(header in arb_header(), refusal in arb_refusal(),
                                     batches in any::<u64>(), records in any::<u64>()) {
            prop_assert_eq!(StreamHeader::from_bytes(&header.to_bytes()).unwrap(), header);
            let end = StreamEnd { batches, records };
            prop_assert_eq!(StreamEnd::from_bytes(&end.to_bytes()).unwrap(), end);
            for reply in [StreamReply::Accepted { batches, records }, StreamReply::Refused(refusal)] {
                let bytes = reply.to_bytes();
                prop_assert!(bytes.len() <= MAX_CONTROL_FRAME as usize);
                prop_assert_eq!(StreamReply::decode(&bytes).unwrap(), reply);
            }
        }

        #[test]
        fn streams_round_trip(header in arb_header(),
                              batches in proptest::collection::vec(arb_batch(), 0..5)) {
            let batches: Vec<_> = batches.iter().map(|b| in_range(b, header.partitions)).collect();
            let (got_header, got) = receive(&encode_stream(&header, &batches)).unwrap();
            prop_assert_eq!(got_header, header);
            prop_assert_eq!(got, batches);
        }

        /// Any single flipped byte is refused: never accepted as other data.
        #[test]
        fn a_flipped_byte_is_refused(
            header in arb_header(),
            batches in proptest::collection::vec(arb_batch(), 0..4),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let batches: Vec<_> = batches.iter().map(|b| in_range(b, header.partitions)).collect();
            let mut bytes = encode_stream(&header, &batches);
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(receive(&bytes).is_err(), "flip at byte {} went unnoticed", i);
        }

        /// A stream cut anywhere, even between two frames, is refused.
        #[test]
        fn a_cut_stream_is_refused(
            header in arb_header(),
            batches in proptest::collection::vec(arb_batch(), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let batches: Vec<_> = batches.iter().map(|b| in_range(b, header.partitions)).collect();
            let bytes = encode_stream(&header, &batches);
            let cut = cut.index(bytes.len());
            prop_assert!(receive(&bytes[..cut]).is_err());
        }
    }

    fn one_record(partition: u16) -> RecordBatch {
        let mut b = RecordBatch::new();
        b.push(Record {
            partition,
            key: b"k",
            value: b"",
            position: Position { file: 0, offset: 0 },
        });
        b
    }

    fn header(start: u16, end: u16) -> StreamHeader {
        StreamHeader {
            job: JobId(7),
            epoch: Epoch(3),
            sender: NodeId(2),
            partitions: PartitionRange::new(start, end).unwrap(),
        }
    }

    fn refusal_of(bytes: &[u8]) -> String {
        match receive(bytes) {
            Err(Refusal::Damaged { reason }) => reason,
            other => panic!(
                "expected a damaged-stream refusal, got {:?}",
                other.map(|_| ())
            ),
        }
    }

    #[test]
    fn a_record_outside_the_range_is_refused() {
        let bytes = encode_stream(&header(4, 8), &[one_record(5), one_record(8)]);
        let reason = refusal_of(&bytes);
        assert!(
            reason.contains("partition 8, outside the stream's partitions 4..8"),
            "{reason}"
        );
    }

    #[test]
    fn frames_out_of_place_are_refused() {
        // No header first.
        let mut bytes = Vec::new();
        write_frame(
            &mut bytes,
            FrameKind::RecordBatch,
            &one_record(0).to_archive(),
        )
        .unwrap();
        assert!(refusal_of(&bytes).contains("must open with its header"));
        // A frame after the end.
        let mut bytes = encode_stream(&header(0, 1), &[]);
        write_frame(
            &mut bytes,
            FrameKind::RecordBatch,
            &one_record(0).to_archive(),
        )
        .unwrap();
        assert!(refusal_of(&bytes).contains("after the end"));
        // A spill trailer inside a stream.
        let mut bytes = Vec::new();
        write_frame(
            &mut bytes,
            FrameKind::StreamHeader,
            &header(0, 1).to_bytes(),
        )
        .unwrap();
        let trailer = crate::RunTrailer {
            records: 0,
            frames: 0,
        };
        write_frame(&mut bytes, FrameKind::RunTrailer, &trailer.to_archive()).unwrap();
        assert!(refusal_of(&bytes).contains("RunTrailer frame inside a stream"));
    }

    #[test]
    fn end_counts_must_match() {
        let mut bytes = Vec::new();
        write_frame(
            &mut bytes,
            FrameKind::StreamHeader,
            &header(0, 1).to_bytes(),
        )
        .unwrap();
        write_frame(
            &mut bytes,
            FrameKind::RecordBatch,
            &one_record(0).to_archive(),
        )
        .unwrap();
        let end = StreamEnd {
            batches: 2,
            records: 2,
        };
        write_frame(&mut bytes, FrameKind::StreamEnd, &end.to_bytes()).unwrap();
        let reason = refusal_of(&bytes);
        assert!(
            reason.contains("2 batches and 2 records, 1 and 1 arrived"),
            "{reason}"
        );
        assert!(reason.contains(&format!(
            "frame at byte {}",
            2 * HEADER_LEN + header(0, 1).to_bytes().len() + one_record(0).to_archive().len()
        )));
    }

    #[test]
    fn reasons_are_bounded() {
        let Refusal::Damaged { reason } = Refusal::damaged("é".repeat(1000)) else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON_BYTES && reason.len() >= MAX_REASON_BYTES - 1);
        let long = StreamReply::Refused(Refusal::Damaged {
            reason: "x".repeat(MAX_REASON_BYTES + 1),
        });
        assert!(StreamReply::decode(&long.to_bytes()).is_err());
    }
}
