//! The read protocol: a client (the CLI's `export`, `get` and `stats`
//! with coordinators) reads what a node's store holds over the node's data
//! channel, beside the shuffle's streams.
//!
//! ```text
//! client → node:  ReadRequest
//! node → client:  ReadItem (Dataset or Absent) | RecordBatch or ReadItem ... | ReadEnd
//!            or:  ReadEnd (a refusal: its failure says why)
//! ```
//! Each is one frame (`frame.rs`), rkyv inside. The client checks every
//! frame in order ([`ReadCheck`]): the first says whether the node holds
//! the dataset, batches are the spill files' `RecordBatch` frames (same
//! validation) with keys strictly ascending across the whole stream (the
//! client's merge relies on it), every item's fields are within their
//! bounds, nothing follows the end, and the end's counts are what arrived,
//! so a stream cut between two frames is never taken for a complete one.

use rkyv::{Archive, Deserialize, Serialize};

use crate::batch::{BatchView, ValidBatch};
use crate::command::codec;
use crate::command::{MAX_DATASET_NAME_BYTES, MAX_PATH_BYTES};
use crate::frame::{Frame, FrameKind};
use crate::ids::JobId;
use crate::shuffle::MAX_REASON_BYTES;

/// The longest key a `get` may ask for (the default `--max-record`).
pub const MAX_READ_KEY_BYTES: usize = 1 << 20;
/// The largest request frame a node reads: a key and a dataset's name.
pub const MAX_READ_REQUEST: u32 = (MAX_READ_KEY_BYTES + 4096) as u32;
/// Bytes of records or items a node puts in one frame before sending it
/// (a frame may then take one more record or item).
pub const READ_BATCH_BYTES: usize = 256 << 10;
/// The most problems one file's entry carries; more are counted.
pub const MAX_FILE_PROBLEMS: usize = 64;
/// The longest text an item carries (a problem, a rejection, a job's
/// state, an excerpt).
pub const MAX_READ_TEXT_BYTES: usize = MAX_REASON_BYTES;

/// What a client asks a node for, about one dataset.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReadRequest {
    /// Every record, in key order (`RecordBatch` frames).
    Export { dataset: String },
    /// One key's first-seen record (`ReadItem::Found`).
    Get { dataset: String, key: Vec<u8> },
    /// The node's part of every job (`ReadItem::Jobs`).
    Jobs { dataset: String },
    /// The node's counters of each file of a job, in file order
    /// (`ReadItem::Files`), then its rejected records in file and offset
    /// order (`ReadItem::Rejected`).
    Files { dataset: String, job: JobId },
    /// The path of a job's file, if this node listed it (`ReadItem::Path`).
    FilePath {
        dataset: String,
        job: JobId,
        file: u32,
    },
}

impl ReadRequest {
    pub fn dataset(&self) -> &str {
        match self {
            Self::Export { dataset }
            | Self::Get { dataset, .. }
            | Self::Jobs { dataset }
            | Self::Files { dataset, .. }
            | Self::FilePath { dataset, .. } => dataset,
        }
    }

    /// Checks the fields from outside against their bounds.
    pub fn check_bounds(&self) -> Result<(), String> {
        bounded("dataset name", self.dataset().len(), MAX_DATASET_NAME_BYTES)?;
        if let Self::Get { key, .. } = self {
            bounded("key", key.len(), MAX_READ_KEY_BYTES)?;
        }
        Ok(())
    }
}

fn bounded(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("a {what} of {len} bytes, over the limit of {max}"));
    }
    Ok(())
}

/// A dataset's shape as a node's store holds it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DatasetShape {
    /// `Some(field)` for a `tsv` dataset keyed by that field; `None` for
    /// `lines`.
    pub key_field: Option<u32>,
    pub partitions: u16,
    pub created_unix: u64,
    /// For an export or a get: the coordinators' jobs published in the
    /// store snapshot it reads (the job records are ingested with the
    /// data, so the snapshot holds a job's records exactly when it holds
    /// its record). `None` in other answers.
    pub published: Option<PublishedJobs>,
}

