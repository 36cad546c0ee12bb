//! The coordinator's replicated commands and their typed responses.
//!
//! Every change to the cluster's control state (nodes, datasets,
//! submissions, shard leases and progress, the partition map) is one
//! `Command`, carried through the Raft log as rkyv bytes and applied by every
//! coordinator replica. Applying must be deterministic, so commands carry
//! the time they were issued at (`now_ms`): replicas never read a clock.
//! Bytes read back are validated before use; bad bytes are a `CodecError`,
//! never a panic.

use rkyv::rancor::BoxedError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{DatasetId, Epoch, JobId, NodeId, ShardId};

mod bounds;

pub use bounds::*;

/// A cluster member that can hold shard leases.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
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

/// One file of an inventory (a line of a manifest): a file and what
/// identifies its content.
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
    /// A bounded chunk of the inventory, applied atomically. The chunks of
    /// a submission cover disjoint path ranges (an inventory sent in path
    /// order does); within a chunk, any order.
    SubmitChunk {
        dataset: String,
        submission: JobId,
        files: Vec<FileEntry>,
    },
    /// Closes the submission: files not seen in it are reported gone.
    FinishSubmission {
        dataset: String,
        submission: JobId,
    },
    /// Abandons an open submission (its submitter failed): the catalogue
    /// counts as the last finished submission left it, its shards are never
    /// leased, and the dataset is free for a new submission.
    AbortSubmission {
        dataset: String,
        submission: JobId,
    },
    /// Leases a shard to a node at the shard's next epoch. `expected_epoch`
    /// is the epoch the leader saw (0 for a never-leased shard): the grant
    /// is refused if another grant got there first.
    GrantLease {
        shard: ShardId,
        node: NodeId,
        expected_epoch: Epoch,
        deadline_ms: u64,
    },
    /// A scanner's checkpoint: the shard is done up to `offset`.
    ReportProgress {
        shard: ShardId,
        node: NodeId,
        epoch: Epoch,
        offset: u64,
    },
    CompleteShard {
        shard: ShardId,
        node: NodeId,
        epoch: Epoch,
    },
    /// Partition (the coordinator's u32 numbering, wider than a store's
    /// `PartitionId`; kept as it is on the wire) to owning node.
    AssignPartitions {
        assignments: Vec<(u32, NodeId)>,
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
        id: NodeId,
    },
    UnknownShard {
        id: ShardId,
    },
    UnknownSubmission {
        dataset: String,
        submission: JobId,
    },
    /// The dataset already has an open submission; finish that one first.
    SubmissionOpen {
        dataset: String,
        submission: JobId,
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
        shard: ShardId,
        presented: Epoch,
        current: Epoch,
    },
    NotLeaseHolder {
        shard: ShardId,
        node: NodeId,
    },
    ShardDone {
        shard: ShardId,
    },
    /// The shard belongs to an aborted submission.
    SubmissionAborted {
        shard: ShardId,
        submission: JobId,
    },
    /// The entry's bytes were not a valid command.
    Malformed {
        reason: String,
    },
    /// The chunk's paths (`first` to `last`) overlap the range of an
    /// earlier chunk of the same submission: inventories are sent in path
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
                "chunk of {files} files / {bytes} bytes exceeds {MAX_CHUNK_FILES} files / {MAX_CHUNK_BYTES} bytes"
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
                "chunk {first:?} to {last:?} overlaps the paths of an earlier chunk: an inventory must be sent in path order"
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
        id: NodeId,
    },
    DatasetCreated {
        id: DatasetId,
    },
    SubmissionBegun {
        submission: JobId,
    },
    ChunkApplied {
        counts: DiffCounts,
        shards_created: u64,
    },
    SubmissionFinished {
        submission: JobId,
        counts: DiffCounts,
        gone: u64,
    },
    SubmissionAborted {
        submission: JobId,
    },
    LeaseGranted {
        shard: ShardId,
        node: NodeId,
        epoch: Epoch,
        deadline_ms: u64,
    },
    ProgressRecorded {
        shard: ShardId,
        checkpoint: u64,
    },
    ShardCompleted {
        shard: ShardId,
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
    pub(crate) what: &'static str,
    pub(crate) source: BoxedError,
}

