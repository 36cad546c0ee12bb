//! Writes sent without waiting for each other's answer: a manifest's
//! chunks are independent, and one at a time leaves the leader idle while
//! each chunk is replicated and applied. Answers arrive in any order. A
//! write that meets anything but an answer (a lost connection, a leader
//! that stepped down) ends the pipeline with an error: the caller aborts
//! what it was doing rather than resend a command that may have been
//! applied. Dropping the pipeline abandons the writes still in flight.
//! Each write carries a tag of the caller's, returned with its answer.

use proto_schema::command::{Command, Response};
use proto_schema::coordinator_api::{CommandBytes, Reply, Request};
use tokio::task::JoinSet;

use crate::client::{ClientError, CoordinatorClient, written};
use crate::transport::{Connection, Transport, TransportError};

pub struct Pipeline<'c, T: Transport> {
    client: &'c mut CoordinatorClient<T>,
    window: usize,
    in_flight: JoinSet<Result<(u64, Response), ClientError>>,
}

impl<T: Transport> CoordinatorClient<T> {
    /// A pipeline of writes to the replica this client reached last (the
    /// leader, once a write has been redirected there), with up to
    /// `window` in flight. Use it after a plain `write`, so the client
    /// already talks to the leader.
    pub fn pipeline(&mut self, window: usize) -> Pipeline<'_, T> {
        Pipeline {
            client: self,
            window: window.max(1),
            in_flight: JoinSet::new(),
        }
    }
}

impl<T: Transport> Pipeline<'_, T> {
    /// Sends `cmd`, tagged `tag`; when the window is full, first waits
    /// for one answer, which it returns with its tag.
    pub async fn send(
        &mut self,
        cmd: &Command,
        tag: u64,
    ) -> Result<Option<(u64, Response)>, ClientError> {
        let answered = if self.in_flight.len() >= self.window {
            self.next().await?
        } else {
            None
        };
        let request = Request::Write(CommandBytes::encode(cmd));
        let connection = self.client.connect().await?;
        let address = self.client.address().to_owned();
        self.in_flight.spawn(async move {
            let reply = connection
                .request(&request)
                .await
                .map_err(|error| match error {
                    TransportError::BadReply(_) => ClientError::Transport(error),
                    error => ClientError::Ambiguous { address, error },
                })?;
            match reply {
                Reply::NotLeader { address, .. } => Err(ClientError::Failed(format!(
                    "the leader changed (now {}) while writes were in flight",
                    address.as_deref().unwrap_or("unknown")
                ))),
                reply => written(Ok(reply)).map(|response| (tag, response)),
            }
        });
        Ok(answered)
    }

    /// The next answer and its tag, or `None` once every write has been
    /// answered.
    pub async fn next(&mut self) -> Result<Option<(u64, Response)>, ClientError> {
        match self.in_flight.join_next().await {
            None => Ok(None),
            Some(Ok(answer)) => answer.map(Some),
            Some(Err(e)) => Err(ClientError::Failed(format!("a write's task failed: {e}"))),
        }
    }
}
