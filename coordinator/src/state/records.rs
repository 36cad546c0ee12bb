//! The state machine's stored values, as rkyv archives.
//!
//! Every value read back from RocksDB (or from a snapshot) is validated by
//! rkyv before use, like every other byte Quern did not just produce itself.

use proto_schema::PartitionMap;
use proto_schema::command::{DatasetSpec, DiffCounts, NodeInfo, RestartCause, StagedCounts};
use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId, PartitionId, ShardId};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::StateError;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub id: DatasetId,
    pub spec: DatasetSpec,
    /// The submission being received, if any (at most one at a time).
    pub open_submission: Option<JobId>,
    /// The last finished submission; `JobId(0)` before the first.
    pub last_finished: JobId,
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
    pub id: JobId,
    pub dataset_id: DatasetId,
    pub began_ms: u64,
    /// The dataset's `last_finished` when this job began: the files that
    /// job listed and this one did not are gone.
    pub previous_finished: JobId,
    pub state: JobState,
    pub counts: DiffCounts,
    pub gone: u64,
    pub shards_total: u64,
    pub shards_done: u64,
    /// The owners that staged their part: node id, counts, and the
    /// partition map epoch they staged under.
    pub staged: Vec<(NodeId, StagedCounts, Epoch)>,
    /// How many times the job was restarted (`RestartJob`): a shard
    /// counts as done only if it was done in this attempt.
    pub attempt: u32,
    /// Why it was last restarted.
    pub restarted: Option<RestartCause>,
    /// Set by `RecoverJob`: the job recovers a lost owner's partitions.
    pub recovery: Option<Recovery>,
}

/// A job recovering the partitions of an owner lost before it staged,
/// once every shard was done (`RecoverJob`): the other owners' parts of
/// `base_attempt`, staged under map `base_epoch`, stay; `owner` reads
/// every shard again for `lost`'s range alone (`start..end`) under map
/// `epoch`, and stages that as its recovery part.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub base_attempt: u32,
    pub base_epoch: Epoch,
    /// The owners of the base map but `lost`: each stages under it.
    pub base_owners: Vec<NodeId>,
    pub lost: NodeId,
    pub start: PartitionId,
    pub end: PartitionId,
    pub owner: NodeId,
    pub epoch: Epoch,
    /// The recovery part's counts, once staged. It read every record
    /// again, so its read and rejected are the job's own.
    pub staged: Option<StagedCounts>,
}

impl Job {
    /// Who has yet to stage, and what the staged parts add up to, when
    /// `owners` stage under map `epoch` (a recovering job: its base owners
    /// under the base map, and its recovery owner). The job commits once
    /// nobody is left (and every shard is done) with counts that
    /// reconcile.
    pub fn staging(&self, owners: &[NodeId], epoch: Epoch) -> (Vec<NodeId>, StagedCounts) {
        let Some(recovery) = &self.recovery else {
            return (
                self.unstaged(owners, epoch),
                self.staged_total(owners, epoch),
            );
        };
        let mut unstaged = self.unstaged(&recovery.base_owners, recovery.base_epoch);
        if recovery.staged.is_none() {
            unstaged.push(recovery.owner);
        }
        let base = self.staged_total(&recovery.base_owners, recovery.base_epoch);
        let again = recovery.staged.unwrap_or_default();
        // The base parts' reads miss the lost owner's: the recovery read
        // every record again, and its reads are the job's.
        let total = StagedCounts {
            read: again.read,
            unique: base.unique + again.unique,
            duplicates: base.duplicates + again.duplicates,
            rejected: again.rejected,
        };
        (unstaged, total)
    }

    /// Which of `owners` have not staged under map `epoch`.
    fn unstaged(&self, owners: &[NodeId], epoch: Epoch) -> Vec<NodeId> {
        owners
            .iter()
            .copied()
            .filter(|&owner| self.staged_by(owner, epoch).is_none())
            .collect()
    }

    /// The counts `owner` staged under map `epoch` (a recovery part
    /// under the recovery's map), if it has.
    pub fn staged_by(&self, owner: NodeId, epoch: Epoch) -> Option<StagedCounts> {
        if let Some(recovery) = &self.recovery
            && (recovery.owner, recovery.epoch) == (owner, epoch)
        {
            return recovery.staged;
        }
        self.staged
            .iter()
            .find(|&&(node, _, at)| node == owner && at == epoch)
            .map(|&(_, counts, _)| counts)
    }

    /// Whether everything `node` must stage for the job under map `epoch`
    /// has been staged: then its parts are durable in its store, and
    /// losing it loses nothing the job needs.
    pub fn staged_all_of(&self, node: NodeId, epoch: Epoch) -> bool {
        match &self.recovery {
            None => self.staged_by(node, epoch).is_some(),
            Some(recovery) => {
                let base = !recovery.base_owners.contains(&node)
                    || self.staged_by(node, recovery.base_epoch).is_some();
                base && (node != recovery.owner || recovery.staged.is_some())
            }
        }
    }

    /// Whether any owner has staged under map `epoch`: then every shard
    /// was done, and the job commits under that map or runs again.
    pub fn staging_under(&self, epoch: Epoch) -> bool {
        self.staged.iter().any(|&(_, _, at)| at == epoch)
            || self.recovery.as_ref().is_some_and(|r| r.epoch == epoch)
    }

