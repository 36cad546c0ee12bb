//! The shuffle's data channel: long streams of record batches from a node
//! to the owners of its records' partitions, beside the request/response
//! RPC (which holds a whole message in memory and gives it 10 s; a stream
//! here may carry gigabytes and wait on a busy owner for a while).
//!
//! A node has one [`ChannelEndpoint`]: it listens for its peers' streams
//! and dials its own [`Link`]s, one connection per peer. Each (job,
//! partition range) is one bidirectional stream: the frames of
//! [`crate::shuffle`] one way (header, batches, end), the owner's one
//! [`StreamReply`](crate::shuffle::StreamReply) the other.
//!
//! Back-pressure, bounded in bytes all the way:
//! - the owner reads a batch frame's payload only once its pipeline has
//!   room for it ([`BatchSink::reserve`]); until then the stream's receive
//!   window stays shut, so the sender's writes wait ([`BatchStream::send`]),
//!   and whatever feeds the sender waits behind it;
//! - the windows are not quinn's defaults (an unbounded connection window):
//!   a node's receive and send budgets ([`ChannelConfig`]) are shared by
//!   its links, each getting budget / links (counting the peers it expects,
//!   [`ChannelEndpoint::expect_links`]) and never less than
//!   [`ChannelConfig::min_link_window`] (`windows`), so its memory does not
//!   grow with the number of peers.
//!
//! Every wait is bounded by a named timeout: a silent peer (killed, paused,
//! cut off) is lost within the idle timeout, a frame no one takes within
//! the stall timeout fails its stream, a stream must name its job within
//! the header timeout, and the owner's reply must come within the reply
//! timeout of the stream's end.
//!
//! A stream whose first frame is a `ReadRequest` is a read stream instead
//! (`crate::read`): a client reading a node's store, answered by the
//! handler's [`StreamHandler::read`] through a [`ReadOutput`]. Which
//! certificates may read is the handler's to decide; a shuffle stream is
//! taken only from the node its header names, so a client's certificate
//! can read but never send records.
//!
//! - `sender`: [`Link`] and [`BatchStream`].
//! - `receiver`: serving streams to a [`StreamHandler`].
//! - `reads`: [`ReadOutput`] (the node's side of a read stream) and
//!   [`ReadStream`] (the client's).
//! - `frames`: reading one frame from a stream.
//! - `windows`: the budgets divided among live links.

mod frames;
mod reads;
mod receiver;
mod sender;
mod windows;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use tokio::task::JoinHandle;

pub use reads::{ReadOutput, ReadStream};
pub use receiver::{BatchSink, StreamHandler};
pub use sender::{BatchStream, Link, Receipt};

use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT, RpcError};
use super::{endpoint, refusal};
use crate::shuffle::Refusal;
use crate::tls::TlsIdentity;
use windows::LinkWindows;

/// Bytes of stream data a node's links may hold unread, all together.
pub const DEFAULT_RECEIVE_BUDGET: u64 = 8 << 20;
/// Bytes written and not yet acknowledged a node's links may hold, all
/// together.
pub const DEFAULT_SEND_BUDGET: u64 = 8 << 20;
/// The smallest window a link gets, however many there are.
pub const DEFAULT_MIN_LINK_WINDOW: u64 = 256 << 10;
/// One stream's receive window.
pub const DEFAULT_STREAM_WINDOW: u64 = 1 << 20;
/// The largest frame payload (a record batch's archive).
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Streams one peer may have open on its link at once.
pub const DEFAULT_MAX_STREAMS_PER_LINK: u32 = 64;
/// A silent link is lost after this long (keep-alives at a third of it).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream must send its header within this long of opening.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame the peer does not take within this long fails its stream, and
/// an owner whose pipeline takes nothing for this long refuses it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The owner's reply must come within this long of the stream's end.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes sent on a link's streams (label `link`: the peer's certificate
/// name).
pub const SENT_BYTES_METRIC: &str = "quern_shuffle_sent_bytes_total";
/// Bytes received on a link's streams (label `link`).
pub const RECEIVED_BYTES_METRIC: &str = "quern_shuffle_received_bytes_total";
/// Seconds senders waited for the peer to take their frames (label `link`).
pub const SEND_BLOCKED_METRIC: &str = "quern_shuffle_send_blocked_seconds";
/// Seconds receivers waited for room in the owner's pipeline, the stream
/// unread meanwhile (label `link`).
pub const RECEIVE_BLOCKED_METRIC: &str = "quern_shuffle_receive_blocked_seconds";
/// Streams an owner refused (label `reason`: `Refusal::label`).
pub const REFUSED_METRIC: &str = "quern_shuffle_refused_total";
/// Streams an owner served, by outcome (`accepted`, `refused`,
/// `abandoned`: the sender or the connection went away mid-stream).
pub const STREAMS_METRIC: &str = "quern_shuffle_streams_total";
/// Read streams a node served, by outcome (`complete`, `failed`: refused
/// or cut short with a reason, `abandoned`: dropped without an end).
pub const READ_STREAMS_METRIC: &str = "quern_read_streams_total";
/// Live links of this node's endpoint.
pub const LINKS_METRIC: &str = "quern_shuffle_links";
/// The receive window each live link gets now.
pub const LINK_WINDOW_METRIC: &str = "quern_shuffle_link_window_bytes";

