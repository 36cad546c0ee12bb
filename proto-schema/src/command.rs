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

use crate::ids::Epoch;
use crate::partition_map::{MAX_PARTITIONS, PartitionMap};

/// Most file entries one manifest chunk may carry.
pub const MAX_CHUNK_FILES: usize = 4096;
/// Most bytes of paths and checksums one manifest chunk may carry.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Most shards one `GrantLeases` may lease, and one `CompleteShards` may
/// complete: bounds the command and the node's batch.
pub const MAX_LEASES_PER_COMMAND: usize = 256;
/// Most bytes of a node's address.
pub const MAX_NODE_ADDRESS_BYTES: usize = 256;

/// A cluster member that can hold shard leases.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    /// Chosen by the node at start (its clock in ms): a restarted node
    /// registers a higher one, and what the last one held is released.
    pub incarnation: u64,
    pub address: String,
    /// SHA-256 of the node's cluster certificate (DER).
    pub cert_fingerprint: [u8; 32],
}

/// A shard leased in a `GrantLeases`, with the epoch the leader saw (0
/// for a never-leased shard): refused if another grant got there first.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub shard: u64,
    pub expected_epoch: u64,
}

/// A shard a node finished, under the lease's epoch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardDone {
    pub shard: u64,
    pub epoch: u64,
}

