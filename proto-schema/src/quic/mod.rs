//! QUIC with mutual TLS between the cluster's processes: request/response
//! RPC, which the Raft RPCs and the client API ride on, and the shuffle's
//! data channel (`channel`). RPC payloads are opaque bytes; callers encode
//! their own messages. Every message is bounded by
//! [`RpcConfig::max_message`] (checked before anything is allocated), and
//! every wait by a timeout, so nothing hangs silently.
//!
//! - `server`: [`RpcServer`] accepts connections and answers each request
//!   with a [`Handler`].
//! - `client`: [`RpcClient`] dials servers; an [`RpcConnection`] sends
//!   requests, many at once if wanted.
//! - `wire`: the bytes of one exchange.
//! - `refusal`: failed handshakes, logged and counted.
//! - `handshakes`: the slots of connections still in their handshake,
//!   bounded apart, per source address and in all.
//! - `address`: `host:port` to a socket address and the name the
//!   server's certificate must carry.
//! - `endpoint`: what every endpoint shares: liveness settings, binding
//!   and dialling with mutual TLS, accepting, shutdown.
//! - `channel`: the shuffle's data channel, streams of record batches
//!   between nodes beside the RPC, with flow control bounded in bytes.

mod address;
pub mod channel;
mod client;
mod endpoint;
mod handshakes;
mod refusal;
mod server;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use address::{resolve, server_name};
pub use client::{RpcClient, RpcConnection};
pub use handshakes::CONNECTION_REFUSED_METRIC;
pub use refusal::PEER_REFUSED_METRIC;
pub use server::RpcServer;

use crate::tls::Fingerprint;

/// The largest request or response, unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE: u32 = 16 << 20;
/// How long a request may take, from sending to the whole response.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handshake may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection silent for this long is closed; keep-alives go out at a
/// third of it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one connection may have in flight at once; more wait for a turn.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 64;
/// Connections a server holds at once; more are refused.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Of those, connections still in their handshake (`handshakes`).
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Handshakes in progress from one source address.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 16;
/// How long a server's shutdown waits for its tasks before aborting them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a peer may send on one stream ahead of what we have read.
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
/// Bytes a peer may send on one connection, all streams together, ahead
/// of what we have read (quinn's own default is unbounded).
pub const DEFAULT_CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// Limits of an endpoint. A server holds at most `max_connections` ×
/// `max_concurrent_requests` requests of at most `max_message` bytes, and
/// QUIC buffers at most `connection_receive_window` unread bytes per
/// connection.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    pub max_message: u32,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_requests: u32,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    pub shutdown_timeout: Duration,
    /// QUIC flow control: what a peer may send unread, per stream and per
    /// connection.
    pub stream_receive_window: u32,
    pub connection_receive_window: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            connection_receive_window: DEFAULT_CONNECTION_RECEIVE_WINDOW,
        }
    }
}

impl RpcConfig {
    fn transport(&self) -> Result<Arc<quinn::TransportConfig>, RpcError> {
        let mut transport = endpoint::transport(self.idle_timeout)?;
        transport
            .max_concurrent_bidi_streams(self.max_concurrent_requests.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.connection_receive_window.into());
        Ok(Arc::new(transport))
    }
}

/// Who sent a request: the address it came from, and the fingerprint and
/// name ([`certificate_name`](crate::cert_name::certificate_name)) of the
/// certificate it presented (issued by the cluster CA, or the handshake
/// would have failed). Read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: SocketAddr,
    pub fingerprint: Fingerprint,
    pub name: Option<Arc<str>>,
}

/// Answers requests. The future may be dropped at an await point: when the
/// request times out, or the connection or the server closes.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Peer, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send,
{
    fn handle(&self, peer: Peer, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send {
        self(peer, request)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("setting up QUIC: {0}")]
    Setup(String),
    // Causes are fields named `error`, not `source`: they are part of
    // the message, and an error chain printed whole would repeat them.
    #[error("binding a QUIC endpoint on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot connect to {addr} as {server_name:?}: {error}")]
    Connect {
        addr: SocketAddr,
        server_name: String,
        error: quinn::ConnectError,
    },
    #[error("refused {addr}: its certificate is not from the cluster CA ({reason})")]
    PeerRefused { addr: SocketAddr, reason: String },
    #[error("{addr} refused our certificate: {reason}")]
    RefusedByPeer { addr: SocketAddr, reason: String },
    #[error("handshake with {addr} failed: {error}")]
    Handshake {
        addr: SocketAddr,
        error: quinn::ConnectionError,
    },
    #[error("connection to {addr} lost: {error}")]
    Connection {
        addr: SocketAddr,
        error: quinn::ConnectionError,
    },
    #[error("no {stage} from {addr} within {after:?}")]
    Timeout {
        addr: SocketAddr,
        stage: &'static str,
        after: Duration,
    },
    #[error("a {what} of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u32,
    },
    #[error("{addr} refused the request: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("request stream to {addr} failed: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("shutdown did not finish within {0:?}; remaining tasks were aborted")]
    ShutdownTimeout(Duration),
}