/// A set of the coordinators' jobs, summed up so that two nodes' sets (or
/// a node's set now and at an earlier snapshot) can be compared in one
/// fixed-size field, whatever the number of jobs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishedJobs {
    pub count: u64,
    /// The wrapping sum of each job's mixed id: the same for the same set
    /// in any order.
    pub digest: u64,
}

impl PublishedJobs {
    /// The summary of `jobs`, a set (each job once).
    pub fn of(jobs: impl IntoIterator<Item = JobId>) -> Self {
        jobs.into_iter().fold(Self::default(), |sum, job| Self {
            count: sum.count + 1,
            digest: sum.digest.wrapping_add(mix(job.get())),
        })
    }
}

/// SplitMix64's finaliser: spreads each id over all 64 bits, so sums of
/// different small sets of ids do not collide as sums of the ids would.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A key's first sighting on one node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FoundRecord {
    /// The record (for `lines`, the key itself).
    pub record: Vec<u8>,
    /// The coordinators' job it was first seen in, if the node knows it.
    pub job: Option<JobId>,
    pub file: u32,
    pub offset: u64,
    /// The file's path, if this node listed it.
    pub path: Option<Vec<u8>>,
}

/// Counters as a store keeps them per job or per file.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub read: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl ReadCounts {
    /// Adds a part's counts: its unique and duplicate records, and its
    /// reads and rejections if they count (it ran in the job's latest
    /// attempt: see [`JobPart`]).
    pub fn add_part(&mut self, part: &ReadCounts, reads_count: bool) {
        self.unique += part.unique;
        self.duplicates += part.duplicates;
        if reads_count {
            self.read += part.read;
            self.rejected += part.rejected;
        }
    }
}

/// A node's part of one of the coordinators' jobs.
///
/// A job that recovered a lost owner's partitions has parts of two
/// attempts: its recovery part read every record again, so the reads (and
/// rejections, files, bytes) of the job are those of its latest attempt's
/// parts, while the unique and duplicate records of every part count.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobPart {
    pub job: JobId,
    /// The job's attempt this part ran in.
    pub attempt: u32,
    /// `committed`, `running`, ... as the node's store has it.
    pub state: String,
    pub started_unix: u64,
    pub files: u64,
    pub problem_files: u64,
    pub bytes: u64,
    pub counts: ReadCounts,
}

/// A node's counters of one file of a job.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    pub seq: u32,
    /// The attempt of the part that counted it (see [`JobPart`]).
    pub attempt: u32,
    /// Path and size, if this node listed the file (it read some of it).
    pub path: Option<Vec<u8>>,
    pub size: u64,
    pub counts: ReadCounts,
    pub problems: Vec<String>,
}

/// A rejected record a node kept.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RejectedPart {
    /// The attempt of the part that rejected it (see [`JobPart`]).
    pub attempt: u32,
    pub file: u32,
    pub offset: u64,
    /// The file's path, if this node listed it (the node that rejected
    /// the record read it, so it does).
    pub path: Option<Vec<u8>>,
    pub rejection: String,
    pub excerpt: String,
}

/// What a node sends besides record batches.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReadItem {
    /// The first frame: the node holds the dataset.
    Dataset(DatasetShape),
    /// The first frame: the node has never held the dataset.
    Absent,
    Found(Option<FoundRecord>),
    Jobs(Vec<JobPart>),
    Files(Vec<FilePart>),
    Rejected(Vec<RejectedPart>),
    Path(Option<Vec<u8>>),
}

