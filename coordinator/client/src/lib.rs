//! The one client of Quern's coordinators, for the CLI, nodes, tests and
//! any other front end.
//!
//! - `client`: `CoordinatorClient`, the connection: redirects to the
//!   leader, retries over addresses within a window, `Ambiguous` for a
//!   write that may or may not have been applied; `pipeline`: writes with
//!   a window in flight.
//! - `transport`: the seam a request crosses (`Transport`, `Connection`);
//!   `quic`: its mutual-TLS QUIC implementation. The coordinator crate's
//!   in-process router is the other, so tests run this same code.
//! - `submission`: the manifest submission protocol; `chunks` cuts what
//!   it sends; `by_digest`: a re-submission's ranges sent as digests; `inventory` reads what it sends (`manifest`: manifest
//!   files and directory walks; `path_order`: the bounded-memory sort
//!   into path order; `read_ahead`: parsing on a thread of its own).
//! - `leases`: a node's calls for its work; `replicas`: every replica's
//!   own view, and whether they agree; `job_wait`: following a job to its
//!   commit (or abort), within a timeout.
//!
//! Deliberately absent: openraft and RocksDB (the server's), and any
//! printing: progress comes back as events and counts.

pub mod by_digest;
pub mod chunks;
pub mod client;
pub mod inventory;
pub mod job_wait;
pub mod leases;
pub mod manifest;
pub mod path_order;
pub mod pipeline;
pub mod quic;
pub mod read_ahead;
pub mod replicas;
pub mod submission;
pub mod transport;

pub use chunks::InventoryChunks;
pub use client::{ClientError, CoordinatorClient, DEFAULT_RETRY_WINDOW};
pub use quic::QuicTransport;
pub use transport::{Connection, Transport, TransportError};
