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
use crate::partition_map::{MAX_PARTITIONS, PartitionMap};

mod bounds;
mod digest;

pub use bounds::*;
pub use digest::EntriesDigest;

/// A cluster member that can hold shard leases.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
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
    pub shard: ShardId,
    pub expected_epoch: Epoch,
}

/// A shard a node finished, under the lease's epoch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardDone {
    pub shard: ShardId,
    pub epoch: Epoch,
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
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
pub enum DatasetFormat {
    Lines,
    Tsv,
    Jsonl,
}

/// Which part of a record is its key.
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
pub enum KeySpec {
    WholeLine,
    Field { index: u32, delimiter: u8 },
    JsonPointer(String),
}

/// A dataset as created; also sent to nodes with their work
/// (`coordinator_api::WorkItem`, postcard), so it derives both codecs.
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
pub struct DatasetSpec {
    pub name: String,
    pub format: DatasetFormat,
    pub key: KeySpec,
    /// Fixed for the dataset's life: 1 to `MAX_PARTITIONS`.
    pub partitions: u16,
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

/// A range of an inventory in path order, as a `SubmitRanges` carries it:
/// its entries, or only their digest when they are likely unchanged.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum InventoryRange {
    /// Accepted when the dataset's last finished submission listed exactly
    /// `files` files from `first` to `last` (inclusive) and their
    /// catalogue entries, in path order, have this `EntriesDigest`: each
    /// is then listed again, unchanged. Otherwise nothing of it counts and
    /// the submitter sends the range again as `Files` (a range's files
    /// must all be sent, one way or the other).
    Digest {
        first: String,
        last: String,
        files: u32,
        digest: [u8; 16],
    },
    /// Entries, as `SubmitChunk` carries them, numbered from `first_file`.
    Files {
        first_file: u64,
        files: Vec<FileEntry>,
    },
}

impl InventoryRange {
    /// The bytes this range counts against `MAX_CHUNK_BYTES`.
    pub fn weight(&self) -> usize {
        match self {
            Self::Digest { first, last, .. } => first.len() + last.len(),
            Self::Files { files, .. } => files.iter().map(FileEntry::weight).sum(),
        }
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
        submission: JobId,
    },
    /// Abandons an open submission (its submitter failed): the catalogue
    /// counts as the last finished submission left it, its shards are never
    /// leased, and the dataset is free for a new submission.
    AbortSubmission {
        dataset: String,
        submission: JobId,
    },
    /// Leases shards to a node, each at its next epoch, in one log write
    /// (at most `MAX_LEASES_PER_COMMAND`). A shard that cannot be leased
    /// any more (done, aborted, granted meanwhile) is passed over, not an
    /// error for the rest.
    GrantLeases {
        node: NodeId,
        shards: Vec<LeaseGrant>,
        deadline_ms: u64,
    },
    /// A scanner's checkpoint: the shard is done up to `offset`.
    ReportProgress {
        shard: ShardId,
        node: NodeId,
        epoch: Epoch,
        offset: u64,
    },
    /// Shards a node finished (at most `MAX_LEASES_PER_COMMAND`), each
    /// fenced by its epoch on its own.
    CompleteShards {
        node: NodeId,
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
        node: NodeId,
        incarnation: u64,
    },
    /// An owner has staged its part of the job (files written, not yet
    /// published) with these counts. Once every shard is done and every
    /// live node has staged, and the counts reconcile, the job commits:
    /// owners then publish.
    StageJob {
        job: JobId,
        node: NodeId,
        counts: StagedCounts,
        /// The partition map the owner staged under: refused if stale.
        map_epoch: Epoch,
    },
    /// Runs a submitted job again from its first shard, as attempt
    /// `attempt + 1` under `map` (the dataset's next map): the records of
    /// the shards done so far went to owners that lost them (an owner was
    /// lost, or started its part afresh), so every shard is read again and
    /// every owner stages again. Nothing if the job is past `attempt`
    /// already (another node asked first); refused past
    /// `MAX_JOB_ATTEMPTS`.
    RestartJob {
        job: JobId,
        attempt: u32,
        map: PartitionMap,
        cause: RestartCause,
    },
    /// Recovers a job whose owner `lost` was lost before it staged, once
    /// every shard was done (lineage): the other owners' parts stay, and
    /// `owner`, the lost range's neighbour, takes that range under `map`
    /// (the dataset's next map) and reads every shard again for it alone,
    /// as attempt `attempt + 1`. Nothing if the job is past `attempt`
    /// already; refused unless every shard is done and the job is not
    /// recovering already, and past `MAX_JOB_ATTEMPTS`.
    RecoverJob {
        job: JobId,
        attempt: u32,
        lost: NodeId,
        owner: NodeId,
        map: PartitionMap,
    },
    /// Part of the inventory as ranges (at most `MAX_CHUNK_RANGES`), in
    /// ascending path order and disjoint, each applied as a `SubmitChunk`
    /// of its own would be, but atomically together. Ranges sent as a
    /// digest cost the log their first and last paths only.
    SubmitRanges {
        dataset: String,
        submission: JobId,
        ranges: Vec<InventoryRange>,
    },
}