/// What an owner staged for a job: its share of the job's counters. Also
/// carried by the API's envelope (serde), as it is.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
)]
pub struct StagedCounts {
    pub read: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl StagedCounts {
    pub fn add(&mut self, other: StagedCounts) {
        self.read += other.read;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
    }

    /// Every record read is unique, a duplicate or rejected.
    pub fn reconciles(&self) -> bool {
        self.read == self.unique + self.duplicates + self.rejected
    }
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
    /// Fixed for the dataset's life: 1 to `MAX_PARTITIONS`.
    pub partitions: u16,
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
        /// Where the chunk's first file is in the manifest (0-based): its
        /// files are numbered from here in path order, so a file's number,
        /// and with it a record's first-seen position, is a function of
        /// the manifest alone, whatever order chunks are applied in.
        first_file: u64,
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
    /// Leases shards to a node, each at its next epoch, in one log write
    /// (at most `MAX_LEASES_PER_COMMAND`). A shard that cannot be leased
    /// any more (done, aborted, granted meanwhile) is passed over, not an
    /// error for the rest.
    GrantLeases {
        node: u64,
        shards: Vec<LeaseGrant>,
        deadline_ms: u64,
    },
    /// A scanner's checkpoint: the shard is done up to `offset`.
    ReportProgress {
        shard: u64,
        node: u64,
        epoch: u64,
        offset: u64,
    },
    /// Shards a node finished (at most `MAX_LEASES_PER_COMMAND`), each
    /// fenced by its epoch on its own.
    CompleteShards {
        node: u64,
        shards: Vec<ShardDone>,
    },
    /// A dataset's partition map at the next epoch (the leader's, when
    /// live nodes changed): refused unless `map.epoch` is one past the
    /// current map's, the ranges cover the dataset's partitions and every
    /// owner is live.
    AssignPartitions {
        dataset: String,
        map: PartitionMap,
    },
    /// The leader heard nothing from the node's `incarnation` within its
    /// deadline: its leases go back to pending (their next grant moves the
    /// epoch on, fencing it) and it gets no more until it registers again.
    DeclareNodeLost {
        node: u64,
        incarnation: u64,
    },
    /// An owner has staged its part of the job (files written, not yet
    /// published) with these counts. Once every shard is done and every
    /// live node has staged, and the counts reconcile, the job commits:
    /// owners then publish.
    StageJob {
        job: u64,
        node: u64,
        counts: StagedCounts,
        /// The partition map the owner staged under: refused if stale.
        map_epoch: Epoch,
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

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
    /// A node registered again with an older incarnation than the one
    /// the cluster knows (a restart registers a newer one).
    StaleIncarnation {
        node: u64,
        presented: u64,
        current: u64,
    },
    /// The node's incarnation was declared lost: a new incarnation (a
    /// restart) must register.
    NodeLost {
        node: u64,
    },
    TooManyShards {
        count: u64,
    },
    AddressTooLong {
        bytes: u64,
    },
    /// The job has not finished its submission (or was aborted).
    JobNotSubmitted {
        job: u64,
    },
    /// The owners' counts do not add up: read != unique + duplicates +
    /// rejected.
    CountsDoNotReconcile {
        job: u64,
        counts: StagedCounts,
    },
    /// A partition map or a report under an epoch that is not the
    /// dataset's current one (for a new map: not the next one).
    StaleMapEpoch {
        dataset: String,
        presented: u64,
        current: u64,
    },
    BadPartitionMap {
        reason: String,
    },
    BadPartitionCount {
        partitions: u16,
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
            Self::StaleIncarnation {
                node,
                presented,
                current,
            } => write!(
                f,
                "node {node}: incarnation {presented} is older than the registered {current}"
            ),
            Self::NodeLost { node } => {
                write!(
                    f,
                    "node {node} was declared lost: restart it to register a new incarnation"
                )
            }
            Self::TooManyShards { count } => write!(
                f,
                "{count} shards in one command exceed {MAX_LEASES_PER_COMMAND}"
            ),
            Self::AddressTooLong { bytes } => write!(
                f,
                "a node address of {bytes} bytes exceeds {MAX_NODE_ADDRESS_BYTES}"
            ),
            Self::JobNotSubmitted { job } => {
                write!(f, "job {job} is not a finished submission")
            }
            Self::CountsDoNotReconcile { job, counts } => write!(
                f,
                "job {job}: counts do not reconcile: read {} != unique {} + duplicates {} + rejected {}",
                counts.read, counts.unique, counts.duplicates, counts.rejected
            ),
            Self::StaleMapEpoch {
                dataset,
                presented,
                current,
            } => write!(
                f,
                "dataset {dataset:?}: partition map epoch {presented} is stale (current {current})"
            ),
            Self::BadPartitionMap { reason } => write!(f, "bad partition map: {reason}"),
            Self::BadPartitionCount { partitions } => write!(
                f,
                "a dataset needs 1 to {MAX_PARTITIONS} partitions, not {partitions}"
            ),
            Self::Malformed { reason } => write!(f, "malformed command: {reason}"),
            Self::ChunkOverlaps { first, last } => write!(
                f,
                "manifest chunk {first:?} to {last:?} overlaps the paths of an earlier chunk: a manifest must be sent in path order"
            ),
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
        incarnation: u64,
        /// Leases of an earlier incarnation sent back to pending.
        released: u64,
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
    LeasesGranted {
        node: u64,
        deadline_ms: u64,
        /// `(shard, epoch)` of each shard leased.
        granted: Vec<(u64, u64)>,
        /// Shards that could not be leased any more (done, aborted, or
        /// granted meanwhile): the leader drops them from its table.
        passed: Vec<u64>,
    },
    ProgressRecorded {
        shard: u64,
        checkpoint: u64,
    },
    ShardsCompleted {
        completed: Vec<u64>,
        /// Shards whose completion was refused (a stale epoch: the shard
        /// was leased again meanwhile), with why.
        refused: Vec<(u64, CommandError)>,
    },
    PartitionsAssigned {
        epoch: u64,
    },
    NodeDeclaredLost {
        node: u64,
        released: u64,
    },
    JobStaged {
        job: u64,
        /// Whether this report completed the job: every owner may publish.
        committed: bool,
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
            (any::<u64>(), any::<u64>(), ".{0,20}", any::<[u8; 32]>()).prop_map(
                |(id, incarnation, address, cert_fingerprint)| {
                    Command::RegisterNode(NodeInfo {
                        id,
                        incarnation,
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
                    partitions: 64,
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
                any::<u64>(),
                proptest::collection::vec(file_entry(), 0..20)
            )
                .prop_map(|(dataset, submission, first_file, files)| {
                    Command::SubmitChunk {
                        dataset,
                        submission,
                        first_file,
                        files,
                    }
                }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..10),
                any::<u64>()
            )
                .prop_map(|(node, shards, deadline_ms)| Command::GrantLeases {
                    node,
                    shards: shards
                        .into_iter()
                        .map(|(shard, expected_epoch)| LeaseGrant {
                            shard,
                            expected_epoch
                        })
                        .collect(),
                    deadline_ms
                }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..10)
            )
                .prop_map(|(node, shards)| Command::CompleteShards {
                    node,
                    shards: shards
                        .into_iter()
                        .map(|(shard, epoch)| ShardDone { shard, epoch })
                        .collect(),
                }),
            (any::<u64>(), any::<u64>(), any::<[u64; 4]>(), any::<u64>()).prop_map(
                |(job, node, c, epoch)| Command::StageJob {
                    job,
                    node,
                    counts: StagedCounts {
                        read: c[0],
                        unique: c[1],
                        duplicates: c[2],
                        rejected: c[3],
                    },
                    map_epoch: Epoch(epoch),
                }
            ),
            (any::<u64>(), any::<u64>())
                .prop_map(|(node, incarnation)| Command::DeclareNodeLost { node, incarnation }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, epoch, offset)| Command::ReportProgress {
                    shard,
                    node,
                    epoch,
                    offset
                }
            ),
            (
                ".{0,20}",
                1u16..1000,
                proptest::collection::vec(any::<u64>(), 1..10),
                any::<u64>()
            )
                .prop_map(|(dataset, partitions, nodes, epoch)| {
                    let nodes: Vec<crate::NodeId> = nodes.into_iter().map(crate::NodeId).collect();
                    Command::AssignPartitions {
                        dataset,
                        map: PartitionMap::split(partitions, &nodes, Epoch(epoch)),
                    }
                }),
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
