//! The transport over mutual-TLS QUIC (`proto_schema::quic`): one
//! endpoint presenting the client's certificate, a connection per
//! coordinator, the envelope as postcard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto_schema::coordinator_api::{self, Reply, Request};
use proto_schema::quic::{RpcClient, RpcConfig, RpcConnection, RpcError, resolve};
use proto_schema::tls::TlsIdentity;

use crate::client::ClientError;
use crate::transport::{Connection, Transport, TransportError};

/// A client waits longer than a replica: a write returns once applied,
/// which a busy cluster may take longer than the transport's default 10 s
/// for. But it gives up on a silent connection sooner: a coordinator
/// killed while answering a write sends nothing more, and the client
/// learns it only from the idle timeout (with the transport's 30 s,
/// `quern submit` sat 30 s after a SIGKILLed leader). Keep-alives, every
/// third of it, keep a live connection busy however long the write takes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn rpc_config() -> RpcConfig {
    RpcConfig {
        request_timeout: REQUEST_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        ..RpcConfig::default()
    }
}

#[derive(Clone)]
pub struct QuicTransport {
    client: Arc<RpcClient>,
}

impl QuicTransport {
    /// An endpoint presenting `identity`. Must be called inside a tokio
    /// runtime.
    pub fn new(identity: &TlsIdentity) -> Result<Self, RpcError> {
        let bind: SocketAddr = "0.0.0.0:0".parse().expect("valid address");
        let tls = identity
            .client_config()
            .map_err(|e| RpcError::Setup(e.to_string()))?;
        let client = RpcClient::new(bind, tls, rpc_config())?;
        Ok(Self {
            client: Arc::new(client),
        })
    }
}

impl Transport for QuicTransport {
    type Connection = QuicConnection;

    async fn connect(&self, address: &str) -> Result<QuicConnection, TransportError> {
        let (addr, name) = resolve(address).await.map_err(|e| {
            TransportError::NotSent(Box::new(ClientError::Unreachable {
                addresses: vec![address.to_owned()],
                last: e.to_string(),
            }))
        })?;
        let connection = self
            .client
            .connect(addr, &name)
            .await
            .map_err(|e| TransportError::NotSent(Box::new(e)))?;
        Ok(QuicConnection(connection))
    }
}

#[derive(Clone)]
pub struct QuicConnection(RpcConnection);

impl Connection for QuicConnection {
    async fn request(&self, request: &Request) -> Result<Reply, TransportError> {
        let bytes =
            coordinator_api::encode(request).map_err(|e| TransportError::NotSent(Box::new(e)))?;
        let reply = self.0.request(&bytes).await.map_err(|e| {
            if unsent(&e) {
                TransportError::NotSent(Box::new(e))
            } else {
                TransportError::Interrupted(Box::new(e))
            }
        })?;
        coordinator_api::decode(&reply).map_err(|e| TransportError::BadReply(Box::new(e)))
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Failures that prove the request was not served: the handshake did
/// not complete, or the request was refused whole.
fn unsent(error: &RpcError) -> bool {
    matches!(
        error,
        RpcError::Connect { .. }
            | RpcError::Handshake { .. }
            | RpcError::PeerRefused { .. }
            | RpcError::RefusedByPeer { .. }
            | RpcError::TooLarge { .. }
            | RpcError::Refused { .. }
    )
}
