//! The coordinator: the Raft-replicated control plane of a Quern cluster.
//!
//! openraft drives replication; this crate supplies what openraft leaves to
//! the application: a RocksDB log store, a RocksDB state machine (nodes,
//! datasets, jobs, the file catalogue, shards and their leases, the
//! partition map) with streamed snapshots, the leader-local lease table, the
//! RPC seam, Raft and the client API over mutual-TLS QUIC (`transport`,
//! `api`; Raft RPCs only from the peers' certificates, `raft_peers`), and a
//! replica as a running service (`service`). Commands themselves are the
//! rkyv types of `proto_schema::command`.

// openraft's traits fix the error types (`StorageError`, `RPCError`) that
// our implementations return; they are large, and not ours to box.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod app_data;
pub mod client;
pub mod config;
pub mod lease;
pub mod lease_desk;
pub mod log_store;
pub mod raft_peers;
mod rocks;
pub mod router;
pub mod rpc;
pub mod service;
pub mod state;
pub mod status;
pub mod transport;

pub use app_data::{Applied, CommandBytes};
pub use log_store::LogStore;
pub use state::StateMachineStore;

/// A coordinator replica's id in the Raft group.
pub type NodeId = u64;

/// The address a replica is reached at; the transport decides its meaning.
pub type Member = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The coordinator's Raft types: commands are validated rkyv bytes,
    /// snapshots are files streamed in chunks.
    pub TypeConfig:
        D = CommandBytes,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// A running coordinator replica.
pub type Raft = openraft::Raft<TypeConfig>;
