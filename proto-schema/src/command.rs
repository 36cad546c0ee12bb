//! The coordinator's replicated commands and their typed responses.
//!
//! Every change to the cluster's control state (nodes, datasets, manifest
//! submissions, shard leases and progress, the partition map) is one
//! `Command`, carried through the Raft log as rkyv bytes and applied by every
//! coordinator replica. Applying must be deterministic, so commands carry
//! the time they were issued at (`now_ms`): replicas never read a clock.
//! Bytes read back are validated before use; bad bytes are a `CodecError`,
//! never a panic.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

mod bounds;

pub use bounds::*;

/// A cluster member that can hold shard leases.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    pub address: String,
    /// SHA-256 of the node's cluster certificate (DER).
    pub cert_fingerprint: [u8; 32],
}

/// How a dataset's files are split into records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    Lines,
    Tsv,
    Jsonl,
}

/// Which part of a record is its key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    WholeLine,
    Field { index: u32, delimiter: u8 },
    JsonPointer(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    pub name: String,
    pub format: DatasetFormat,
    pub key: KeySpec,
}

/// One line of a manifest: a file and what identifies its content.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub checksum: Option<Vec<u8>>,
}

impl FileEntry {
    /// The bytes this entry counts against `MAX_CHUNK_BYTES`.
    pub fn weight(&self) -> usize {
        self.path.len() + self.checksum.as_ref().map_or(0, Vec::len)
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    RegisterNode(NodeInfo),
    CreateDataset(DatasetSpec),
    /// Opens a submission (a job) for a dataset; at most one is open at a time.
    BeginSubmission {
        dataset: String,
        now_ms: u64,
    },
    /// A bounded chunk of the manifest, applied atomically. The chunks of
    /// a submission cover disjoint path ranges (a manifest sent in path
    /// order does); within a chunk, any order.
    SubmitChunk {
        dataset: String,
        submission: u64,
        files: Vec<FileEntry>,
    },
    /// Closes the submission: files not seen in it are reported gone.
    FinishSubmission {
        dataset: String,
        submission: u64,
    },
    /// Abandons an open submission (its submitter failed): the catalogue
    /// counts as the last finished submission left it, its shards are never
    /// leased, and the dataset is free for a new submission.
    AbortSubmission {
        dataset: String,
        submission: u64,
    },
    /// Leases a shard to a node at the shard's next epoch. `expected_epoch`
    /// is the epoch the leader saw (0 for a never-leased shard): the grant
    /// is refused if another grant got there first.
    GrantLease {
        shard: u64,
        node: u64,
        expected_epoch: u64,
        deadline_ms: u64,
    },
    /// A scanner's checkpoint: the shard is done up to `offset`.
    ReportProgress {
        shard: u64,
        node: u64,
        epoch: u64,
        offset: u64,
    },
    CompleteShard {
        shard: u64,
        node: u64,
        epoch: u64,
    },
    AssignPartitions {
        assignments: Vec<(u32, u64)>,
    },
}

/// New, changed and unchanged files of one chunk (or a whole submission).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounts {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
}

impl DiffCounts {
    pub fn add(&mut self, other: DiffCounts) {
        self.new += other.new;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
    }
}

/// Why a command was refused, by the leader before the log or by the
/// state machine. Also serde, for refusals in the API's envelope.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
pub enum CommandError {
    UnknownDataset {
        name: String,
    },
    DatasetExists {
        name: String,
    },
    UnknownNode {
        id: u64,
    },
    UnknownShard {
        id: u64,
    },
    UnknownSubmission {
        dataset: String,
        submission: u64,
    },
    /// The dataset already has an open submission; finish that one first.
    SubmissionOpen {
        dataset: String,
        submission: u64,
    },
    /// A path appears twice in one submission (within or across chunks).
    DuplicatePath {
        path: String,
    },
    ChunkTooLarge {
        files: u64,
        bytes: u64,
    },
    /// Fencing: the report or grant names an epoch that is no longer current.
    StaleEpoch {
        shard: u64,
        presented: u64,
        current: u64,
    },
    NotLeaseHolder {
        shard: u64,
        node: u64,
    },
    ShardDone {
        shard: u64,
    },
    /// The shard belongs to an aborted submission.
    SubmissionAborted {
        shard: u64,
        submission: u64,
    },
    /// The entry's bytes were not a valid command.
    Malformed {
        reason: String,
    },
    /// The chunk's paths (`first` to `last`) overlap the range of an
    /// earlier chunk of the same submission: manifests are sent in path
    /// order.
    ChunkOverlaps {
        first: String,
        last: String,
    },
    /// A field (or the whole encoded command) over its bound (`bounds`).
    OutOfBounds {
        what: Bounded,
        size: u64,
        max: u64,
    },
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownDataset { name } => write!(f, "unknown dataset {name:?}"),
            Self::DatasetExists { name } => write!(f, "dataset {name:?} already exists"),
            Self::UnknownNode { id } => write!(f, "unknown node {id}"),
            Self::UnknownShard { id } => write!(f, "unknown shard {id}"),
            Self::UnknownSubmission {
                dataset,
                submission,
            } => {
                write!(f, "dataset {dataset:?} has no open submission {submission}")
            }
            Self::SubmissionOpen {
                dataset,
                submission,
            } => {
                write!(
                    f,
                    "dataset {dataset:?} already has open submission {submission}"
                )
            }
            Self::DuplicatePath { path } => {
                write!(f, "path {path:?} appears twice in one submission")
            }
            Self::ChunkTooLarge { files, bytes } => write!(
                f,
                "manifest chunk of {files} files / {bytes} bytes exceeds {MAX_CHUNK_FILES} files / {MAX_CHUNK_BYTES} bytes"
            ),
            Self::StaleEpoch {
                shard,
                presented,
                current,
            } => {
                write!(
                    f,
                    "shard {shard}: stale epoch {presented} (current {current})"
                )
            }
            Self::NotLeaseHolder { shard, node } => {
                write!(f, "shard {shard} is not leased to node {node}")
            }
            Self::ShardDone { shard } => write!(f, "shard {shard} is already complete"),
            Self::SubmissionAborted { shard, submission } => {
                write!(
                    f,
                    "shard {shard} belongs to aborted submission {submission}"
                )
            }
            Self::Malformed { reason } => write!(f, "malformed command: {reason}"),
            Self::ChunkOverlaps { first, last } => write!(
                f,
                "manifest chunk {first:?} to {last:?} overlaps the paths of an earlier chunk: a manifest must be sent in path order"
            ),
            Self::OutOfBounds { what, size, max } => {
                let unit = what.unit();
                write!(
                    f,
                    "{what} of {size} {unit} exceeds the limit of {max} {unit}"
                )
            }
        }
    }
}

