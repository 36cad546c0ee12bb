//! The coordinator: the Raft-replicated control plane of a Quern cluster,
//! the server side only (clients use the `coordinator-client` crate).
//!
//! openraft drives replication; this crate supplies what openraft leaves to
//! the application: a RocksDB log store, a RocksDB state machine (nodes,
//! datasets, jobs, the file catalogue, shards and their leases, the
//! partition map) with streamed snapshots, the leader-local lease table and
//! desk (and its clock of job progress, `job_progress`), the client API a replica serves (`client_api`), Raft between
//! replicas over mutual-TLS QUIC (`transport`; Raft RPCs only from the
//! peers' certificates, `raft_peers`) or in process (`router`), and a
//! replica as a running service (`service`). Commands and the API's
//! envelope are the types of `proto_schema::command` and
//! `proto_schema::coordinator_api`.

// openraft's traits fix the error types (`StorageError`, `RPCError`) that
// our implementations return; they are large, and not ours to box.
#![allow(clippy::result_large_err)]

pub mod authorize;
pub mod client_api;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod embedded;
pub mod job_progress;
pub mod lease;
pub mod lease_desk;
pub mod liveness;
pub mod log_store;
pub mod propose;
pub mod raft_metrics;
pub mod raft_peers;
mod rocks;
pub mod router;
pub mod rpc;
pub mod service;
pub mod state;
pub mod state_reads;
pub mod status;
pub mod transport;

pub use log_store::LogStore;
pub use proto_schema::coordinator_api::{Applied, CommandBytes};
pub use state::StateMachineStore;

/// The name of every metric a coordinator records (besides the process,
/// memory and data directory gauges it shares with nodes, in
/// `node::metric_catalog`).
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    [
        lease_desk::LEASE_GRANTS_METRIC,
        lease_desk::LEASE_RENEWALS_METRIC,
        lease_desk::HEARTBEATS_METRIC,
        lease_desk::NODES_LOST_METRIC,
        lease_desk::JOB_RESTARTS_METRIC,
        lease_desk::JOB_RECOVERIES_METRIC,
        authorize::REQUEST_REFUSED_METRIC,
        state_reads::STATE_READS_REFUSED_METRIC,
        raft_peers::RAFT_RPC_REFUSED_METRIC,
        proto_schema::quic::PEER_REFUSED_METRIC,
        proto_schema::quic::CONNECTION_REFUSED_METRIC,
        proto_schema::cert_expiry::CERT_EXPIRY_METRIC,
    ]
    .into_iter()
    .chain(raft_metrics::METRICS)
    .chain(job_progress::METRICS)
}

/// A coordinator replica's id in the Raft group (never a `NodeId`: nodes
/// are the cluster's workers, replicas its coordinators).
pub use proto_schema::coordinator_api::ReplicaId;

/// The address a replica is reached at; the transport decides its meaning.
pub type Member = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The coordinator's Raft types: commands are validated rkyv bytes,
    /// snapshots are files streamed in chunks.
    pub TypeConfig:
        D = CommandBytes,
        R = Applied,
        NodeId = ReplicaId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// A running coordinator replica.
pub type Raft = openraft::Raft<TypeConfig>;
