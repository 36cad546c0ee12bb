//! Fuzz targets of the coordinator, as property tests: the snapshot reader
//! over damaged streams, and the state machine over arbitrary command
//! sequences (bounds included) followed by a snapshot of what they left:
//! a command from outside once stopped every replica at its next snapshot
//! (a key the snapshot writer refused), so applying and snapshotting
//! anything a log can hold must answer, never panic or fail.
//!
//! `cargo test` runs a smoke run (proptest's default cases, fewer for the
//! state machine, which opens a store per case); on demand:
//! `PROPTEST_CASES=100000 cargo test --release -p coordinator --test fuzz`.

use std::io::Cursor;

use coordinator::state::snapshot_file::{SnapshotReader, SnapshotWriter};
use coordinator::{CommandBytes, StateMachineStore};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use proptest::prelude::*;
use proto_schema::PartitionMap;
use proto_schema::command::{
    Command, DatasetFormat, DatasetSpec, FileEntry, InventoryRange, KeySpec, LeaseGrant,
    MAX_PATH_BYTES, MAX_RANGE_FILES, NodeInfo, ShardDone, StagedCounts,
};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};

#[path = "../../proto-schema/tests/support/damaged.rs"]
mod damaged;
use damaged::damaged;

fn snapshot_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            0u8..9,
            prop::collection::vec(any::<u8>(), 0..24),
            prop::collection::vec(any::<u8>(), 0..48),
        ),
        0..6,
    )
    .prop_map(|records| {
        let mut writer = SnapshotWriter::new(Vec::new()).unwrap();
        for (cf, key, value) in &records {
            writer.record(*cf, key, value).unwrap();
        }
        writer.finish().unwrap().0
    })
}

/// Names from a small set, so commands meet each other's datasets, or
/// far over their bound.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b"]).prop_map(String::from),
        1 => (1usize..200_000).prop_map(|n| "n".repeat(n)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "/[a-c]{1,3}/[a-c]{1,3}",
        1 => (MAX_PATH_BYTES - 2..MAX_PATH_BYTES + 2).prop_map(|n| format!("/{}", "p".repeat(n))),
        1 => Just(format!("/{}", "p".repeat(70 << 10))),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let small = 0u64..5;
    prop_oneof![
        (small.clone(), ".{0,300}").prop_map(|(id, address)| Command::RegisterNode(NodeInfo {
            id: NodeId(id),
            incarnation: 1,
            address,
            cert_fingerprint: [1; 32],
        })),
        (name(), ".{0,1100}").prop_map(|(name, pointer)| Command::CreateDataset(DatasetSpec {
            name,
            format: DatasetFormat::Jsonl,
            key: KeySpec::JsonPointer(pointer),
            partitions: 4,
        })),
        name().prop_map(|dataset| Command::BeginSubmission { dataset, now_ms: 1 }),
        (
            name(),
            small.clone(),
            prop::collection::vec(
                (
                    path(),
                    any::<u64>(),
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..70))
                ),
                0..6
            )
        )
            .prop_map(|(dataset, submission, files)| Command::SubmitChunk {
                dataset,
                submission: JobId(submission),
                first_file: 0,
                files: files
                    .into_iter()
                    .map(|(path, size, checksum)| FileEntry {
                        path,
                        size,
                        mtime_ns: 1,
                        checksum,
                    })
                    .collect(),
            }),
        (
            name(),
            small.clone(),
            prop::collection::vec(
                prop_oneof![
                    (
                        path(),
                        path(),
                        0..MAX_RANGE_FILES as u32 + 2,
                        any::<[u8; 16]>()
                    )
                        .prop_map(|(first, last, files, digest)| {
                            InventoryRange::Digest {
                                first,
                                last,
                                files,
                                digest,
                            }
                        }),
                    (
                        small.clone(),
                        prop::collection::vec((path(), any::<u64>()), 0..4)
                    )
                        .prop_map(|(first_file, files)| {
                            InventoryRange::Files {
                                first_file,
                                files: files
                                    .into_iter()
                                    .map(|(path, size)| FileEntry {
                                        path,
                                        size,
                                        mtime_ns: 1,
                                        checksum: None,
                                    })
                                    .collect(),
                            }
                        }),
                ],
                0..4
            )
        )
            .prop_map(|(dataset, submission, ranges)| Command::SubmitRanges {
                dataset,
                submission: JobId(submission),
                ranges,
            }),
        (name(), small.clone()).prop_map(|(dataset, submission)| Command::FinishSubmission {
            dataset,
            submission: JobId(submission)
        }),
        (name(), small.clone()).prop_map(|(dataset, submission)| Command::AbortSubmission {
            dataset,
            submission: JobId(submission)
        }),
        (small.clone(), small.clone(), small.clone()).prop_map(|(shard, node, expected_epoch)| {
            Command::GrantLeases {
                node: NodeId(node),
                shards: vec![LeaseGrant {
                    shard: ShardId(shard),
                    expected_epoch: Epoch(expected_epoch),
                }],
                deadline_ms: 1,
            }
        }),
        (small.clone(), small.clone(), small.clone(), any::<u64>()).prop_map(
            |(shard, node, epoch, offset)| Command::ReportProgress {
                shard: ShardId(shard),
                node: NodeId(node),
                epoch: Epoch(epoch),
                offset
            }
        ),
        (small.clone(), small.clone(), small.clone()).prop_map(|(shard, node, epoch)| {
            Command::CompleteShards {
                node: NodeId(node),
                shards: vec![ShardDone {
                    shard: ShardId(shard),
                    epoch: Epoch(epoch),
                }],
            }
        }),
        (
            name(),
            prop::collection::vec(small.clone().prop_map(NodeId), 1..4),
            small.clone()
        )
            .prop_map(|(dataset, nodes, epoch)| Command::AssignPartitions {
                dataset,
                map: PartitionMap::split(4, &nodes, Epoch(epoch)),
            }),
        (small.clone(), small.clone()).prop_map(|(node, incarnation)| {
            Command::DeclareNodeLost {
                node: NodeId(node),
                incarnation,
            }
        }),
        (small.clone(), small.clone(), any::<[u8; 4]>(), small).prop_map(
            |(job, node, c, epoch)| Command::StageJob {
                job: JobId(job),
                node: NodeId(node),
                counts: StagedCounts {
                    read: c[0].into(),
                    unique: c[1].into(),
                    duplicates: c[2].into(),
                    rejected: c[3].into(),
                },
                map_epoch: Epoch(epoch),
            }
        ),
    ]
}