/// Most attempts a job gets (`RestartJob`): past them it stays
/// uncommitted, with the last cause in its status, for an operator.
pub const MAX_JOB_ATTEMPTS: u32 = 8;

/// Why a job runs again.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
)]
pub enum RestartCause {
    /// An owner of the job's map was declared lost.
    OwnerLost { node: NodeId },
    /// An owner started its part after shards were done (it failed or
    /// restarted), so what they sent it is gone.
    OwnerStartedAgain { node: NodeId },
    /// An owner was lost once every shard was done, before it staged:
    /// only its partitions are read again (`RecoverJob`).
    PartitionsLost { node: NodeId },
}

impl std::fmt::Display for RestartCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OwnerLost { node } => write!(f, "owner node {node} was lost"),
            Self::OwnerStartedAgain { node } => {
                write!(f, "owner node {node} started its part again")
            }
            Self::PartitionsLost { node } => write!(
                f,
                "owner node {node} was lost before it staged: its partitions are read again"
            ),
        }
    }
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
    /// A node registered again with an older incarnation than the one
    /// the cluster knows (a restart registers a newer one).
    StaleIncarnation {
        node: NodeId,
        presented: u64,
        current: u64,
    },
    /// The node's incarnation was declared lost: a new incarnation (a
    /// restart) must register.
    NodeLost {
        node: NodeId,
    },
    /// The job has not finished its submission (or was aborted).
    JobNotSubmitted {
        job: JobId,
    },
    /// The owners' counts do not add up: read != unique + duplicates +
    /// rejected.
    CountsDoNotReconcile {
        job: JobId,
        counts: StagedCounts,
    },
    /// A partition map or a report under an epoch that is not the
    /// dataset's current one (for a new map: not the next one).
    StaleMapEpoch {
        dataset: String,
        presented: Epoch,
        current: Epoch,
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
    /// A shard leased, or an owner staged, under an earlier attempt of
    /// the job (it was restarted since).
    EarlierAttempt {
        job: JobId,
        presented: u32,
        current: u32,
    },
    TooManyAttempts {
        job: JobId,
        attempts: u32,
    },
    /// A `RecoverJob` that does not fit the job or its map.
    CannotRecover {
        job: JobId,
        reason: String,
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
                "chunk {first:?} to {last:?} overlaps the paths of an earlier chunk: an inventory must be sent in path order"
            ),
            Self::EarlierAttempt {
                job,
                presented,
                current,
            } => write!(
                f,
                "job {job} was restarted: attempt {presented} is over (now {current})"
            ),
            Self::TooManyAttempts { job, attempts } => write!(
                f,
                "job {job} has run {attempts} times, the most allowed: abort it and submit again"
            ),
            Self::CannotRecover { job, reason } => {
                write!(
                    f,
                    "job {job} cannot recover a lost owner's partitions: {reason}"
                )
            }
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
        incarnation: u64,
        /// Leases of an earlier incarnation sent back to pending.
        released: u64,
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
    LeasesGranted {
        node: NodeId,
        deadline_ms: u64,
        /// `(shard, epoch)` of each shard leased.
        granted: Vec<(ShardId, Epoch)>,
        /// Shards that could not be leased any more (done, aborted, or
        /// granted meanwhile): the leader drops them from its table.
        passed: Vec<ShardId>,
    },
    ProgressRecorded {
        shard: ShardId,
        checkpoint: u64,
    },
    ShardsCompleted {
        completed: Vec<ShardId>,
        /// Shards whose completion was refused (a stale epoch: the shard
        /// was leased again meanwhile), with why.
        refused: Vec<(ShardId, CommandError)>,
    },
    PartitionsAssigned {
        epoch: Epoch,
    },
    NodeDeclaredLost {
        node: NodeId,
        released: u64,
    },
    JobStaged {
        job: JobId,
        /// Whether the job is committed: every owner may publish.
        committed: bool,
        /// Whether this report is the one that committed it (a report
        /// repeated after the commit is not).
        committing: bool,
    },
    Error(CommandError),
    JobRestarted {
        job: JobId,
        /// The attempt the job now runs.
        attempt: u32,
        /// Its map's epoch.
        epoch: Epoch,
    },
    /// A `SubmitRanges` applied: the counts of its files and of the
    /// digests accepted, and which ranges (by index) were digests not
    /// accepted, to be sent again as files.
    RangesApplied {
        counts: DiffCounts,
        shards_created: u64,
        mismatched: Vec<u32>,
    },
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

    fn inventory_range() -> impl Strategy<Value = InventoryRange> {
        prop_oneof![
            (
                "[a-z/]{1,20}",
                "[a-z/]{1,20}",
                any::<u32>(),
                any::<[u8; 16]>()
            )
                .prop_map(|(first, last, files, digest)| InventoryRange::Digest {
                    first,
                    last,
                    files,
                    digest,
                }),
            (any::<u64>(), proptest::collection::vec(file_entry(), 0..5))
                .prop_map(|(first_file, files)| InventoryRange::Files { first_file, files }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), ".{0,20}", any::<[u8; 32]>()).prop_map(
                |(id, incarnation, address, cert_fingerprint)| {
                    Command::RegisterNode(NodeInfo {
                        id: NodeId(id),
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
                    submission: JobId(submission),
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
                        submission: JobId(submission),
                        first_file,
                        files,
                    }
                }),
            (
                ".{0,20}",
                any::<u64>(),
                proptest::collection::vec(inventory_range(), 0..6)
            )
                .prop_map(|(dataset, submission, ranges)| Command::SubmitRanges {
                    dataset,
                    submission: JobId(submission),
                    ranges,
                }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..10),
                any::<u64>()
            )
                .prop_map(|(node, shards, deadline_ms)| Command::GrantLeases {
                    node: NodeId(node),
                    shards: shards
                        .into_iter()
                        .map(|(shard, expected_epoch)| LeaseGrant {
                            shard: ShardId(shard),
                            expected_epoch: Epoch(expected_epoch),
                        })
                        .collect(),
                    deadline_ms
                }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..10)
            )
                .prop_map(|(node, shards)| Command::CompleteShards {
                    node: NodeId(node),
                    shards: shards
                        .into_iter()
                        .map(|(shard, epoch)| ShardDone {
                            shard: ShardId(shard),
                            epoch: Epoch(epoch)
                        })
                        .collect(),
                }),
            (any::<u64>(), any::<u64>(), any::<[u64; 4]>(), any::<u64>()).prop_map(
                |(job, node, c, epoch)| Command::StageJob {
                    job: JobId(job),
                    node: NodeId(node),
                    counts: StagedCounts {
                        read: c[0],
                        unique: c[1],
                        duplicates: c[2],
                        rejected: c[3],
                    },
                    map_epoch: Epoch(epoch),
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(node, incarnation)| Command::DeclareNodeLost {
                node: NodeId(node),
                incarnation
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(shard, node, epoch, offset)| Command::ReportProgress {
                    shard: ShardId(shard),
                    node: NodeId(node),
                    epoch: Epoch(epoch),
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
            shard: ShardId(7),
            presented: Epoch(1),
            current: Epoch(2),
        });
        assert_eq!(Response::from_bytes(&resp.to_bytes()).unwrap(), resp);
        assert!(Command::from_bytes(b"not an archive").is_err());
    }

    /// One of each command and response that carries an id, as the log
    /// and the wire hold them. The digests were taken when the cluster's
    /// node commands arrived (state layout 3); a change that moves a byte
    /// fails here, and needs a new state layout (coordinators started
    /// afresh), never a silent reinterpretation of old log entries.
    fn log_samples() -> (Vec<Command>, Vec<Response>) {
        let commands = vec![
            Command::RegisterNode(NodeInfo {
                id: 7u64.into(),
                incarnation: 5,
                address: "10.0.0.7:7000".into(),
                cert_fingerprint: [3; 32],
            }),
            Command::SubmitChunk {
                dataset: "d".into(),
                submission: 9u64.into(),
                first_file: 4096,
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
            Command::GrantLeases {
                node: 7u64.into(),
                shards: vec![LeaseGrant {
                    shard: 11u64.into(),
                    expected_epoch: 2u64.into(),
                }],
                deadline_ms: 1_000,
            },
            Command::ReportProgress {
                shard: 11u64.into(),
                node: 7u64.into(),
                epoch: 3u64.into(),
                offset: 4096,
            },
            Command::CompleteShards {
                node: 7u64.into(),
                shards: vec![ShardDone {
                    shard: 11u64.into(),
                    epoch: 3u64.into(),
                }],
            },
            Command::AssignPartitions {
                dataset: "d".into(),
                map: PartitionMap::split(64, &[7u64.into(), 8u64.into()], 2u64.into()),
            },
            Command::DeclareNodeLost {
                node: 7u64.into(),
                incarnation: 5,
            },
            Command::StageJob {
                job: 9u64.into(),
                node: 7u64.into(),
                counts: StagedCounts {
                    read: 4,
                    unique: 2,
                    duplicates: 1,
                    rejected: 1,
                },
                map_epoch: 2u64.into(),
            },
            Command::RestartJob {
                job: 9u64.into(),
                attempt: 1,
                map: PartitionMap::split(64, &[7u64.into()], 3u64.into()),
                cause: RestartCause::OwnerLost { node: 8u64.into() },
            },
            Command::RecoverJob {
                job: 9u64.into(),
                attempt: 0,
                lost: 8u64.into(),
                owner: 7u64.into(),
                map: PartitionMap::split(64, &[7u64.into()], 3u64.into()),
            },
        ];
        let responses = vec![
            Response::NodeRegistered {
                id: 7u64.into(),
                incarnation: 5,
                released: 1,
            },
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
            Response::LeasesGranted {
                node: 7u64.into(),
                deadline_ms: 1_000,
                granted: vec![(11u64.into(), 3u64.into())],
                passed: vec![12u64.into()],
            },
            Response::ProgressRecorded {
                shard: 11u64.into(),
                checkpoint: 4096,
            },
            Response::ShardsCompleted {
                completed: vec![11u64.into()],
                refused: vec![(
                    12u64.into(),
                    CommandError::ShardDone {
                        shard: 12u64.into(),
                    },
                )],
            },
            Response::PartitionsAssigned { epoch: 2u64.into() },
            Response::NodeDeclaredLost {
                node: 7u64.into(),
                released: 3,
            },
            Response::JobStaged {
                job: 9u64.into(),
                committed: true,
                committing: false,
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
            Response::JobRestarted {
                job: 9u64.into(),
                attempt: 2,
                epoch: 3u64.into(),
            },
            Response::Error(CommandError::EarlierAttempt {
                job: 9u64.into(),
                presented: 1,
                current: 2,
            }),
            Response::Error(CommandError::TooManyAttempts {
                job: 9u64.into(),
                attempts: 8,
            }),
            Response::Error(CommandError::CannotRecover {
                job: 9u64.into(),
                reason: "no owner".into(),
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
    fn the_log_format_is_frozen() {
        let (commands, responses) = digests();
        assert_eq!(
            commands,
            [
                0x9f09ad4f2fbe9872,
                0xc0aa66dbbcdfac17,
                0x340b8fc7b85e4ab5,
                0xc94853fbcbfdabc7,
                0x2dd565e2d12cfe31,
                0xcee4691b8a11f60a,
                0xaf89b95a9ad712bb,
                0xc9b0c4ae96aecb5a,
                0x5476d6755607690e,
                0x869fd932e60c62d3,
                0x3a5e727622486113,
                0xdc8c3149daf2fadd,
            ]
        );
        assert_eq!(
            responses,
            [
                0x3d329790d3fe73ef,
                0x2de86b0ced03fe82,
                0xfe029dcd4ff4adc2,
                0x4addb50f6bf9080a,
                0x61defbab697024,
                0xb54929eaf3018d54,
                0x62e369da11dfbe69,
                0x9667c51bc4dfe2e6,
                0x654733bc5f2755fc,
                0x7d1d01a20d7d41c0,
                0xd72f8828a817cceb,
                0xed3de28373576c83,
                0xa02c2fb668c4b906,
                0xd313f62de95525dd,
                0xae6fdda6fe351a02,
                0x8292b57709529d36,
                0x9c968c4d18057beb,
                0xfe6f85adab5555b4,
                0xfa1bf86847a3c37f,
                0xfc219c1d2bb4e659,
                0x59cde3a4a2a3d2f3,
                0x91187eb5bdeea5d9,
                0xbeef8c63d6484025,
            ]
        );
    }
}
