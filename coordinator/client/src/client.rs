//! `CoordinatorClient`: the connection to a cluster of coordinators, over
//! any `Transport`. Sends to one address, follows redirects to the
//! leader, tries the other known addresses when one is down, and keeps
//! trying within a retry window while there is no leader. A write whose
//! connection failed after sending is never resent here (`Ambiguous`):
//! it may have been applied, and only the caller knows whether sending
//! it again is harmless.

use std::time::{Duration, Instant};

use proto_schema::command::{Command, Response};
use proto_schema::coordinator_api::{Applied, CommandBytes, Refusal, Reply, Request, StatusReport};
use proto_schema::tls::TlsIdentity;

use crate::quic::QuicTransport;
use crate::transport::{Connection, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot reach any coordinator of {addresses:?}: {last}")]
    Unreachable {
        addresses: Vec<String>,
        last: String,
    },
    #[error("no leader elected within {0:?}")]
    NoLeader(Duration),
    #[error("the coordinator failed the request: {0}")]
    Failed(String),
    /// Refused before anything was done (never retried).
    #[error("the coordinator refused the request: {0}")]
    Refused(Refusal),
    #[error("the coordinator gave an unexpected reply")]
    Unexpected,
    #[error(
        "the connection to {address} failed after the command was sent; it may or may not have been applied: {error}"
    )]
    Ambiguous {
        address: String,
        error: TransportError,
    },
}

/// How long a client keeps retrying while the cluster has no leader or
/// none of its addresses answers.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(15);
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A client of the coordinators at known addresses.
pub struct CoordinatorClient<T: Transport = QuicTransport> {
    transport: T,
    addresses: Vec<String>,
    current: usize,
    connection: Option<T::Connection>,
    retry_window: Duration,
}

impl CoordinatorClient<QuicTransport> {
    /// A client over QUIC presenting `identity`, knowing these
    /// coordinator addresses (`host:port`). Must be called inside a tokio
    /// runtime.
    pub fn quic(
        identity: &TlsIdentity,
        addresses: Vec<String>,
    ) -> Result<Self, proto_schema::quic::RpcError> {
        Ok(Self::new(QuicTransport::new(identity)?, addresses))
    }
}

impl<T: Transport> CoordinatorClient<T> {
    /// A client reaching `addresses` (at least one) through `transport`.
    pub fn new(transport: T, addresses: Vec<String>) -> Self {
        assert!(!addresses.is_empty(), "a client needs an address");
        Self {
            transport,
            addresses,
            current: 0,
            connection: None,
            retry_window: DEFAULT_RETRY_WINDOW,
        }
    }

    pub fn with_retry_window(mut self, window: Duration) -> Self {
        self.retry_window = window;
        self
    }

    /// Proposes `cmd` through the leader. A command the state machine
    /// refused, or the leader refused before the log for breaking a bound,
    /// comes back as `Response::Error`. A write whose connection fails
    /// after sending is not retried (it may have been applied).
    pub async fn write(&mut self, cmd: &Command) -> Result<Response, ClientError> {
        let reply = self
            .call(&Request::Write(CommandBytes::encode(cmd)), false)
            .await;
        written(reply)
    }

    /// The leader's status report (a replica's own when there is none).
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        match self.call(&Request::Status, true).await? {
            Reply::Status(report) => Ok(report),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The address requests go to now (the leader, once redirected).
    pub fn address(&self) -> &str {
        &self.addresses[self.current]
    }

    pub(crate) fn addresses(&self) -> &[String] {
        &self.addresses
    }

    pub(crate) fn transport(&self) -> &T {
        &self.transport
    }

    /// Sends `request` to the leader and returns its answer. Only an
    /// `idempotent` request is sent again after a connection failed with
    /// the request out.
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        idempotent: bool,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.retry_window;
        let mut last_error = String::new();
        let mut failed_addresses = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(if failed_addresses > 0 {
                    ClientError::Unreachable {
                        addresses: self.addresses.clone(),
                        last: last_error,
                    }
                } else {
                    ClientError::NoLeader(self.retry_window)
                });
            }
            // A failure to connect, or one that left the request unsent
            // (or harmless to repeat), moves on to the next address.
            let attempt = match self.connect().await {
                Ok(connection) => connection.request(request).await,
                Err(e) => Err(e),
            };
            let reply = match attempt {
                Ok(reply) => reply,
                Err(error @ TransportError::BadReply(_)) => return Err(error.into()),
                Err(error @ TransportError::Interrupted(_)) if !idempotent => {
                    self.connection = None;
                    return Err(ClientError::Ambiguous {
                        address: self.address().to_owned(),
                        error,
                    });
                }
                Err(e) => {
                    last_error = e.to_string();
                    failed_addresses += 1;
                    self.next_address();
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            match reply {
                Reply::NotLeader {
                    address: Some(address),
                    ..
                } => self.redirect(address),
                Reply::NotLeader { address: None, .. } => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Reply::Failed(reason) => return Err(ClientError::Failed(reason)),
                Reply::Refused(refusal) => return Err(ClientError::Refused(refusal)),
                reply => return Ok(reply),
            }
        }
    }

    /// The connection to the current address, dialled if there is none
    /// or it died.
    pub(crate) async fn connect(&mut self) -> Result<T::Connection, TransportError> {
        if let Some(connection) = self.connection.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let connection = self.transport.connect(self.address()).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    fn next_address(&mut self) {
        self.connection = None;
        self.current = (self.current + 1) % self.addresses.len();
    }

    fn redirect(&mut self, address: String) {
        self.connection = None;
        self.current = match self.addresses.iter().position(|a| *a == address) {
            Some(i) => i,
            None => {
                self.addresses.push(address);
                self.addresses.len() - 1
            }
        };
    }
}

/// A write's answer: the command's response, where a command refused
/// before the log reads as the state machine's refusal would.
pub(crate) fn written(reply: Result<Reply, ClientError>) -> Result<Response, ClientError> {
    match reply {
        Ok(Reply::Written(Applied(response))) => Ok(response),
        Ok(Reply::Refused(Refusal::Invalid(error)))
        | Err(ClientError::Refused(Refusal::Invalid(error))) => Ok(Response::Error(error)),
        Ok(Reply::Refused(refusal)) => Err(ClientError::Refused(refusal)),
        Ok(Reply::Failed(reason)) => Err(ClientError::Failed(reason)),
        Ok(_) => Err(ClientError::Unexpected),
        Err(e) => Err(e),
    }
}