/// An endpoint's limits. The budgets are the node's to set from its memory
/// budget; the defaults suit tests.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub receive_budget: u64,
    pub send_budget: u64,
    pub min_link_window: u64,
    pub stream_window: u64,
    pub max_frame: u32,
    pub max_streams_per_link: u32,
    /// Links peers may open to the endpoint at once (more are refused);
    /// its own dials are refused once its links, both ways, reach it.
    pub max_links: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub stall_timeout: Duration,
    pub reply_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            receive_budget: DEFAULT_RECEIVE_BUDGET,
            send_budget: DEFAULT_SEND_BUDGET,
            min_link_window: DEFAULT_MIN_LINK_WINDOW,
            stream_window: DEFAULT_STREAM_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
            max_streams_per_link: DEFAULT_MAX_STREAMS_PER_LINK,
            max_links: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl ChannelConfig {
    /// The transport every link starts with: the smallest windows, which
    /// `windows` raises to the link's share of the budgets once it is
    /// live (starting with a whole budget would let each new peer take it
    /// before the shares are set).
    fn transport(&self) -> Result<Arc<quinn::TransportConfig>, RpcError> {
        let mut transport = endpoint::transport(self.idle_timeout)?;
        transport
            .max_concurrent_bidi_streams(self.max_streams_per_link.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(windows::varint(self.stream_window)?)
            .receive_window(windows::varint(self.min_link_window)?)
            .send_window(self.min_link_window);
        Ok(Arc::new(transport))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Transport(#[from] RpcError),
    #[error("{peer} refused the stream: {refusal}")]
    Refused { peer: String, refusal: Refusal },
    #[error("{peer} took no frame for {after:?} (the stall timeout); the stream is abandoned")]
    Stalled { peer: String, after: Duration },
    #[error("no reply from {peer} within {after:?} of the stream's end (the reply timeout)")]
    NoReply { peer: String, after: Duration },
    #[error("a batch of {len} bytes is over the frame limit of {max} bytes")]
    TooLarge { len: usize, max: u32 },
    #[error("stream to {peer} failed: {reason}")]
    Stream { peer: String, reason: String },
}

/// A node's data-channel endpoint: it serves its peers' streams to a
/// [`StreamHandler`] and dials [`Link`]s to them. Stop it with
/// [`shutdown`](Self::shutdown); dropping it closes it without waiting.
pub struct ChannelEndpoint {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    config: Arc<ChannelConfig>,
    windows: Arc<LinkWindows>,
    accept_task: Option<JoinHandle<()>>,
}

impl ChannelEndpoint {
    /// Listens on `addr` (port 0 picks one) with `identity`, which it also
    /// presents when it dials. Must be called inside a tokio runtime.
    pub fn bind<H: StreamHandler>(
        addr: SocketAddr,
        identity: &TlsIdentity,
        config: ChannelConfig,
        handler: H,
    ) -> Result<Self, RpcError> {
        let setup = |e: crate::tls::TlsError| RpcError::Setup(e.to_string());
        let transport = config.transport()?;
        let server_tls = identity.server_config().map_err(setup)?;
        let client_tls = identity.client_config().map_err(setup)?;
        let (mut endpoint, local_addr) = endpoint::listen(addr, server_tls, transport.clone())?;
        endpoint.set_default_client_config(endpoint::client_config(client_tls, transport)?);
        let config = Arc::new(config);
        let windows = Arc::new(LinkWindows::new(&config));
        let accept_task = tokio::spawn(receiver::serve(
            endpoint.clone(),
            config.clone(),
            windows.clone(),
            Arc::new(handler),
        ));
        tracing::debug!(%local_addr, "data channel listening");
        Ok(Self {
            endpoint,
            local_addr,
            config,
            windows,
            accept_task: Some(accept_task),
        })
    }

    /// An endpoint that only dials (a client reading nodes' stores),
    /// presenting `identity`; it takes no streams. Must be called inside a
    /// tokio runtime.
    pub fn dial_only(identity: &TlsIdentity, config: ChannelConfig) -> Result<Self, RpcError> {
        let setup = |e: crate::tls::TlsError| RpcError::Setup(e.to_string());
        let transport = config.transport()?;
        let client_tls = identity.client_config().map_err(setup)?;
        let bind: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
        let bind = Endpoint::client(bind).map(|e| (e, bind)).or_else(|_| {
            let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
            Endpoint::client(v4).map(|e| (e, v4))
        });
        let (mut endpoint, addr) = bind.map_err(|error| RpcError::Bind {
            addr: (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            error,
        })?;
        endpoint.set_default_client_config(endpoint::client_config(client_tls, transport)?);
        let local_addr = endpoint.local_addr().unwrap_or(addr);
        let config = Arc::new(config);
        Ok(Self {
            windows: Arc::new(LinkWindows::new(&config)),
            endpoint,
            local_addr,
            config,
            accept_task: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A link to the peer at `addr`, whose certificate must be issued by
    /// the cluster CA and name `server_name`.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Link, ChannelError> {
        if self.windows.live() >= self.config.max_links {
            return Err(ChannelError::Stream {
                peer: addr.to_string(),
                reason: format!("at the limit of {} links", self.config.max_links),
            });
        }
        let connection = endpoint::dial(
            &self.endpoint,
            addr,
            server_name,
            self.config.connect_timeout,
        )
        .await?;
        Ok(Link::new(
            connection,
            addr,
            self.config.clone(),
            &self.windows,
        ))
    }

    /// Live links, both ways.
    pub fn links(&self) -> usize {
        self.windows.live()
    }

    /// Divides the windows' budgets among at least `links` links (the
    /// node's peers), so that they do not shrink as those peers connect.
    pub fn expect_links(&self, links: usize) {
        self.windows.expect(links);
    }

    /// The receive window each live link gets now.
    pub fn link_window(&self) -> u64 {
        self.windows.receive_per_link()
    }

    /// Closes every link (streams in flight fail) and joins the serving
    /// tasks within the shutdown timeout.
    pub async fn shutdown(mut self) -> Result<(), RpcError> {
        let task = match self.accept_task.take() {
            Some(task) => task,
            // A dial-only endpoint: nothing serves, its links close.
            None => tokio::spawn(async {}),
        };
        endpoint::shut_down(&self.endpoint, task, self.config.shutdown_timeout).await
    }
}

impl Drop for ChannelEndpoint {
    fn drop(&mut self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(endpoint::CLOSE_SHUTDOWN),
            b"shutting down",
        );
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

/// The name a link is known by in metrics and errors: the peer's
/// certificate name, else its address.
fn link_name(connection: &quinn::Connection, addr: SocketAddr) -> Arc<str> {
    endpoint::peer_certificate(connection)
        .and_then(|cert| crate::cert_name::certificate_name(&cert))
        .map_or_else(|| Arc::from(addr.to_string()), Arc::from)
}

/// A lost connection as the error the caller sees (a refusal of our
/// certificate is named as such).
fn connection_lost(addr: SocketAddr, error: quinn::ConnectionError) -> ChannelError {
    ChannelError::Transport(refusal::connection_lost(addr, error))
}
