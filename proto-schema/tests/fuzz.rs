//! Fuzz targets for what this crate decodes from outside, as property
//! tests: the client API's envelope, commands, and frames with the record
//! batches in them. Each input is arbitrary bytes or a valid encoding
//! damaged (bytes flipped, cut short, extended), and each decoder must
//! answer with a value or an error, never a panic; what decodes must
//! re-encode to itself.
//!
//! `cargo test` runs each for proptest's default 256 cases (the smoke
//! run); a longer run on demand:
//! `PROPTEST_CASES=200000 cargo test --release -p proto-schema --test fuzz`.

use std::io::Cursor;

use proptest::prelude::*;
use proto_schema::command::{
    Command, DatasetFormat, DatasetSpec, FileEntry, KeySpec, LeaseGrant, NodeInfo,
};
use proto_schema::coordinator_api::{self, Applied, CommandBytes, RaftMessage, Reply, Request};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};
use proto_schema::partition_map::PartitionMap;
use proto_schema::{
    FrameKind, FrameReader, Position, Record, RecordBatch, ValidBatch, write_frame,
};

#[path = "support/damaged.rs"]
mod damaged;
use damaged::damaged;

fn file_entry() -> impl Strategy<Value = FileEntry> {
    (
        ".{0,40}",
        any::<u64>(),
        any::<i64>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
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
        (any::<u64>(), ".{0,30}").prop_map(|(id, address)| Command::RegisterNode(NodeInfo {
            id: id.into(),
            incarnation: 1,
            address,
            cert_fingerprint: [7; 32],
        })),
        (".{0,30}", ".{0,30}").prop_map(|(name, pointer)| {
            Command::CreateDataset(DatasetSpec {
                name,
                format: DatasetFormat::Jsonl,
                key: KeySpec::JsonPointer(pointer),
                partitions: 64,
            })
        }),
        (
            ".{0,30}",
            any::<u64>(),
            prop::collection::vec(file_entry(), 0..8)
        )
            .prop_map(|(dataset, submission, files)| Command::SubmitChunk {
                dataset,
                submission: submission.into(),
                first_file: 0,
                files,
            }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(shard, node, expected_epoch, deadline_ms)| Command::GrantLeases {
                node: node.into(),
                shards: vec![LeaseGrant {
                    shard: shard.into(),
                    expected_epoch: expected_epoch.into(),
                }],
                deadline_ms,
            }
        ),
        (
            ".{0,30}",
            1u16..1000,
            prop::collection::vec(any::<u64>().prop_map(NodeId), 1..8)
        )
            .prop_map(|(dataset, partitions, nodes)| Command::AssignPartitions {
                dataset,
                map: PartitionMap::split(partitions, &nodes, Epoch(1)),
            }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        command().prop_map(|cmd| Request::Write(CommandBytes::encode(&cmd))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Request::Raft(RaftMessage(b))),
        Just(Request::Status),
        Just(Request::Replica),
        (any::<u64>(), any::<u32>()).prop_map(|(node, max)| Request::Lease {
            node: NodeId(node),
            max,
            job: None,
            map_epoch: None,
        }),
        (
            any::<u64>(),
            prop::collection::vec((any::<u64>(), any::<u64>()), 0..8)
        )
            .prop_map(|(node, shards)| Request::Complete {
                node: NodeId(node),
                shards: shards
                    .into_iter()
                    .map(|(shard, epoch)| (ShardId(shard), Epoch(epoch)))
                    .collect(),
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(node, shard, epoch)| {
            Request::Renew {
                node: NodeId(node),
                shard: ShardId(shard),
                epoch: Epoch(epoch),
            }
        }),
    ]
}

fn batch() -> impl Strategy<Value = RecordBatch> {
    prop::collection::vec(
        (
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..12),
            prop::collection::vec(any::<u8>(), 0..12),
            any::<u32>(),
            any::<u64>(),
        ),
        0..12,
    )
    .prop_map(|records| {
        let mut batch = RecordBatch::new();
        for (partition, key, value, file, offset) in &records {
            batch.push(Record {
                partition: *partition,
                key,
                value,
                position: Position {
                    file: *file,
                    offset: *offset,
                },
            });
        }
        batch
    })
}

/// Every record of a batch that passed validation, read in place.
fn read_all(batch: &ValidBatch) -> RecordBatch {
    batch.to_owned_batch()
}

proptest! {
    #[test]
    fn fuzz_client_request_decoding(bytes in damaged(request().prop_map(|r| coordinator_api::encode(&r).unwrap()))) {
        if let Ok(request) = coordinator_api::decode::<Request>(&bytes) {
            if let Request::Write(command) = &request
                && let Ok(cmd) = command.decode()
            {
                let _ = cmd.check_bounds();
            }
            let again = coordinator_api::encode(&request).unwrap();
            let back = coordinator_api::decode::<Request>(&again).unwrap();
            prop_assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }
        let _ = coordinator_api::decode::<Reply>(&bytes);
    }

    #[test]
    fn fuzz_reply_decoding(bytes in damaged(command().prop_map(|cmd| {
        // A written reply carries a response's rkyv bytes: damage both.
        let response = proto_schema::command::Response::SubmissionBegun { submission: JobId(cmd.to_bytes().len() as u64) };
        coordinator_api::encode(&Reply::Written(Applied(response))).unwrap()
    }))) {
        let _ = coordinator_api::decode::<Reply>(&bytes);
    }

    #[test]
    fn fuzz_command_from_bytes(bytes in damaged(command().prop_map(|c| c.to_bytes().to_vec()))) {
        if let Ok(cmd) = Command::from_bytes(&bytes) {
            let _ = cmd.check_bounds();
            prop_assert_eq!(Command::from_bytes(&cmd.to_bytes()).unwrap(), cmd);
        }
    }

    /// A stream of frames damaged anywhere: the reader stops with an error
    /// naming an offset, or reads frames whose payloads then validate or
    /// not.
    #[test]
    fn fuzz_frame_reader(bytes in damaged(prop::collection::vec(batch(), 1..4).prop_map(|batches| {
        let mut out = Vec::new();
        for batch in batches {
            write_frame(&mut out, FrameKind::RecordBatch, &batch.to_archive()).unwrap();
        }
        out
    }))) {
        let mut reader = FrameReader::new(Cursor::new(&bytes), 1 << 20);
        while let Ok(Some(frame)) = reader.next_frame() {
            if let Ok(batch) = frame.into_batch() {
                read_all(&batch);
            }
        }
    }

    /// A damaged batch in a frame with a valid checksum: only the batch's
    /// own validation stands between the bytes and reading them in place.
    #[test]
    fn fuzz_batch_validation(payload in damaged(batch().prop_map(|b| b.to_archive().to_vec()))) {
        let mut framed = Vec::new();
        write_frame(&mut framed, FrameKind::RecordBatch, &payload).unwrap();
        let frame = FrameReader::new(Cursor::new(&framed), 1 << 20).next_frame().unwrap().unwrap();
        if let Ok(batch) = frame.into_batch() {
            let owned = read_all(&batch);
            let again = ValidBatch::new(owned.to_archive()).unwrap();
            prop_assert_eq!(read_all(&again), owned);
        }
    }
}
