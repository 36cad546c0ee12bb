//! Bounds on what a command may carry. The leader checks them before it
//! proposes a command, so nothing out of bounds reaches the Raft log; every
//! replica checks them again when applying (a replica never trusts the log
//! blindly), refusing with the same error. Each bound keeps every state key
//! and value a command can write far inside what the state, its snapshots
//! and replication carry: a refusal here is the only place a client can
//! meet them.

use rkyv::{Archive, Deserialize, Serialize};

use super::{Command, CommandError, DatasetSpec, FileEntry, InventoryRange, KeySpec};
use crate::partition_map::MAX_PARTITIONS;

/// Most bytes of a manifest path (a state key, and a shard's path).
pub const MAX_PATH_BYTES: usize = 4 << 10;
/// Most bytes of a dataset's name (a state key).
pub const MAX_DATASET_NAME_BYTES: usize = 256;
/// Most bytes of a node's address.
pub const MAX_NODE_ADDRESS_BYTES: usize = 256;
/// Most bytes of a JSON pointer naming a dataset's key.
pub const MAX_KEY_POINTER_BYTES: usize = 1 << 10;
/// Most bytes of a file's checksum.
pub const MAX_CHECKSUM_BYTES: usize = 64;
/// Most file entries one manifest chunk may carry.
pub const MAX_CHUNK_FILES: usize = 4096;
/// Most bytes of paths and checksums one manifest chunk may carry.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Most ranges one `SubmitRanges` may carry.
pub const MAX_CHUNK_RANGES: usize = 1024;
/// Most files one digest range may stand for: bounds the catalogue entries
/// a replica reads to check it.
pub const MAX_RANGE_FILES: usize = 256;
/// Most ranges in one partition map (a range holds one partition or more).
pub const MAX_PARTITION_RANGES: usize = MAX_PARTITIONS as usize;
/// Most shards one `GrantLeases` may lease, and one `CompleteShards` may
/// complete: bounds the command and a node's batch.
pub const MAX_LEASES_PER_COMMAND: usize = 256;
/// Most bytes of an encoded command: a log entry's payload. Above the
/// largest chunk the other bounds allow (a test checks it), and small
/// enough that the coordinator's replication payloads, a few entries
/// each, stay within its transport's message limit (a test there checks
/// that).
pub const MAX_COMMAND_BYTES: usize = 2 << 20;

/// What a bound limits, as a refusal names it.
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
pub enum Bounded {
    Path,
    DatasetName,
    NodeAddress,
    KeyPointer,
    Checksum,
    PartitionRanges,
    Shards,
    EncodedCommand,
    InventoryRanges,
    RangeFiles,
}

impl Bounded {
    /// The limit, in the unit `unit` names.
    pub fn max(self) -> usize {
        match self {
            Self::Path => MAX_PATH_BYTES,
            Self::DatasetName => MAX_DATASET_NAME_BYTES,
            Self::NodeAddress => MAX_NODE_ADDRESS_BYTES,
            Self::KeyPointer => MAX_KEY_POINTER_BYTES,
            Self::Checksum => MAX_CHECKSUM_BYTES,
            Self::PartitionRanges => MAX_PARTITION_RANGES,
            Self::Shards => MAX_LEASES_PER_COMMAND,
            Self::EncodedCommand => MAX_COMMAND_BYTES,
            Self::InventoryRanges => MAX_CHUNK_RANGES,
            Self::RangeFiles => MAX_RANGE_FILES,
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::PartitionRanges => "ranges",
            Self::Shards => "shards",
            Self::InventoryRanges => "ranges",
            Self::RangeFiles => "files",
            _ => "bytes",
        }
    }

    /// `size` against the bound.
    pub fn check(self, size: usize) -> Result<(), CommandError> {
        if size <= self.max() {
            return Ok(());
        }
        Err(CommandError::OutOfBounds {
            what: self,
            size: size as u64,
            max: self.max() as u64,
        })
    }
}

