//! The serving side: one task accepts connections, one task per
//! connection accepts its streams, one task per stream reads a request,
//! runs the handler and writes the response. Each task owns its children
//! in a `JoinSet`, so a closed connection takes its requests with it and
//! shutdown can join everything.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use super::endpoint::{self, AcceptLimits, CLOSE_SHUTDOWN, Slot};
use super::{Handler, Peer, RpcConfig, RpcError, wire};

/// Stream codes: the request was over the size limit; it took too long.
const STOP_TOO_LARGE: u32 = 1;
const RESET_TIMEOUT: u32 = 2;

/// A listening endpoint. Stop it with [`shutdown`](Self::shutdown);
/// dropping it closes the endpoint and aborts its tasks without waiting.
pub struct RpcServer {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    accept_task: Option<JoinHandle<()>>,
    shutdown_timeout: std::time::Duration,
}

struct Shared<H> {
    handler: H,
    config: RpcConfig,
}

impl RpcServer {
    /// Listens on `addr` (port 0 picks one) and serves requests with
    /// `handler`. `tls` should come from
    /// [`TlsIdentity::server_config`](crate::tls::TlsIdentity::server_config).
    /// Must be called inside a tokio runtime.
    pub fn bind<H: Handler>(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        config: RpcConfig,
        handler: H,
    ) -> Result<Self, RpcError> {
        let (endpoint, local_addr) = endpoint::listen(addr, tls, config.transport()?)?;
        let shutdown_timeout = config.shutdown_timeout;
        let shared = Arc::new(Shared { handler, config });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared));
        tracing::debug!(%local_addr, "RPC server listening");
        Ok(Self {
            endpoint,
            local_addr,
            accept_task: Some(accept_task),
            shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (requests in flight are
    /// dropped) and joins all tasks. If they have not ended within the
    /// shutdown timeout they are aborted and an error says so.
    pub async fn shutdown(mut self) -> Result<(), RpcError> {
        let task = self.accept_task.take().expect("taken only here");
        endpoint::shut_down(&self.endpoint, task, self.shutdown_timeout).await
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            self.endpoint
                .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
            task.abort();
        }
    }
}

async fn accept_loop<H: Handler>(endpoint: Endpoint, shared: Arc<Shared<H>>) {
    let config = &shared.config;
    let limits = AcceptLimits {
        max_connections: config.max_connections,
        max_handshakes: config.max_handshakes,
        max_handshakes_per_address: config.max_handshakes_per_address,
    };
    endpoint::accept_loop(endpoint, limits, |incoming, slot| {
        serve_connection(incoming, slot, shared.clone())
    })
    .await;
}

async fn serve_connection<H: Handler>(incoming: Incoming, slot: Slot, shared: Arc<Shared<H>>) {
    let Some((connection, peer)) =
        endpoint::handshake(incoming, slot, shared.config.connect_timeout).await
    else {
        return;
    };
    let addr = peer.address;
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    requests.spawn(serve_request(send, recv, peer.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::debug!(remote = %addr, error = %e, "connection ended");
                    break;
                }
            },
            Some(done) = requests.join_next(), if !requests.is_empty() => {
                if done.is_err_and(|e| e.is_panic()) {
                    // The stream ends without a response; the client's
                    // request fails at once.
                    tracing::warn!(remote = %addr, "a request handler panicked");
                }
            }
        }
    }
    // Nothing can answer on a closed connection: drop what is in flight.
    requests.shutdown().await;
}

async fn serve_request<H: Handler>(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: Peer,
    shared: Arc<Shared<H>>,
) {
    let limit = shared.config.request_timeout;
    let remote = peer.address;
    match timeout(limit, exchange(&mut send, &mut recv, peer, &shared)).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            tracing::debug!(%remote, %reason, "request stream failed");
        }
        Err(_) => {
            tracing::warn!(%remote, after = ?limit, "request not answered in time; stream reset");
            let _ = send.reset(VarInt::from_u32(RESET_TIMEOUT));
        }
    }
}

async fn exchange<H: Handler>(
    send: &mut SendStream,
    recv: &mut RecvStream,
    peer: Peer,
    shared: &Shared<H>,
) -> Result<(), String> {
    let max = shared.config.max_message;
    let len = wire::read_request_len(recv)
        .await
        .map_err(|e| e.to_string())?;
    if len > max {
        let error = RpcError::TooLarge {
            what: "request",
            len: len.into(),
            max,
        };
        tracing::warn!(remote = %peer.address, %error, "refused a request");
        let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
        return refuse(send, &error.to_string()).await;
    }
    let request = wire::read_payload(recv, len)
        .await
        .map_err(|e| e.to_string())?;
    let remote = peer.address;
    let response = shared.handler.handle(peer, request).await;
    if response.len() > max as usize {
        let error = RpcError::TooLarge {
            what: "response",
            len: response.len() as u64,
            max,
        };
        tracing::warn!(%remote, %error, "the handler's answer is too large");
        return refuse(send, &error.to_string()).await;
    }
    wire::write_response(send, wire::STATUS_OK, &response)
        .await
        .map_err(|e| e.to_string())
}

async fn refuse(send: &mut SendStream, reason: &str) -> Result<(), String> {
    wire::write_response(send, wire::STATUS_REFUSED, reason.as_bytes())
        .await
        .map_err(|e| e.to_string())
}
