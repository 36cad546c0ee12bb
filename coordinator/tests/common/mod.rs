//! Commands and manifests shared by the cluster tests (in-process router
//! and QUIC).

use proto_schema::command::{Command, DatasetFormat, DatasetSpec, FileEntry, KeySpec, NodeInfo};
use proto_schema::ids::NodeId;

pub fn node(id: u64) -> Command {
    Command::RegisterNode(NodeInfo {
        id: NodeId(id),
        incarnation: 1,
        address: format!("10.0.0.{id}:7000"),
        cert_fingerprint: [id as u8; 32],
    })
}

pub fn dataset(name: &str) -> Command {
    Command::CreateDataset(DatasetSpec {
        name: name.into(),
        format: DatasetFormat::Lines,
        key: KeySpec::WholeLine,
        partitions: 64,
    })
}

/// `n` files in path order, as `quern submit` sends a manifest.
pub fn files(n: usize) -> Vec<FileEntry> {
    (0..n)
        .map(|i| FileEntry {
            path: format!("/srv/logs/{:02}/{i:06}.log", i / 1000),
            size: 1000 + i as u64,
            mtime_ns: i as i64,
            checksum: Some(vec![i as u8; 16]),
        })
        .collect()
}
