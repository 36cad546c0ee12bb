//! The calls a node makes for its work: ask the leader for a shard
//! (`lease`), keep it (`renew`, no log write), and report on it
//! (`report_progress`, `complete_shard`: ordinary commands through the
//! log, fenced by the lease's epoch).

use proto_schema::command::{Command, Response};
use proto_schema::coordinator_api::{LeaseReply, Reply, Request};
use proto_schema::ids::{Epoch, NodeId, ShardId};

use crate::client::{ClientError, CoordinatorClient};
use crate::transport::Transport;

impl<T: Transport> CoordinatorClient<T> {
    /// Asks the leader for a shard for `node` to work on.
    pub async fn lease(&mut self, node: NodeId) -> Result<LeaseReply, ClientError> {
        self.lease_call(&Request::Lease { node }).await
    }

    /// Renews `node`'s lease of `shard` at `epoch`.
    pub async fn renew(
        &mut self,
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<LeaseReply, ClientError> {
        self.lease_call(&Request::Renew { node, shard, epoch })
            .await
    }

    /// Records that `node` read `shard` up to `offset` under the lease's
    /// `epoch`.
    pub async fn report_progress(
        &mut self,
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
        offset: u64,
    ) -> Result<Response, ClientError> {
        let report = Command::ReportProgress {
            shard,
            node,
            epoch,
            offset,
        };
        self.write(&report).await
    }

    /// Records that `node` finished `shard` under the lease's `epoch`.
    pub async fn complete_shard(
        &mut self,
        node: NodeId,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<Response, ClientError> {
        let complete = Command::CompleteShard { shard, node, epoch };
        self.write(&complete).await
    }

    /// Neither request is resent once sent: a grant goes through the log
    /// like a write, and a lost renewal costs only the node's next one.
    async fn lease_call(&mut self, request: &Request) -> Result<LeaseReply, ClientError> {
        match self.call(request, false).await? {
            Reply::Lease(reply) => Ok(reply),
            _ => Err(ClientError::Unexpected),
        }
    }
}
