//! The dialling side: an [`RpcClient`] owns a client endpoint and makes
//! connections; an [`RpcConnection`] sends requests, each on its own
//! stream, so many can be in flight on one connection.

use std::net::SocketAddr;

use quinn::{Endpoint, ReadError, ReadExactError, VarInt, WriteError};
use tokio::time::timeout;

use super::endpoint::{self, peer_certificate};
use super::refusal;
use super::{RpcConfig, RpcError, wire};
use crate::tls::Fingerprint;

/// Stream code: the response was over our size limit.
const STOP_TOO_LARGE: u32 = 1;

pub struct RpcClient {
    endpoint: Endpoint,
    config: RpcConfig,
}

impl RpcClient {
    /// A client endpoint bound to `bind` (`0.0.0.0:0` or `[::]:0`). `tls`
    /// should come from
    /// [`TlsIdentity::client_config`](crate::tls::TlsIdentity::client_config).
    /// Must be called inside a tokio runtime.
    pub fn new(
        bind: SocketAddr,
        tls: rustls::ClientConfig,
        config: RpcConfig,
    ) -> Result<Self, RpcError> {
        let client_config = endpoint::client_config(tls, config.transport()?)?;
        let mut endpoint =
            Endpoint::client(bind).map_err(|error| RpcError::Bind { addr: bind, error })?;
        endpoint.set_default_client_config(client_config);
        Ok(Self { endpoint, config })
    }

    /// Connects to the server at `addr`, whose certificate must be issued
    /// by the cluster CA and name `server_name`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<RpcConnection, RpcError> {
        let connection = endpoint::dial(
            &self.endpoint,
            addr,
            server_name,
            self.config.connect_timeout,
        )
        .await?;
        Ok(RpcConnection {
            connection,
            addr,
            config: self.config.clone(),
        })
    }

    /// Closes every connection and waits (within the shutdown timeout)
    /// until the peers have been told.
    pub async fn shutdown(self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutting down");
        let _ = timeout(self.config.shutdown_timeout, self.endpoint.wait_idle()).await;
    }
}

/// A connection to one server. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct RpcConnection {
    connection: quinn::Connection,
    addr: SocketAddr,
    config: RpcConfig,
}

impl RpcConnection {
    /// Sends `payload` and waits for the response, within the request
    /// timeout. A request over the size limit is refused before sending.
    pub async fn request(&self, payload: &[u8]) -> Result<Vec<u8>, RpcError> {
        let max = self.config.max_message;
        if payload.len() > max as usize {
            return Err(RpcError::TooLarge {
                what: "request",
                len: payload.len() as u64,
                max,
            });
        }
        let after = self.config.request_timeout;
        timeout(after, self.exchange(payload))
            .await
            .unwrap_or(Err(RpcError::Timeout {
                addr: self.addr,
                stage: "response",
                after,
            }))
    }

    async fn exchange(&self, payload: &[u8]) -> Result<Vec<u8>, RpcError> {
        let (mut send, mut recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| refusal::connection_lost(self.addr, e))?;
        match wire::write_request(&mut send, payload).await {
            // The server stopped reading: its response says why.
            Ok(()) | Err(WriteError::Stopped(_)) => {}
            Err(WriteError::ConnectionLost(e)) => {
                return Err(refusal::connection_lost(self.addr, e));
            }
            Err(e) => return Err(self.stream_failed(e.to_string())),
        }
        let (status, len) = wire::read_response_header(&mut recv)
            .await
            .map_err(|e| self.read_failed(e))?;
        let max = self.config.max_message;
        if len > max {
            let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
            return Err(RpcError::TooLarge {
                what: "response",
                len: len.into(),
                max,
            });
        }
        let body = wire::read_payload(&mut recv, len)
            .await
            .map_err(|e| self.read_failed(e))?;
        match status {
            wire::STATUS_OK => Ok(body),
            wire::STATUS_REFUSED => Err(RpcError::Refused {
                addr: self.addr,
                reason: String::from_utf8_lossy(&body).into_owned(),
            }),
            other => Err(self.stream_failed(format!("unknown response status {other}"))),
        }
    }

    fn read_failed(&self, error: ReadExactError) -> RpcError {
        match error {
            ReadExactError::ReadError(ReadError::ConnectionLost(e)) => {
                refusal::connection_lost(self.addr, e)
            }
            other => self.stream_failed(other.to_string()),
        }
    }

    fn stream_failed(&self, reason: String) -> RpcError {
        RpcError::Stream {
            addr: self.addr,
            reason,
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.addr
    }

    /// The fingerprint of the certificate the server presented.
    pub fn server_fingerprint(&self) -> Option<Fingerprint> {
        peer_certificate(&self.connection).map(|cert| Fingerprint::of(&cert))
    }

    /// The name of the certificate the server presented
    /// (`cert_name::certificate_name`).
    pub fn server_name(&self) -> Option<String> {
        peer_certificate(&self.connection)
            .and_then(|cert| crate::cert_name::certificate_name(&cert))
    }

    /// Whether the connection has ended (closed by either side or lost):
    /// a request on it would fail before anything is sent.
    pub fn is_closed(&self) -> bool {
        self.connection.close_reason().is_some()
    }

    /// Closes the connection; requests in flight fail.
    pub fn close(&self) {
        self.connection.close(VarInt::from_u32(0), b"closed");
    }
}
