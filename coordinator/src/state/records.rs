//! The state machine's stored values, as rkyv archives.
//!
//! Every value read back from RocksDB (or from a snapshot) is validated by
//! rkyv before use, like every other byte Quern did not just produce itself.

use proto_schema::PartitionMap;
use proto_schema::command::{DatasetSpec, DiffCounts, NodeInfo, StagedCounts};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub id: u32,
    pub spec: DatasetSpec,
    /// The submission being received, if any (at most one at a time).
    pub open_submission: Option<u64>,
    /// The last finished submission; 0 before the first.
    pub last_generation: u64,
    /// Files the last finished submission listed.
    pub live_files: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Submitting,
    Submitted,
    /// Abandoned before it finished: what it catalogued and listed does
    /// not count.
    Aborted,
    /// Every shard done, every live node staged, the counts reconciled:
    /// owners publish what they staged.
    Committed,
}

/// One submission of a dataset's manifest and the work it created.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub dataset_id: u32,
    pub began_ms: u64,
    /// The dataset's `last_generation` when this job began: the files it
    /// listed that this job did not are gone.
    pub previous_generation: u64,
    pub state: JobState,
    pub counts: DiffCounts,
    pub gone: u64,
    pub shards_total: u64,
    pub shards_done: u64,
    /// The owners that staged their part: node id, counts, and the
    /// partition map epoch they staged under.
    pub staged: Vec<(u64, StagedCounts, u64)>,
}

/// A registered node: what it registered, and whether the leader declared
/// its incarnation lost (it gets no lease until it registers again).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub info: NodeInfo,
    pub lost: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Pending,
    Ingested,
}

/// What the catalogue remembers of a file, keyed by dataset and path.
///
/// Only a new or changed file is written: a file listed again unchanged
/// keeps its entry, and the submission's listing (see `listed`) says it
/// was seen.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub checksum: Option<Vec<u8>>,
    pub status: FileStatus,
    /// The submission that catalogued this version of the file.
    pub since: u64,
    /// The shard that ingests (or ingested) this version of the file.
    pub shard: u64,
    /// The entry submission `since` replaced (a changed file's last
    /// version, or a gone file's). Should that submission be aborted, this
    /// is the entry that counts: an abort rewrites no catalogue entry.
    pub prior: Option<Box<PriorVersion>>,
}

/// A replaced version of a file (a `CatalogEntry` without its own prior).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PriorVersion {
    pub size: u64,
    pub mtime_ns: i64,
    pub checksum: Option<Vec<u8>>,
    pub status: FileStatus,
    pub since: u64,
    pub shard: u64,
}

impl From<CatalogEntry> for PriorVersion {
    fn from(entry: CatalogEntry) -> Self {
        Self {
            size: entry.size,
            mtime_ns: entry.mtime_ns,
            checksum: entry.checksum,
            status: entry.status,
            since: entry.since,
            shard: entry.shard,
        }
    }
}

impl CatalogEntry {
    /// The entry that counts: itself, or if the submission that
    /// catalogued it was aborted, what it replaced (`None`: the aborted
    /// submission catalogued the file first).
    pub fn settled(self, since_aborted: bool) -> Option<CatalogEntry> {
        if since_aborted {
            return self.replaced();
        }
        Some(CatalogEntry {
            prior: None,
            ..self
        })
    }

    /// The entry this version replaced, if any.
    pub fn replaced(self) -> Option<CatalogEntry> {
        self.prior.map(|v| CatalogEntry {
            size: v.size,
            mtime_ns: v.mtime_ns,
            checksum: v.checksum,
            status: v.status,
            since: v.since,
            shard: v.shard,
            prior: None,
        })
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    Pending,
    Leased,
    Done,
}

/// A unit of scan work: a byte range of one file, leased to one node at a
/// time. `deadline_ms` is the deadline the grant gave; renewals extend it
/// only in the leader's memory (see `lease`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: u64,
    pub job: u64,
    pub dataset_id: u32,
    pub path: String,
    /// The file's number in the manifest, in path order (see `SubmitChunk`).
    pub file: u64,
    pub start: u64,
    pub end: u64,
    pub state: ShardState,
    pub holder: Option<u64>,
    pub epoch: u64,
    pub deadline_ms: u64,
    pub checkpoint: u64,
}

/// A stored value whose bytes failed validation.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what} record: {source}")]
pub struct CorruptRecord {
    what: &'static str,
    source: BoxedError,
}

pub trait Stored: Sized {
    fn encode(&self) -> AlignedVec;
    fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord>;
}

macro_rules! stored {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl Stored for $ty {
            fn encode(&self) -> AlignedVec {
                rkyv::to_bytes::<BoxedError>(self).expect("serializing to memory cannot fail")
            }

            fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
                let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
                aligned.extend_from_slice(bytes);
                rkyv::from_bytes::<$ty, BoxedError>(&aligned).map_err(|source| CorruptRecord { what: $what, source })
            }
        }
    )*};
}

stored!(
    Dataset => "dataset",
    Job => "job",
    CatalogEntry => "catalogue",
    Shard => "shard",
    Node => "node",
    PartitionMap => "partition map",
);