    /// The counts `owners` staged under map `epoch`, summed.
    fn staged_total(&self, owners: &[NodeId], epoch: Epoch) -> StagedCounts {
        let mut total = StagedCounts::default();
        for (_, counts, _) in self
            .staged
            .iter()
            .filter(|(node, _, at)| owners.contains(node) && *at == epoch)
        {
            total.add(*counts);
        }
        total
    }
}

/// Who must stage a job before it commits: the owners of its dataset's
/// partition map, or without a map, every live node (`live`, read only
/// then).
pub fn stagers(
    map: Option<&PartitionMap>,
    live: impl FnOnce() -> Result<Vec<Node>, StateError>,
) -> Result<Vec<NodeId>, StateError> {
    Ok(match map {
        Some(map) => map.nodes(),
        None => live()?.iter().map(|n| n.info.id).collect(),
    })
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
    pub since: JobId,
    /// The shard that ingests (or ingested) this version of the file.
    pub shard: ShardId,
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
    pub since: JobId,
    pub shard: ShardId,
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
    pub id: ShardId,
    pub job: JobId,
    pub dataset_id: DatasetId,
    pub path: String,
    /// The file's number in the manifest, in path order (see `SubmitChunk`).
    pub file: u64,
    pub start: u64,
    pub end: u64,
    pub state: ShardState,
    pub holder: Option<NodeId>,
    pub epoch: Epoch,
    pub deadline_ms: u64,
    pub checkpoint: u64,
    /// The job's attempt it was last leased in: a shard done (or leased)
    /// in an earlier attempt is pending again.
    pub attempt: u32,
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

#[cfg(test)]
mod tests {
    use proto_schema::command::{DatasetFormat, KeySpec};

    use super::*;

    /// One record of each kind with every id set, as the state DB and
    /// snapshots hold them.
    fn samples() -> Vec<AlignedVec> {
        let prior = PriorVersion {
            size: 10,
            mtime_ns: -1,
            checksum: None,
            status: FileStatus::Ingested,
            since: 8u64.into(),
            shard: 10u64.into(),
        };
        vec![
            Dataset {
                id: 5u32.into(),
                spec: DatasetSpec {
                    name: "d".into(),
                    format: DatasetFormat::Tsv,
                    key: KeySpec::Field {
                        index: 2,
                        delimiter: b'\t',
                    },
                    partitions: 64,
                },
                open_submission: Some(9u64.into()),
                last_finished: 8u64.into(),
                live_files: 3,
            }
            .encode(),
            Job {
                id: 9u64.into(),
                dataset_id: 5u32.into(),
                began_ms: 1,
                previous_finished: 8u64.into(),
                state: JobState::Submitting,
                counts: DiffCounts {
                    new: 1,
                    changed: 2,
                    unchanged: 3,
                },
                gone: 4,
                shards_total: 5,
                shards_done: 6,
                staged: vec![(
                    7u64.into(),
                    StagedCounts {
                        read: 4,
                        unique: 2,
                        duplicates: 1,
                        rejected: 1,
                    },
                    2u64.into(),
                )],
                attempt: 1,
                restarted: Some(RestartCause::OwnerLost { node: 8u64.into() }),
                recovery: Some(Recovery {
                    base_attempt: 0,
                    base_epoch: 2u64.into(),
                    base_owners: vec![7u64.into()],
                    lost: 8u64.into(),
                    start: PartitionId(32),
                    end: PartitionId(64),
                    owner: 7u64.into(),
                    epoch: 3u64.into(),
                    staged: None,
                }),
            }
            .encode(),
            CatalogEntry {
                size: 11,
                mtime_ns: 2,
                checksum: Some(vec![1; 16]),
                status: FileStatus::Pending,
                since: 9u64.into(),
                shard: 11u64.into(),
                prior: Some(Box::new(prior)),
            }
            .encode(),
            Shard {
                id: 11u64.into(),
                job: 9u64.into(),
                dataset_id: 5u32.into(),
                file: 12,
                path: "a/b".into(),
                start: 0,
                end: 11,
                state: ShardState::Leased,
                holder: Some(7u64.into()),
                epoch: 3u64.into(),
                deadline_ms: 1_000,
                checkpoint: 4,
                attempt: 1,
            }
            .encode(),
            Node {
                info: NodeInfo {
                    id: 7u64.into(),
                    incarnation: 5,
                    address: "10.0.0.7:7000".into(),
                    cert_fingerprint: [3; 32],
                },
                lost: true,
            }
            .encode(),
            PartitionMap::split(64, &[7u64.into(), 8u64.into()], 2u64.into()).encode(),
        ]
    }

    /// Digests taken from the bytes of state layout 7 (jobs with a
    /// recovery of a lost owner's partitions): a change that moves a byte fails here and needs a
    /// new layout.
    #[test]
    fn records_are_frozen() {
        let digests: Vec<u64> = samples()
            .iter()
            .map(|b| xxhash_rust::xxh3::xxh3_64(b))
            .collect();
        assert_eq!(
            digests,
            [
                0x3f0cef596d87dccd,
                0xad0c08e6a858e336,
                0x4d9e173fad3c9589,
                0x2c491cacd296dbfb,
                0xc31550e43a0c6f20,
                0x87f7755004fb823b,
            ]
        );
    }
}