impl ReadItem {
    /// Checks the fields from outside against their bounds.
    pub fn check_bounds(&self) -> Result<(), String> {
        let text = |s: &str| bounded("text", s.len(), MAX_READ_TEXT_BYTES);
        let path =
            |p: &Option<Vec<u8>>| bounded("path", p.as_ref().map_or(0, Vec::len), MAX_PATH_BYTES);
        match self {
            Self::Dataset(_) | Self::Absent => Ok(()),
            Self::Found(found) => found.as_ref().map_or(Ok(()), |f| path(&f.path)),
            Self::Jobs(jobs) => jobs.iter().try_for_each(|j| text(&j.state)),
            Self::Files(files) => files.iter().try_for_each(|f| {
                path(&f.path)?;
                bounded("list of problems", f.problems.len(), MAX_FILE_PROBLEMS)?;
                f.problems.iter().try_for_each(|p| text(p))
            }),
            Self::Rejected(rejected) => rejected.iter().try_for_each(|r| {
                path(&r.path)?;
                text(&r.rejection)?;
                text(&r.excerpt)
            }),
            Self::Path(p) => path(p),
        }
    }
}

/// The last frame: what the node sent, or why it stopped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReadEnd {
    /// Frames before this one.
    pub frames: u64,
    /// Records in those frames' batches.
    pub records: u64,
    /// Why the node refused the request or stopped early: the stream is
    /// then incomplete, never to be taken as the answer.
    pub failure: Option<String>,
}

codec!(ReadRequest, "read request");
codec!(ReadItem, "read item");
codec!(ReadEnd, "read end");

