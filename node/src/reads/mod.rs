//! Cluster reads: `quern export`, `get` and `stats` given coordinators
//! read every node's store over the nodes' data channels
//! (`proto_schema::read`, a stream kind beside the shuffle's).
//!
//! - `service`: [`ReadService`], a node's side: a read stream answered
//!   from its store.
//! - `remote`: [`ClusterReader`], a client's side: every node read and
//!   the answers put together as one store's.
//!
//! [`NodeStreams`] is what a node's data channel serves: its peers'
//! shuffle streams into its [`Inbound`], and read streams from its store.

pub mod remote;
pub mod service;

pub use remote::{ClusterReader, ReadError};
pub use service::ReadService;

use proto_schema::quic::Peer;
use proto_schema::quic::channel::{ReadOutput, StreamHandler};
use proto_schema::read::ReadRequest;
use proto_schema::shuffle::{Refusal, StreamHeader};

use crate::shuffle::Inbound;
use crate::shuffle::inbound::LaneSink;

/// A node's data channel: shuffle streams to `inbound`, reads to `reads`.
#[derive(Clone)]
pub struct NodeStreams {
    pub inbound: Inbound,
    pub reads: ReadService,
}

impl StreamHandler for NodeStreams {
    type Sink = LaneSink;

    async fn open(&self, peer: &Peer, header: &StreamHeader) -> Result<LaneSink, Refusal> {
        self.inbound.open(peer, header).await
    }

    async fn read(&self, peer: &Peer, request: ReadRequest, out: ReadOutput) {
        self.reads.serve(peer, request, out).await;
    }
}