/// `to_bytes` and `from_bytes` (validated) for an rkyv type; shared with
/// the other rkyv messages of this crate (`shuffle`).
macro_rules! codec {
    ($ty:ty, $what:literal) => {
        impl $ty {
            pub fn to_bytes(&self) -> rkyv::util::AlignedVec {
                rkyv::to_bytes::<rkyv::rancor::BoxedError>(self)
                    .expect("serializing to memory cannot fail")
            }

            /// Validates `bytes` (any alignment) and deserializes them.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, $crate::command::CodecError> {
                let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
                aligned.extend_from_slice(bytes);
                rkyv::from_bytes::<$ty, rkyv::rancor::BoxedError>(&aligned).map_err(|source| {
                    $crate::command::CodecError {
                        what: $what,
                        source,
                    }
                })
            }
        }
    };
}
pub(crate) use codec;

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
                        id: NodeId(id),
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
                    submission: JobId(submission),
                }
            }),
            (
                ".{0,20}",
                any::<u64>(),
                proptest::collection::vec(file_entry(), 0..20)
            )
                .prop_map(|(dataset, submission, files)| Command::SubmitChunk {
                    dataset,
                    submission: JobId(submission),
                    files
                }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, expected_epoch, deadline_ms)| Command::GrantLease {
                    shard: ShardId(shard),
                    node: NodeId(node),
                    expected_epoch: Epoch(expected_epoch),
                    deadline_ms
                }
            ),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, epoch, offset)| Command::ReportProgress {
                    shard: ShardId(shard),
                    node: NodeId(node),
                    epoch: Epoch(epoch),
                    offset
                }
            ),
            proptest::collection::vec((any::<u32>(), any::<u64>().prop_map(NodeId)), 0..10)
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
            shard: ShardId(7),
            presented: Epoch(1),
            current: Epoch(2),
        });
        assert_eq!(Response::from_bytes(&resp.to_bytes()).unwrap(), resp);
        assert!(Command::from_bytes(b"not an archive").is_err());
    }

    /// One of each command and response that carries an id, as the log
    /// and the wire hold them. The ids are newtypes over the integers the
    /// log held before they were; these digests were taken from the bytes
    /// of that build, so a type change that moves a byte fails here.
    fn log_samples() -> (Vec<Command>, Vec<Response>) {
        let commands = vec![
            Command::RegisterNode(NodeInfo {
                id: 7u64.into(),
                address: "10.0.0.7:7000".into(),
                cert_fingerprint: [3; 32],
            }),
            Command::SubmitChunk {
                dataset: "d".into(),
                submission: 9u64.into(),
                files: vec![FileEntry {
                    path: "a/b".into(),
                    size: 10,
                    mtime_ns: -1,
                    checksum: Some(vec![1, 2]),
                }],
            },
            Command::FinishSubmission {
                dataset: "d".into(),
                submission: 9u64.into(),
            },
            Command::AbortSubmission {
                dataset: "d".into(),
                submission: 9u64.into(),
            },
            Command::GrantLease {
                shard: 11u64.into(),
                node: 7u64.into(),
                expected_epoch: 2u64.into(),
                deadline_ms: 1_000,
            },
            Command::ReportProgress {
                shard: 11u64.into(),
                node: 7u64.into(),
                epoch: 3u64.into(),
                offset: 4096,
            },
            Command::CompleteShard {
                shard: 11u64.into(),
                node: 7u64.into(),
                epoch: 3u64.into(),
            },
            Command::AssignPartitions {
                assignments: vec![(1, 7u64.into()), (2, 8u64.into())],
            },
        ];
        let responses = vec![
            Response::NodeRegistered { id: 7u64.into() },
            Response::DatasetCreated { id: 5u32.into() },
            Response::SubmissionBegun {
                submission: 9u64.into(),
            },
            Response::SubmissionFinished {
                submission: 9u64.into(),
                counts: DiffCounts {
                    new: 1,
                    changed: 2,
                    unchanged: 3,
                },
                gone: 4,
            },
            Response::SubmissionAborted {
                submission: 9u64.into(),
            },
            Response::LeaseGranted {
                shard: 11u64.into(),
                node: 7u64.into(),
                epoch: 3u64.into(),
                deadline_ms: 1_000,
            },
            Response::ProgressRecorded {
                shard: 11u64.into(),
                checkpoint: 4096,
            },
            Response::ShardCompleted {
                shard: 11u64.into(),
            },
            Response::Error(CommandError::UnknownNode { id: 7u64.into() }),
            Response::Error(CommandError::UnknownShard { id: 11u64.into() }),
            Response::Error(CommandError::UnknownSubmission {
                dataset: "d".into(),
                submission: 9u64.into(),
            }),
            Response::Error(CommandError::SubmissionOpen {
                dataset: "d".into(),
                submission: 9u64.into(),
            }),
            Response::Error(CommandError::StaleEpoch {
                shard: 11u64.into(),
                presented: 2u64.into(),
                current: 3u64.into(),
            }),
            Response::Error(CommandError::NotLeaseHolder {
                shard: 11u64.into(),
                node: 7u64.into(),
            }),
            Response::Error(CommandError::ShardDone {
                shard: 11u64.into(),
            }),
            Response::Error(CommandError::SubmissionAborted {
                shard: 11u64.into(),
                submission: 9u64.into(),
            }),
        ];
        (commands, responses)
    }

    fn digests() -> (Vec<u64>, Vec<u64>) {
        let (commands, responses) = log_samples();
        let digest = |bytes: &[u8]| xxhash_rust::xxh3::xxh3_64(bytes);
        (
            commands.iter().map(|c| digest(&c.to_bytes())).collect(),
            responses.iter().map(|r| digest(&r.to_bytes())).collect(),
        )
    }

    #[test]
    fn the_log_holds_ids_as_it_always_did() {
        let (commands, responses) = digests();
        assert_eq!(
            commands,
            [
                0xc458f91c4b4312b3,
                0xc97235bebb75a2a4,
                0x4be0728f95a4546a,
                0x104d6f3dfd19d11d,
                0x3671213af1eb39f5,
                0xd6fb29327f7719b1,
                0x92368d1bf6773eb8,
                0x1fd9f1919da3f704,
            ]
        );
        assert_eq!(
            responses,
            [
                0x346a6f8ff04dc605,
                0x7a9dd1e4be346966,
                0x8e153b8a177fe8f1,
                0xb5833787140fd5ae,
                0x9943b685e781274e,
                0x8f3d560cae94b77f,
                0x154b1b7e24435383,
                0x25925f1ae3a69222,
                0x5724256651a4ee05,
                0xda8afce1e54829e4,
                0x6532c1e0c7a90ade,
                0x6a7bb2f34c1ad7c5,
                0xc8f43c23010eec2e,
                0x2c3ef0f7473dcf22,
                0x204335806c28d33f,
                0xa8f3d5f8240f390e,
            ]
        );
    }
}