impl std::fmt::Display for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Path => "path",
            Self::DatasetName => "dataset name",
            Self::NodeAddress => "node address",
            Self::KeyPointer => "key pointer",
            Self::Checksum => "checksum",
            Self::PartitionRanges => "partition map",
            Self::Shards => "shards in one command",
            Self::EncodedCommand => "encoded command",
            Self::InventoryRanges => "inventory ranges in one command",
            Self::RangeFiles => "files of one digest range",
        })
    }
}

/// Checks an encoded command's length, before it is decoded or proposed.
pub fn check_encoded_len(len: usize) -> Result<(), CommandError> {
    Bounded::EncodedCommand.check(len)
}

impl Command {
    /// Checks every bound on what the command carries (not its encoded
    /// length: `check_encoded_len`). Work is linear in the command's size.
    pub fn check_bounds(&self) -> Result<(), CommandError> {
        match self {
            Command::RegisterNode(node) => Bounded::NodeAddress.check(node.address.len()),
            Command::CreateDataset(spec) => check_spec(spec),
            Command::BeginSubmission { dataset, .. }
            | Command::FinishSubmission { dataset, .. }
            | Command::AbortSubmission { dataset, .. } => Bounded::DatasetName.check(dataset.len()),
            Command::SubmitChunk { dataset, files, .. } => {
                Bounded::DatasetName.check(dataset.len())?;
                check_chunk(files)
            }
            Command::SubmitRanges {
                dataset, ranges, ..
            } => {
                Bounded::DatasetName.check(dataset.len())?;
                check_ranges(ranges)
            }
            Command::AssignPartitions { dataset, map } => {
                Bounded::DatasetName.check(dataset.len())?;
                Bounded::PartitionRanges.check(map.ranges.len())
            }
            Command::RestartJob { map, .. } | Command::RecoverJob { map, .. } => {
                Bounded::PartitionRanges.check(map.ranges.len())
            }
            Command::GrantLeases { shards, .. } => Bounded::Shards.check(shards.len()),
            Command::CompleteShards { shards, .. } => Bounded::Shards.check(shards.len()),
            Command::ReportProgress { .. }
            | Command::DeclareNodeLost { .. }
            | Command::StageJob { .. } => Ok(()),
        }
    }
}

fn check_spec(spec: &DatasetSpec) -> Result<(), CommandError> {
    Bounded::DatasetName.check(spec.name.len())?;
    match &spec.key {
        KeySpec::JsonPointer(pointer) => Bounded::KeyPointer.check(pointer.len()),
        KeySpec::WholeLine | KeySpec::Field { .. } => Ok(()),
    }
}

/// A chunk's count and weight first (cheap, and what a client exceeds by
/// cutting chunks wrongly), then each entry.
fn check_chunk(files: &[FileEntry]) -> Result<(), CommandError> {
    let bytes: usize = files.iter().map(FileEntry::weight).sum();
    if files.len() > MAX_CHUNK_FILES || bytes > MAX_CHUNK_BYTES {
        return Err(CommandError::ChunkTooLarge {
            files: files.len() as u64,
            bytes: bytes as u64,
        });
    }
    files.iter().try_for_each(check_entry)
}

fn check_entry(file: &FileEntry) -> Result<(), CommandError> {
    Bounded::Path.check(file.path.len())?;
    Bounded::Checksum.check(file.checksum.as_ref().map_or(0, Vec::len))
}