/// A text cut to [`MAX_READ_TEXT_BYTES`] at a character boundary.
pub fn bounded_text(text: impl std::fmt::Display) -> String {
    let mut text = text.to_string();
    if text.len() > MAX_READ_TEXT_BYTES {
        let mut cut = MAX_READ_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// What a checked frame of a read stream is.
pub enum ReadEvent {
    Batch(ValidBatch),
    Item(ReadItem),
    /// The stream is complete: its counts matched and the node reported
    /// no failure.
    End,
}

/// The client's checks on a read stream's frames, in order. Frames come
/// here with header, length (against the client's frame limit) and
/// checksum already checked.
#[derive(Debug, Default)]
pub struct ReadCheck {
    frames: u64,
    records: u64,
    /// The last key of the stream's batches so far.
    last_key: Option<Vec<u8>>,
    ended: bool,
}

impl ReadCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the stream's next frame; `Err` names what was wrong.
    pub fn next(&mut self, frame: Frame) -> Result<ReadEvent, String> {
        let offset = frame.offset;
        let at = |what: String| format!("frame at byte {offset}: {what}");
        if self.ended {
            return Err(at(format!("a {:?} frame after the end", frame.kind)));
        }
        let first = self.frames == 0;
        let event = match frame.kind {
            FrameKind::ReadEnd => {
                let end = ReadEnd::from_bytes(&frame.payload).map_err(|e| at(e.to_string()))?;
                if let Some(failure) = end.failure {
                    return Err(format!("the node failed: {}", bounded_text(failure)));
                }
                if (end.frames, end.records) != (self.frames, self.records) {
                    return Err(at(format!(
                        "the end counts {} frames and {} records, {} and {} arrived",
                        end.frames, end.records, self.frames, self.records
                    )));
                }
                if first {
                    return Err(at(
                        "the stream ended before saying whether the node holds the dataset".into(),
                    ));
                }
                self.ended = true;
                return Ok(ReadEvent::End);
            }
            FrameKind::ReadItem => {
                let item = ReadItem::from_bytes(&frame.payload).map_err(|e| at(e.to_string()))?;
                item.check_bounds().map_err(at)?;
                let opening = matches!(item, ReadItem::Dataset(_) | ReadItem::Absent);
                if first != opening {
                    return Err(at(bounded_text(format!(
                        "{item:?} where the stream {} open",
                        if first { "must" } else { "may not" }
                    ))));
                }
                ReadEvent::Item(item)
            }
            FrameKind::RecordBatch if !first => {
                let batch = frame.into_batch().map_err(|e| e.to_string())?;
                self.check_order(&batch).map_err(at)?;
                self.records += batch.len() as u64;
                ReadEvent::Batch(batch)
            }
            other => return Err(at(format!("a {other:?} frame in a read stream"))),
        };
        self.frames += 1;
        Ok(event)
    }

    /// Keys strictly ascending, across batches too.
    fn check_order(&mut self, batch: &ValidBatch) -> Result<(), String> {
        for i in 0..batch.len() {
            let key = batch.record(i).key;
            if let Some(last) = &self.last_key
                && last.as_slice() >= key
            {
                return Err(format!(
                    "record {i}'s key is not after the one before it: the stream is not in key order"
                ));
            }
            let last = self.last_key.get_or_insert_with(Vec::new);
            last.clear();
            last.extend_from_slice(key);
        }
        Ok(())
    }

    /// Whether the end frame has been checked.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::arb_batch;
    use crate::frame::{FrameError, FrameReader, write_frame};
    use crate::{Position, Record, RecordBatch};
    use proptest::prelude::*;

    const MAX: u32 = 1 << 24;

    fn arb_text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }

    fn arb_counts() -> impl Strategy<Value = ReadCounts> {
        any::<[u64; 4]>().prop_map(|[read, unique, duplicates, rejected]| ReadCounts {
            read,
            unique,
            duplicates,
            rejected,
        })
    }

    fn arb_request() -> impl Strategy<Value = ReadRequest> {
        prop_oneof![
            arb_text().prop_map(|dataset| ReadRequest::Export { dataset }),
            (arb_text(), arb_bytes()).prop_map(|(dataset, key)| ReadRequest::Get { dataset, key }),
            arb_text().prop_map(|dataset| ReadRequest::Jobs { dataset }),
            (arb_text(), any::<u64>()).prop_map(|(dataset, job)| ReadRequest::Files {
                dataset,
                job: JobId(job)
            }),
            (arb_text(), any::<u64>(), any::<u32>()).prop_map(|(dataset, job, file)| {
                ReadRequest::FilePath {
                    dataset,
                    job: JobId(job),
                    file,
                }
            }),
        ]
    }

    fn arb_item() -> impl Strategy<Value = ReadItem> {
        let found = (
            arb_bytes(),
            proptest::option::of(any::<u64>()),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(arb_bytes()),
        )
            .prop_map(|(record, job, file, offset, path)| FoundRecord {
                record,
                job: job.map(JobId),
                file,
                offset,
                path,
            });
        let job = (
            (any::<u64>(), any::<u32>()),
            arb_text(),
            any::<[u64; 4]>(),
            arb_counts(),
        )
            .prop_map(
                |((job, attempt), state, [started_unix, files, problem_files, bytes], counts)| {
                    JobPart {
                        job: JobId(job),
                        attempt,
                        state,
                        started_unix,
                        files,
                        problem_files,
                        bytes,
                        counts,
                    }
                },
            );
        let file = (
            any::<[u32; 2]>(),
            proptest::option::of(arb_bytes()),
            any::<u64>(),
            arb_counts(),
            proptest::collection::vec(arb_text(), 0..3),
        )
            .prop_map(|([seq, attempt], path, size, counts, problems)| FilePart {
                seq,
                attempt,
                path,
                size,
                counts,
                problems,
            });
        let rejected = (
            any::<[u32; 2]>(),
            any::<u64>(),
            proptest::option::of(arb_bytes()),
            arb_text(),
            arb_text(),
        )
            .prop_map(
                |([attempt, file], offset, path, rejection, excerpt)| RejectedPart {
                    attempt,
                    file,
                    offset,
                    path,
                    rejection,
                    excerpt,
                },
            );
        prop_oneof![
            (
                proptest::option::of(any::<u32>()),
                any::<u16>(),
                any::<u64>(),
                proptest::option::of((any::<u64>(), any::<u64>()))
            )
                .prop_map(|(key_field, partitions, created_unix, published)| {
                    ReadItem::Dataset(DatasetShape {
                        key_field,
                        partitions,
                        created_unix,
                        published: published.map(|(count, digest)| PublishedJobs { count, digest }),
                    })
                }),
            Just(ReadItem::Absent),
            proptest::option::of(found).prop_map(ReadItem::Found),
            proptest::collection::vec(job, 0..4).prop_map(ReadItem::Jobs),
            proptest::collection::vec(file, 0..4).prop_map(ReadItem::Files),
            proptest::collection::vec(rejected, 0..4).prop_map(ReadItem::Rejected),
            proptest::option::of(arb_bytes()).prop_map(ReadItem::Path),
        ]
    }

    /// `batch`'s records with distinct keys in ascending order (a node's
    /// export is in key order).
    fn sorted(batch: &RecordBatch) -> RecordBatch {
        let mut records: Vec<_> = (0..batch.len()).map(|i| batch.record(i)).collect();
        records.sort_by(|a, b| a.key.cmp(b.key));
        records.dedup_by(|a, b| a.key == b.key);
        let mut out = RecordBatch::new();
        for r in records {
            out.push(r);
        }
        out
    }

    /// A node's reply: the opening, the batches (keys ascending across
    /// them), the end.
    fn encode_reply(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let open = ReadItem::Dataset(DatasetShape {
            key_field: None,
            partitions: 4,
            created_unix: 1,
            published: None,
        });
        write_frame(&mut out, FrameKind::ReadItem, &open.to_bytes()).unwrap();
        let mut records = 0;
        for b in batches {
            write_frame(&mut out, FrameKind::RecordBatch, &b.to_archive()).unwrap();
            records += b.len() as u64;
        }
        let end = ReadEnd {
            frames: 1 + batches.len() as u64,
            records,
            failure: None,
        };
        write_frame(&mut out, FrameKind::ReadEnd, &end.to_bytes()).unwrap();
        out
    }

    /// What a client makes of a reply's bytes.
    fn receive(bytes: &[u8], max: u32) -> Result<Vec<RecordBatch>, String> {
        let mut reader = FrameReader::new(bytes, max);
        let mut check = ReadCheck::new();
        let mut batches = Vec::new();
        while let Some(frame) = reader.next_frame().map_err(|e| e.to_string())? {
            if let ReadEvent::Batch(b) = check.next(frame)? {
                batches.push(b.to_owned_batch());
            }
        }
        if check.ended() {
            Ok(batches)
        } else {
            Err("the stream ended without its end frame".into())
        }
    }

    /// Batches of one ascending run of keys.
    fn ascending(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
        let mut all = RecordBatch::new();
        for b in &batches {
            for i in 0..b.len() {
                all.push(b.record(i));
            }
        }
        let all = sorted(&all);
        let mut out = Vec::new();
        let mut at = 0;
        for b in &batches {
            let mut part = RecordBatch::new();
            for i in at..(at + b.len()).min(all.len()) {
                part.push(all.record(i));
            }
            at += part.len();
            out.push(part);
        }
        out
    }

    proptest! {
        /// The same jobs in any order sum up the same; a set with one job
        /// more, less or different does not.
        #[test]
        fn published_jobs_summarise_a_set_whatever_its_order(
            jobs in proptest::collection::btree_set(0u64..1_000, 0..40),
            other in 0u64..1_000,
            seed in any::<u64>(),
        ) {
            let ids: Vec<JobId> = jobs.iter().map(|&j| JobId(j)).collect();
            let mut shuffled = ids.clone();
            let at = if ids.is_empty() { 0 } else { (seed % ids.len() as u64) as usize };
            shuffled.rotate_left(at);
            shuffled.reverse();
            let summary = PublishedJobs::of(ids.iter().copied());
            prop_assert_eq!(PublishedJobs::of(shuffled), summary);
            let changed: Vec<JobId> = if jobs.contains(&other) {
                ids.iter().copied().filter(|j| j.get() != other).collect()
            } else {
                ids.iter().copied().chain([JobId(other)]).collect()
            };
            prop_assert_ne!(PublishedJobs::of(changed.iter().copied()), summary);
            if let Some(first) = ids.first() {
                let swapped = ids.iter().map(|j| if j == first { JobId(1_000 + j.get()) } else { *j });
                prop_assert_ne!(PublishedJobs::of(swapped).digest, summary.digest);
            }
        }

        #[test]
        fn requests_items_and_ends_round_trip(request in arb_request(), item in arb_item(),
                                              frames in any::<u64>(), records in any::<u64>(),
                                              failure in proptest::option::of(arb_text())) {
            prop_assert_eq!(ReadRequest::from_bytes(&request.to_bytes()).unwrap(), request);
            prop_assert_eq!(ReadItem::from_bytes(&item.to_bytes()).unwrap(), item);
            let end = ReadEnd { frames, records, failure };
            prop_assert_eq!(ReadEnd::from_bytes(&end.to_bytes()).unwrap(), end);
        }

        #[test]
        fn replies_round_trip(batches in proptest::collection::vec(arb_batch(), 0..5)) {
            let batches = ascending(batches);
            prop_assert_eq!(receive(&encode_reply(&batches), MAX).unwrap(), batches);
        }

        /// Any single flipped byte is refused: never taken as other data.
        #[test]
        fn a_flipped_byte_is_refused(batches in proptest::collection::vec(arb_batch(), 0..4),
                                     at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut bytes = encode_reply(&ascending(batches));
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(receive(&bytes, MAX).is_err(), "flip at byte {} went unnoticed", i);
        }

        /// A reply cut anywhere, even between two frames, is refused.
        #[test]
        fn a_cut_reply_is_refused(batches in proptest::collection::vec(arb_batch(), 0..4),
                                  cut in any::<prop::sample::Index>()) {
            let bytes = encode_reply(&ascending(batches));
            prop_assert!(receive(&bytes[..cut.index(bytes.len())], MAX).is_err());
        }
    }

    fn batch_of(keys: &[&[u8]]) -> RecordBatch {
        let mut b = RecordBatch::new();
        for key in keys {
            b.push(Record {
                partition: 0,
                key,
                value: b"",
                position: Position { file: 0, offset: 0 },
            });
        }
        b
    }

    /// A batch frame over the client's limit is refused from its header,
    /// before its payload is read.
    #[test]
    fn an_oversize_batch_is_refused() {
        let big = vec![b'x'; 5000];
        let bytes = encode_reply(&[batch_of(&[&big])]);
        let err = receive(&bytes, 4096).unwrap_err();
        assert!(err.contains("over the limit of 4096"), "{err}");
        let mut reader = FrameReader::new(&bytes[..], 4096);
        reader.next_frame().unwrap();
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::TooLarge { max: 4096, .. })
        ));
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let bytes = encode_reply(&[batch_of(&[b"a", b"c"]), batch_of(&[b"c"])]);
        let err = receive(&bytes, MAX).unwrap_err();
        assert!(err.contains("not in key order"), "{err}");
    }

    #[test]
    fn a_failure_or_a_missing_opening_is_refused() {
        let mut bytes = Vec::new();
        let end = ReadEnd {
            frames: 0,
            records: 0,
            failure: Some("store unreadable".into()),
        };
        write_frame(&mut bytes, FrameKind::ReadEnd, &end.to_bytes()).unwrap();
        assert!(
            receive(&bytes, MAX)
                .unwrap_err()
                .contains("store unreadable")
        );
        let mut bytes = Vec::new();
        write_frame(
            &mut bytes,
            FrameKind::RecordBatch,
            &batch_of(&[b"a"]).to_archive(),
        )
        .unwrap();
        assert!(
            receive(&bytes, MAX)
                .unwrap_err()
                .contains("RecordBatch frame in a read stream")
        );
    }

    #[test]
    fn fields_over_their_bounds_are_refused() {
        let request = ReadRequest::Get {
            dataset: "d".into(),
            key: vec![0; MAX_READ_KEY_BYTES + 1],
        };
        assert!(request.check_bounds().unwrap_err().contains("key of"));
        let item = ReadItem::Path(Some(vec![b'p'; MAX_PATH_BYTES + 1]));
        let mut bytes = Vec::new();
        let open = ReadItem::Absent;
        write_frame(&mut bytes, FrameKind::ReadItem, &open.to_bytes()).unwrap();
        write_frame(&mut bytes, FrameKind::ReadItem, &item.to_bytes()).unwrap();
        assert!(receive(&bytes, MAX).unwrap_err().contains("a path of"));
        assert_eq!(bounded_text("é".repeat(1000)).len(), MAX_READ_TEXT_BYTES);
    }
}
