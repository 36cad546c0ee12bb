//! The protocol shared by every Quern process: record batches, the framing
//! that carries them through spill files, the partition function every node
//! must agree on, the coordinator's replicated commands and its API's
//! envelope (requests, replies, status and lease reports), the shuffle's
//! stream protocol, and the cluster's transport: mutual TLS from a cluster
//! CA, request/response RPC over QUIC, and the shuffle's data channel.
//!
//! Everything here treats bytes from outside as hostile: decoding checks the
//! frame header, the checksum, rkyv's structural validation and the batch's
//! own invariants before anything is read in place; the transport checks a
//! message's length against its limit before allocating, and accepts only
//! peers whose certificate the cluster CA issued.

pub mod batch;
pub mod ca;
pub mod cert_expiry;
pub mod cert_name;
pub mod cert_role;
pub mod command;
pub mod coordinator_api;
pub mod frame;
pub mod hex;
pub mod ids;
pub mod log_limit;
pub mod partition;
pub mod partition_map;
pub mod quic;
pub mod read;
pub mod shuffle;
pub mod tls;
pub mod varint;

pub use batch::{
    BatchShape, BatchView, FileRepeats, Position, Record, RecordBatch, RunTrailer, ValidBatch,
};
pub use frame::{Frame, FrameError, FrameHeader, FrameKind, FrameReader, write_frame};
pub use ids::{DatasetId, Epoch, JobId, NodeId, PartitionId, ShardId};
pub use partition::{key_hash, partition_of, partition_of_hash};
pub use partition_map::{PartitionMap, PartitionRange};
