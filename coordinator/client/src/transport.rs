//! How a request reaches a coordinator: the seam between the client's
//! logic (redirects, retries, the submission protocol) and the wire.
//! `QuicTransport` dials replicas over mutual-TLS QUIC; the coordinator
//! crate's in-process router hands requests straight to replicas in the
//! same process (tests, `quern dev`). Both carry the same envelope.

use std::future::Future;

use proto_schema::coordinator_api::{Reply, Request};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange failed, in the terms a retry needs: whether the
/// request may have been served.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Certainly not served: no connection, a refused handshake, or a
    /// request refused whole.
    #[error("{0}")]
    NotSent(BoxError),
    /// Failed once the request was out: it may have been served.
    #[error("{0}")]
    Interrupted(BoxError),
    /// An answer came, but not a valid `Reply`.
    #[error("undecodable reply from the coordinator: {0}")]
    BadReply(BoxError),
}

/// Opens connections to coordinator addresses (`host:port` for QUIC, a
/// member's address in the Raft membership).
pub trait Transport: Send + Sync + 'static {
    type Connection: Connection;

    fn connect(
        &self,
        address: &str,
    ) -> impl Future<Output = Result<Self::Connection, TransportError>> + Send;
}

/// A connection to one replica. Cheap to clone; clones share it, and
/// requests on it may run concurrently.
pub trait Connection: Clone + Send + Sync + 'static {
    fn request(
        &self,
        request: &Request,
    ) -> impl Future<Output = Result<Reply, TransportError>> + Send;

    /// Whether it is known to be dead (the next request would fail).
    fn is_closed(&self) -> bool;
}
