//! The serving side: one task accepts connections, one task per
//! connection accepts its streams, one task per stream reads a request,
//! runs the handler and writes the response. Each task owns its children
//! in a `JoinSet`, so a closed connection takes its requests with it and
//! shutdown can join everything.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at};

use super::handshakes::{CONNECTION_REFUSED_METRIC, Handshakes, Slot};
use super::refusal::{self, Role};
use super::{Handler, Peer, RpcConfig, RpcError, wire};
use crate::cert_name::certificate_name;
use crate::log_limit::LogLimit;
use crate::tls::Fingerprint;

/// Application close codes.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_NO_IDENTITY: u32 = 1;
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
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| RpcError::Setup(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(config.transport()?);
        let endpoint = Endpoint::server(server_config, addr)
            .map_err(|error| RpcError::Bind { addr, error })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|error| RpcError::Bind { addr, error })?;
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
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        let mut task = self.accept_task.take().expect("taken only here");
        let limit = self.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let joined = timeout_at(deadline, &mut task).await.is_ok();
        if !joined {
            task.abort();
            let _ = task.await;
        }
        // Let the close frames go out, within what is left of the bound.
        let _ = timeout_at(deadline, self.endpoint.wait_idle()).await;
        if joined {
            Ok(())
        } else {
            Err(RpcError::ShutdownTimeout(limit))
        }
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
    let mut connections = JoinSet::new();
    let config = &shared.config;
    let handshakes = Handshakes::new(config.max_handshakes, config.max_handshakes_per_address);
    let mut log = LogLimit::default();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                if !incoming.remote_address_validated()
                    && incoming.may_retry()
                    && handshakes.under_pressure()
                {
                    let _ = incoming.retry();
                    continue;
                }
                let slot = if connections.len() >= config.max_connections {
                    Err("connections")
                } else {
                    handshakes.take(remote.ip()).map_err(|full| full.label())
                };
                match slot {
                    Ok(slot) => {
                        connections.spawn(serve_connection(incoming, slot, shared.clone()));
                    }
                    Err(limit) => {
                        metrics::counter!(CONNECTION_REFUSED_METRIC, "reason" => limit)
                            .increment(1);
                        if let Some(left_out) = log.speak(std::time::Instant::now()) {
                            tracing::warn!(%remote, limit, left_out, "refused a connection: at the limit");
                        }
                        incoming.refuse();
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<H: Handler>(incoming: Incoming, slot: Slot, shared: Arc<Shared<H>>) {
    let addr = incoming.remote_address();
    let handshake = timeout(shared.config.connect_timeout, incoming).await;
    drop(slot);
    let connection = match handshake {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            refusal::handshake_failed(Role::Server, addr, e);
            return;
        }
        Err(_) => {
            tracing::warn!(remote = %addr, after = ?shared.config.connect_timeout, "handshake timed out");
            return;
        }
    };
    let Some(cert) = peer_certificate(&connection) else {
        // Unreachable while client certificates are mandatory.
        tracing::warn!(remote = %addr, "a peer without a certificate got through; closing");
        connection.close(VarInt::from_u32(CLOSE_NO_IDENTITY), b"no certificate");
        return;
    };
    let peer = Peer {
        address: addr,
        fingerprint: Fingerprint::of(&cert),
        name: certificate_name(&cert).map(Arc::from),
    };
    tracing::debug!(remote = %addr, fingerprint = %peer.fingerprint, name = ?peer.name, "peer connected");
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

/// The first certificate the peer presented (its own; the rest is chain).
pub(super) fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.into_iter().next()
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
