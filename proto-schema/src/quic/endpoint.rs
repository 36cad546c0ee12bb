//! What every QUIC endpoint of the cluster shares, whatever it carries
//! (the RPC, the shuffle's data channel): the transport's liveness
//! settings, binding and dialling with mutual TLS, accepting connections
//! within a limit, reading a peer's identity once, and a bounded shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, Incoming, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at};

use super::refusal::{self, Role};
use super::{Peer, RpcError};
use crate::cert_name::certificate_name;
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

/// Accepts connections until the endpoint closes, at most
/// `max_connections` at once (more are refused), each served by `serve`
/// in a task this loop owns.
pub(super) async fn accept_loop<F, Fut>(endpoint: Endpoint, max_connections: usize, serve: F)
where
    F: Fn(Incoming) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if connections.len() >= max_connections {
                    tracing::warn!(
                        remote = %incoming.remote_address(),
                        limit = max_connections,
                        "refused a connection: at the connection limit"
                    );
                    incoming.refuse();
                    continue;
                }
                connections.spawn(serve(incoming));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

/// Completes the handshake of `incoming` within `connect_timeout` and
/// reads who the peer is, or logs why not and returns `None`.
pub(super) async fn handshake(
    incoming: Incoming,
    connect_timeout: Duration,
) -> Option<(quinn::Connection, Peer)> {
    let addr = incoming.remote_address();
    let connection = match timeout(connect_timeout, incoming).await {
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
