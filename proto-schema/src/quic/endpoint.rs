//! What every QUIC endpoint of the cluster shares, whatever it carries
//! (the RPC, the shuffle's data channel): the transport's liveness
//! settings, binding and dialling with mutual TLS, accepting connections
//! within limits (handshakes counted apart), reading a peer's identity once, and a bounded shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, Incoming, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at};

pub(super) use super::handshakes::Slot;
use super::handshakes::{CONNECTION_REFUSED_METRIC, Handshakes};
use super::refusal::{self, Role};
use super::{Peer, RpcError};
use crate::cert_name::certificate_name;
use crate::log_limit::LogLimit;
use crate::tls::Fingerprint;

/// Application close code of a shutdown.
pub(super) const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code for a peer that got through without a
/// certificate.
const CLOSE_NO_IDENTITY: u32 = 1;

/// A transport that notices a silent peer within `idle_timeout`, sending
/// keep-alives at a third of it so a live but quiet peer is not lost.
pub(super) fn transport(idle_timeout: Duration) -> Result<quinn::TransportConfig, RpcError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout.try_into().map_err(|_| {
            RpcError::Setup(format!("idle timeout {idle_timeout:?} is too long"))
        })?))
        .keep_alive_interval(Some(idle_timeout / 3));
    Ok(transport)
}

/// An endpoint listening on `addr` (port 0 picks one) that demands client
/// certificates per `tls`, and its bound address.
pub(super) fn listen(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(Endpoint, SocketAddr), RpcError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| RpcError::Setup(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(transport);
    let endpoint =
        Endpoint::server(server_config, addr).map_err(|error| RpcError::Bind { addr, error })?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|error| RpcError::Bind { addr, error })?;
    Ok((endpoint, local_addr))
}

/// How `endpoint` dials: presenting the identity in `tls`.
pub(super) fn client_config(
    tls: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, RpcError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| RpcError::Setup(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(transport);
    Ok(client_config)
}

/// Connects to `addr`, whose certificate must be issued by the cluster CA
/// and name `server_name`, within `connect_timeout`.
pub(super) async fn dial(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<quinn::Connection, RpcError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|error| RpcError::Connect {
            addr,
            server_name: server_name.to_owned(),
            error,
        })?;
    match timeout(connect_timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(refusal::handshake_failed(Role::Client, addr, e)),
        Err(_) => Err(RpcError::Timeout {
            addr,
            stage: "handshake",
            after: connect_timeout,
        }),
    }
}

/// What an accept loop admits at once: connections in all, and of those
/// the ones still in their handshake (`handshakes`).
#[derive(Debug, Clone, Copy)]
pub(super) struct AcceptLimits {
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
}

/// Accepts connections until the endpoint closes, within `limits` (more
/// are refused, counted and logged at a bounded rate; under handshake
/// pressure an unvalidated address is sent a Retry first), each served by
/// `serve` in a task this loop owns. `serve` holds its handshake `Slot`
/// until the handshake ends (`handshake` drops it).
pub(super) async fn accept_loop<F, Fut>(endpoint: Endpoint, limits: AcceptLimits, serve: F)
where
    F: Fn(Incoming, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let handshakes = Handshakes::new(limits.max_handshakes, limits.max_handshakes_per_address);
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
                let slot = if connections.len() >= limits.max_connections {
                    Err("connections")
                } else {
                    handshakes.take(remote.ip()).map_err(|full| full.label())
                };
                match slot {
                    Ok(slot) => {
                        connections.spawn(serve(incoming, slot));
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

/// Completes the handshake of `incoming` within `connect_timeout`, frees
/// its handshake `slot`, and reads who the peer is, or logs why not and
/// returns `None`.
pub(super) async fn handshake(
    incoming: Incoming,
    slot: Slot,
    connect_timeout: Duration,
) -> Option<(quinn::Connection, Peer)> {
    let addr = incoming.remote_address();
    let handshake = timeout(connect_timeout, incoming).await;
    drop(slot);
    let connection = match handshake {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            refusal::handshake_failed(Role::Server, addr, e);
            return None;
        }
        Err(_) => {
            tracing::warn!(remote = %addr, after = ?connect_timeout, "handshake timed out");
            return None;
        }
    };
    let Some(cert) = peer_certificate(&connection) else {
        // Unreachable while client certificates are mandatory.
        tracing::warn!(remote = %addr, "a peer without a certificate got through; closing");
        connection.close(VarInt::from_u32(CLOSE_NO_IDENTITY), b"no certificate");
        return None;
    };
    let peer = Peer {
        address: addr,
        fingerprint: Fingerprint::of(&cert),
        name: certificate_name(&cert).map(Arc::from),
    };
    tracing::debug!(remote = %addr, fingerprint = %peer.fingerprint, name = ?peer.name, "peer connected");
    Some((connection, peer))
}

/// The first certificate the peer presented (its own; the rest is chain).
pub(super) fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.into_iter().next()
}

/// Closes `endpoint` (every connection with it), joins its accept task
/// within `limit` (aborting it past that) and lets the close frames go out
/// within what is left.
pub(super) async fn shut_down(
    endpoint: &Endpoint,
    mut accept_task: JoinHandle<()>,
    limit: Duration,
) -> Result<(), RpcError> {
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
    let deadline = tokio::time::Instant::now() + limit;
    let joined = timeout_at(deadline, &mut accept_task).await.is_ok();
    if !joined {
        accept_task.abort();
        let _ = accept_task.await;
    }
    let _ = timeout_at(deadline, endpoint.wait_idle()).await;
    if joined {
        Ok(())
    } else {
        Err(RpcError::ShutdownTimeout(limit))
    }
}