/// As `check_chunk`, over the files of every range, with each digest's
/// paths weighed like entries'; then each range.
fn check_ranges(ranges: &[InventoryRange]) -> Result<(), CommandError> {
    Bounded::InventoryRanges.check(ranges.len())?;
    let files: usize = ranges
        .iter()
        .map(|range| match range {
            InventoryRange::Files { files, .. } => files.len(),
            InventoryRange::Digest { .. } => 0,
        })
        .sum();
    let bytes: usize = ranges.iter().map(InventoryRange::weight).sum();
    if files > MAX_CHUNK_FILES || bytes > MAX_CHUNK_BYTES {
        return Err(CommandError::ChunkTooLarge {
            files: files as u64,
            bytes: bytes as u64,
        });
    }
    for range in ranges {
        match range {
            InventoryRange::Digest {
                first, last, files, ..
            } => {
                Bounded::Path.check(first.len())?;
                Bounded::Path.check(last.len())?;
                Bounded::RangeFiles.check(*files as usize)?;
            }
            InventoryRange::Files { files, .. } => files.iter().try_for_each(check_entry)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{DatasetFormat, LeaseGrant, NodeInfo, ShardDone};
    use crate::ids::{Epoch, JobId, NodeId, PartitionId, ShardId};
    use crate::partition_map::{PartitionMap, PartitionRange};

    fn map(ranges: usize) -> Command {
        let range = PartitionRange {
            start: PartitionId(u16::MAX),
            end: PartitionId(u16::MAX),
            node: NodeId(u64::MAX),
        };
        Command::AssignPartitions {
            dataset: "d".repeat(MAX_DATASET_NAME_BYTES),
            map: PartitionMap {
                epoch: Epoch(u64::MAX),
                partitions: MAX_PARTITIONS,
                ranges: vec![range; ranges],
            },
        }
    }

    fn grants(shards: usize) -> Command {
        let grant = LeaseGrant {
            shard: ShardId(u64::MAX),
            expected_epoch: Epoch(u64::MAX),
        };
        Command::GrantLeases {
            node: NodeId(u64::MAX),
            shards: vec![grant; shards],
            deadline_ms: u64::MAX,
        }
    }

    fn chunk(files: Vec<FileEntry>) -> Command {
        Command::SubmitChunk {
            dataset: "ds".into(),
            submission: JobId(1),
            first_file: 0,
            files,
        }
    }

    fn ranges(ranges: Vec<InventoryRange>) -> Command {
        Command::SubmitRanges {
            dataset: "ds".into(),
            submission: JobId(u64::MAX),
            ranges,
        }
    }

    fn digest(first: String, last: String, files: usize) -> InventoryRange {
        InventoryRange::Digest {
            first,
            last,
            files: files as u32,
            digest: [0xff; 16],
        }
    }

    fn file(path: String, checksum: usize) -> FileEntry {
        FileEntry {
            path,
            size: u64::MAX,
            mtime_ns: i64::MIN,
            checksum: Some(vec![0xab; checksum]),
        }
    }

    fn refused(cmd: &Command) -> (Bounded, u64) {
        match cmd.check_bounds() {
            Err(CommandError::OutOfBounds { what, size, max }) => {
                assert_eq!(max, what.max() as u64);
                (what, size)
            }
            other => panic!("{cmd:?} gave {other:?}"),
        }
    }

    #[test]
    fn every_bound_admits_its_limit_and_refuses_one_more() {
        let at = |n: usize| "p".repeat(n);
        assert!(
            chunk(vec![file(at(MAX_PATH_BYTES), 16)])
                .check_bounds()
                .is_ok()
        );
        let over = chunk(vec![file(at(MAX_PATH_BYTES + 1), 16)]);
        assert_eq!(refused(&over), (Bounded::Path, MAX_PATH_BYTES as u64 + 1));
        let over = chunk(vec![file("/a".into(), MAX_CHECKSUM_BYTES + 1)]);
        assert_eq!(refused(&over).0, Bounded::Checksum);

        let spec = |name: String, key| {
            Command::CreateDataset(DatasetSpec {
                name,
                format: DatasetFormat::Jsonl,
                key,
                partitions: 64,
            })
        };
        assert!(
            spec(at(MAX_DATASET_NAME_BYTES), KeySpec::WholeLine)
                .check_bounds()
                .is_ok()
        );
        let over = spec(at(100 << 10), KeySpec::WholeLine);
        assert_eq!(refused(&over), (Bounded::DatasetName, 100 << 10));
        let pointer = KeySpec::JsonPointer(at(MAX_KEY_POINTER_BYTES + 1));
        assert_eq!(refused(&spec("ds".into(), pointer)).0, Bounded::KeyPointer);
        for cmd in [
            Command::BeginSubmission {
                dataset: at(MAX_DATASET_NAME_BYTES + 1),
                now_ms: 1,
            },
            Command::AbortSubmission {
                dataset: at(MAX_DATASET_NAME_BYTES + 1),
                submission: JobId(1),
            },
        ] {
            assert_eq!(refused(&cmd).0, Bounded::DatasetName);
        }
        let node = Command::RegisterNode(NodeInfo {
            id: NodeId(1),
            incarnation: 1,
            address: at(MAX_NODE_ADDRESS_BYTES + 1),
            cert_fingerprint: [0; 32],
        });
        assert_eq!(refused(&node).0, Bounded::NodeAddress);
        assert_eq!(
            refused(&map(MAX_PARTITION_RANGES + 1)).0,
            Bounded::PartitionRanges
        );
        assert!(grants(MAX_LEASES_PER_COMMAND).check_bounds().is_ok());
        assert_eq!(
            refused(&grants(MAX_LEASES_PER_COMMAND + 1)),
            (Bounded::Shards, MAX_LEASES_PER_COMMAND as u64 + 1)
        );
        let done = ShardDone {
            shard: ShardId(1),
            epoch: Epoch(1),
        };
        let completions = Command::CompleteShards {
            node: NodeId(1),
            shards: vec![done; MAX_LEASES_PER_COMMAND + 1],
        };
        assert_eq!(refused(&completions).0, Bounded::Shards);

        assert!(check_encoded_len(MAX_COMMAND_BYTES).is_ok());
        let err = check_encoded_len(MAX_COMMAND_BYTES + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "encoded command of {} bytes exceeds the limit of {MAX_COMMAND_BYTES} bytes",
                MAX_COMMAND_BYTES + 1
            )
        );
    }

    #[test]
    fn inventory_ranges_are_bounded_in_number_files_and_paths() {
        let at = |n: usize| "p".repeat(n);
        let one = |files| digest("/a".into(), "/b".into(), files);
        assert!(
            ranges(vec![one(MAX_RANGE_FILES); MAX_CHUNK_RANGES])
                .check_bounds()
                .is_ok()
        );
        assert_eq!(
            refused(&ranges(vec![one(1); MAX_CHUNK_RANGES + 1])),
            (Bounded::InventoryRanges, MAX_CHUNK_RANGES as u64 + 1)
        );
        assert_eq!(
            refused(&ranges(vec![one(MAX_RANGE_FILES + 1)])),
            (Bounded::RangeFiles, MAX_RANGE_FILES as u64 + 1)
        );
        for (first, last) in [
            (at(MAX_PATH_BYTES + 1), at(1)),
            (at(1), at(MAX_PATH_BYTES + 1)),
        ] {
            let over = ranges(vec![digest(first, last, 1)]);
            assert_eq!(refused(&over), (Bounded::Path, MAX_PATH_BYTES as u64 + 1));
        }
        let bad_entry = InventoryRange::Files {
            first_file: 0,
            files: vec![file("/a".into(), MAX_CHECKSUM_BYTES + 1)],
        };
        assert_eq!(
            refused(&ranges(vec![one(1), bad_entry])).0,
            Bounded::Checksum
        );
        // Files and bytes count over every range, as in one chunk.
        let files = |n: usize| InventoryRange::Files {
            first_file: 0,
            files: (0..n).map(|i| file(i.to_string(), 0)).collect(),
        };
        assert!(
            ranges(vec![files(MAX_CHUNK_FILES / 2); 2])
                .check_bounds()
                .is_ok()
        );
        assert!(matches!(
            ranges(vec![files(MAX_CHUNK_FILES / 2), files(MAX_CHUNK_FILES / 2 + 1)]).check_bounds(),
            Err(CommandError::ChunkTooLarge { files, .. }) if files == MAX_CHUNK_FILES as u64 + 1
        ));
        let heavy = digest(at(MAX_PATH_BYTES), at(MAX_PATH_BYTES), 1);
        let heavy_ranges = MAX_CHUNK_BYTES / (2 * MAX_PATH_BYTES) + 1;
        assert!(matches!(
            ranges(vec![heavy; heavy_ranges]).check_bounds(),
            Err(CommandError::ChunkTooLarge { bytes, .. }) if bytes == (heavy_ranges * 2 * MAX_PATH_BYTES) as u64
        ));
    }

    #[test]
    fn a_chunk_over_its_count_or_weight_is_too_large() {
        let many = chunk(
            (0..=MAX_CHUNK_FILES)
                .map(|i| file(i.to_string(), 0))
                .collect(),
        );
        assert!(matches!(
            many.check_bounds(),
            Err(CommandError::ChunkTooLarge { files, .. }) if files == MAX_CHUNK_FILES as u64 + 1
        ));
        let heavy_files = MAX_CHUNK_BYTES / MAX_PATH_BYTES + 1;
        let heavy = chunk(
            (0..heavy_files)
                .map(|_| file("h".repeat(MAX_PATH_BYTES), 0))
                .collect(),
        );
        assert!(matches!(
            heavy.check_bounds(),
            Err(CommandError::ChunkTooLarge { .. })
        ));
    }

    /// The largest commands the other bounds allow encode within
    /// `MAX_COMMAND_BYTES`: a valid command is never refused for its size.
    #[test]
    fn the_largest_valid_commands_fit_the_encoded_bound() {
        // Weight spread over the most files, and over the fewest.
        let per_file = MAX_CHUNK_BYTES / MAX_CHUNK_FILES;
        let wide = chunk(
            (0..MAX_CHUNK_FILES)
                .map(|i| {
                    let mut path = format!("/{i:08}/");
                    path.push_str(&"w".repeat(per_file - MAX_CHECKSUM_BYTES - path.len()));
                    file(path, MAX_CHECKSUM_BYTES)
                })
                .collect(),
        );
        let deep = chunk(
            (0..MAX_CHUNK_BYTES / MAX_PATH_BYTES)
                .map(|i| file(format!("{i:08}{}", "d".repeat(MAX_PATH_BYTES - 8)), 0))
                .collect(),
        );
        // Ranges: the most digests, their paths' weight spread over them;
        // and the most files, one range each, beside them.
        let per_range = MAX_CHUNK_BYTES / MAX_CHUNK_RANGES / 2;
        let most_digests = ranges(
            (0..MAX_CHUNK_RANGES)
                .map(|i| {
                    let path = format!("{i:08}{}", "r".repeat(per_range - 8));
                    digest(path.clone(), path, MAX_RANGE_FILES)
                })
                .collect(),
        );
        let most_files = ranges(
            (0..MAX_CHUNK_RANGES)
                .map(|i| InventoryRange::Files {
                    first_file: u64::MAX,
                    files: (0..MAX_CHUNK_FILES / MAX_CHUNK_RANGES)
                        .map(|j| {
                            let mut path = format!("/{i:06}/{j:04}/");
                            path.push_str(&"w".repeat(per_file - MAX_CHECKSUM_BYTES - path.len()));
                            file(path, MAX_CHECKSUM_BYTES)
                        })
                        .collect(),
                })
                .collect(),
        );
        let largest_map = map(MAX_PARTITION_RANGES);
        let most_grants = grants(MAX_LEASES_PER_COMMAND);
        for cmd in [
            wide,
            deep,
            most_digests,
            most_files,
            largest_map,
            most_grants,
        ] {
            cmd.check_bounds().unwrap();
            let len = cmd.to_bytes().len();
            assert!(len <= MAX_COMMAND_BYTES, "{len} bytes");
            eprintln!("largest valid command: {len} bytes");
        }
    }
}