/// Entries as a log would hold them: mostly commands, some bytes that are
/// not one (a replica never trusts the log blindly).
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => command().prop_map(|cmd| cmd.to_bytes().to_vec()),
        1 => damaged(command().prop_map(|cmd| cmd.to_bytes().to_vec())),
    ]
}

fn state_machine_cases() -> ProptestConfig {
    let cases = ProptestConfig::default().cases;
    ProptestConfig::with_cases((cases / 16).max(8))
}

proptest! {
    #[test]
    fn fuzz_snapshot_reader(bytes in damaged(snapshot_stream())) {
        if let Ok(mut reader) = SnapshotReader::new(Cursor::new(&bytes)) {
            while let Ok(Some(_)) = reader.next_record() {}
        }
    }
}

proptest! {
    #![proptest_config(state_machine_cases())]

    #[test]
    fn fuzz_apply_then_snapshot(payloads in prop::collection::vec(payload(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::TempDir::new().unwrap();
            let mut sm = StateMachineStore::open(dir.path()).unwrap();
            let entries: Vec<Entry<coordinator::TypeConfig>> = payloads
                .into_iter()
                .zip(1..)
                .map(|(bytes, index)| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(CommandBytes(bytes)),
                })
                .collect();
            let count = entries.len();
            let applied = sm.apply(entries).await.expect("applying never fails");
            assert_eq!(applied.len(), count);
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("a snapshot of anything applied");
            let path = dir.path().join("snapshots").join(format!("{}.snap", snapshot.meta.snapshot_id));
            let bytes = std::fs::read(path).unwrap();
            let mut reader = SnapshotReader::new(Cursor::new(&bytes)).unwrap();
            while reader.next_record().unwrap().is_some() {}
        });
    }
}