impl std::error::Error for CommandError {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Raft's own entries (blank, membership) change no state of ours.
    Nothing,
    NodeRegistered {
        id: u64,
    },
    DatasetCreated {
        id: u32,
    },
    SubmissionBegun {
        submission: u64,
    },
    ChunkApplied {
        counts: DiffCounts,
        shards_created: u64,
    },
    SubmissionFinished {
        submission: u64,
        counts: DiffCounts,
        gone: u64,
    },
    SubmissionAborted {
        submission: u64,
    },
    LeaseGranted {
        shard: u64,
        node: u64,
        epoch: u64,
        deadline_ms: u64,
    },
    ProgressRecorded {
        shard: u64,
        checkpoint: u64,
    },
    ShardCompleted {
        shard: u64,
    },
    PartitionsAssigned {
        count: u64,
    },
    Error(CommandError),
}

/// Bytes that are not a valid archive of the expected type.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} bytes: {source}")]
pub struct CodecError {
    what: &'static str,
    source: BoxedError,
}

macro_rules! codec {
    ($ty:ty, $what:literal) => {
        impl $ty {
            pub fn to_bytes(&self) -> AlignedVec {
                rkyv::to_bytes::<BoxedError>(self).expect("serializing to memory cannot fail")
            }

            /// Validates `bytes` (any alignment) and deserializes them.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
                let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
                aligned.extend_from_slice(bytes);
                rkyv::from_bytes::<$ty, BoxedError>(&aligned).map_err(|source| CodecError {
                    what: $what,
                    source,
                })
            }
        }
    };
}

codec!(Command, "command");
codec!(Response, "response");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_entry() -> impl Strategy<Value = FileEntry> {
        (
            "[a-z/._-]{1,40}",
            any::<u64>(),
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 16..=16)),
        )
            .prop_map(|(path, size, mtime_ns, checksum)| FileEntry {
                path,
                size,
                mtime_ns,
                checksum,
            })
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any::<u64>(), ".{0,20}", any::<[u8; 32]>()).prop_map(
                |(id, address, cert_fingerprint)| {
                    Command::RegisterNode(NodeInfo {
                        id,
                        address,
                        cert_fingerprint,
                    })
                }
            ),
            (".{0,20}", any::<u32>(), any::<u8>()).prop_map(|(name, index, delimiter)| {
                Command::CreateDataset(DatasetSpec {
                    name,
                    format: DatasetFormat::Tsv,
                    key: KeySpec::Field { index, delimiter },
                })
            }),
            (".{0,20}", any::<u64>())
                .prop_map(|(dataset, now_ms)| Command::BeginSubmission { dataset, now_ms }),
            (".{0,20}", any::<u64>()).prop_map(|(dataset, submission)| {
                Command::AbortSubmission {
                    dataset,
                    submission,
                }
            }),
            (
                ".{0,20}",
                any::<u64>(),
                proptest::collection::vec(file_entry(), 0..20)
            )
                .prop_map(|(dataset, submission, files)| Command::SubmitChunk {
                    dataset,
                    submission,
                    files
                }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, expected_epoch, deadline_ms)| Command::GrantLease {
                    shard,
                    node,
                    expected_epoch,
                    deadline_ms
                }
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, epoch, offset)| Command::ReportProgress {
                    shard,
                    node,
                    epoch,
                    offset
                }
            ),
            proptest::collection::vec((any::<u32>(), any::<u64>()), 0..10)
                .prop_map(|assignments| Command::AssignPartitions { assignments }),
        ]
    }

    proptest! {
        #[test]
        fn command_round_trips(cmd in command()) {
            let bytes = cmd.to_bytes();
            prop_assert_eq!(Command::from_bytes(&bytes).unwrap(), cmd.clone());
            // Misaligned input is copied, not refused.
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&bytes);
            prop_assert_eq!(Command::from_bytes(&shifted[1..]).unwrap(), cmd);
        }

        #[test]
        fn corrupt_command_bytes_are_an_error_not_a_panic(cmd in command(), at in any::<prop::sample::Index>(), flip in 1u8..) {
            let mut bytes = cmd.to_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            // Either a clean error or some valid command: never a panic.
            let _ = Command::from_bytes(&bytes);
            let _ = Command::from_bytes(&bytes[..i]);
        }
    }

    #[test]
    fn error_response_round_trips() {
        let resp = Response::Error(CommandError::StaleEpoch {
            shard: 7,
            presented: 1,
            current: 2,
        });
        assert_eq!(Response::from_bytes(&resp.to_bytes()).unwrap(), resp);
        assert!(Command::from_bytes(b"not an archive").is_err());
    }
}
