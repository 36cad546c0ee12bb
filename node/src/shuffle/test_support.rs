//! Fixtures of the shuffle's tests: nodes with certificates from one
//! cluster CA, each with a data-channel endpoint over loopback, and lanes
//! whose receiver the test holds.

use std::net::SocketAddr;

use proto_schema::ca::ClusterCa;
use proto_schema::quic::channel::{ChannelConfig, ChannelEndpoint, Link};
use proto_schema::shuffle::PartitionRange;
use proto_schema::tls::TlsIdentity;
use proto_schema::{Position, Record, RecordBatch};
use tokio::sync::mpsc;

use super::inbound::{Inbound, InboundLane, node_certificate_name};
use crate::actors::messages::SortMergeMsg;
use crate::edge::{Edge, EdgeTarget, ReceiverGone};
use proto_schema::NodeId;

/// A lane's input that the test reads: messages (and their credits) stay
/// held until the test drops them.
pub struct HeldLane(pub mpsc::UnboundedSender<SortMergeMsg>);

impl EdgeTarget<SortMergeMsg> for HeldLane {
    fn deliver(&self, message: SortMergeMsg) -> Result<(), ReceiverGone> {
        self.0.send(message).map_err(|_| ReceiverGone)
    }
}

pub struct Cluster {
    ca: ClusterCa,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            ca: ClusterCa::generate(1).unwrap(),
        }
    }

    pub fn identity(&self, name: &str) -> TlsIdentity {
        let issued = self.ca.issue(name, &["127.0.0.1".into()], 1).unwrap();
        TlsIdentity::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }

    /// Node `id`'s endpoint, taking streams into `inbound`.
    pub fn node(&self, id: u64, config: ChannelConfig, inbound: Inbound) -> ChannelEndpoint {
        let name = node_certificate_name(NodeId(id));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        ChannelEndpoint::bind(any, &self.identity(&name), config, inbound).unwrap()
    }
}

/// A link from `from` to node `to`.
pub async fn link(from: &ChannelEndpoint, to: &ChannelEndpoint, id: u64) -> Link {
    from.connect(to.local_addr(), &node_certificate_name(NodeId(id)))
        .await
        .unwrap()
}

/// A lane of `partitions` whose edge holds `capacity` bytes, and the
/// receiving end the test reads.
pub fn held_lane(
    partitions: PartitionRange,
    capacity: u64,
) -> (InboundLane, mpsc::UnboundedReceiver<SortMergeMsg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let edge = Edge::new(
        format!("test-lane-{partitions}"),
        HeldLane(tx),
        capacity,
        64,
    );
    (InboundLane { partitions, edge }, rx)
}

/// `records` records spread over `partitions`, keys naming `tag`.
pub fn batch(tag: u32, records: usize, partitions: PartitionRange) -> RecordBatch {
    let width = u32::from(partitions.end.get() - partitions.start.get());
    let mut batch = RecordBatch::new();
    for i in 0..records {
        let key = format!("{tag:06}-{i:06}-some-key-bytes-to-carry");
        batch.push(Record {
            partition: partitions.start.get() + (i as u32 % width) as u16,
            key: key.as_bytes(),
            value: b"",
            position: Position {
                file: tag,
                offset: i as u64,
            },
        });
    }
    batch
}

/// Windows small enough that a test fills them quickly.
pub fn small_windows() -> ChannelConfig {
    ChannelConfig {
        receive_budget: 256 << 10,
        send_budget: 256 << 10,
        min_link_window: 64 << 10,
        stream_window: 128 << 10,
        ..ChannelConfig::default()
    }
}
