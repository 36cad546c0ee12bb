//! The calls a node makes for its work: join (`register`, a new
//! incarnation per start), stay alive (`heartbeat`: extends every lease it
//! holds and carries its progress, no log write), ask the leader for
//! shards (`lease`, several granted in one log write), keep one
//! (`renew`), report on them (`report_progress`, `complete_shards`,
//! fenced by each lease's epoch), learn which partitions it owns
//! (`partition_map`), stage its part of a job (`stage`, under the map's
//! epoch) and follow the job to its commit (`job`); find jobs to work on
//! (`work`).

use proto_schema::command::{Response, StagedCounts};
use proto_schema::coordinator_api::{
    Applied, HeartbeatReply, JobStatus, LeaseReply, NodeRegistration, OwnerMap, Reply, Request,
    ShardProgress, WorkItem,
};
use proto_schema::ids::{Epoch, JobId, NodeId, ShardId};

use crate::client::{ClientError, CoordinatorClient};
use crate::transport::Transport;

impl<T: Transport> CoordinatorClient<T> {
    /// Registers `registration.node` at its incarnation. Sent again after
    /// an ambiguous failure: the same incarnation twice is one registration.
    pub async fn register(
        &mut self,
        registration: NodeRegistration,
    ) -> Result<Response, ClientError> {
        self.written(&Request::Register(registration), true).await
    }

    /// `node`'s heartbeat to the leader, with where its scans are and its
    /// process's anonymous resident memory, if known.
    pub async fn heartbeat(
        &mut self,
        node: NodeId,
        incarnation: u64,
        progress: Vec<ShardProgress>,
        memory_bytes: Option<u64>,
    ) -> Result<HeartbeatReply, ClientError> {
        let request = Request::Heartbeat {
            node,
            incarnation,
            progress,
            memory_bytes,
        };
        match self.call(&request, true).await? {
            Reply::Heartbeat(reply) => Ok(reply),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Asks the leader for up to `max` shards for `node` to work on, of
    /// `job` only if named.
    pub async fn lease(
        &mut self,
        node: NodeId,
        max: u32,
        part: Option<(JobId, Epoch)>,
    ) -> Result<LeaseReply, ClientError> {
        let request = Request::Lease {
            node,
            max,
            job: part.map(|(job, _)| job),
            map_epoch: part.map(|(_, epoch)| epoch),
        };
        self.lease_call(&request).await
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
        let report = proto_schema::command::Command::ReportProgress {
            shard,
            node,
            epoch,
            offset,
        };
        self.write(&report).await
    }

    /// Records that `node` finished `shards` (`(shard, epoch)`), in one
    /// log write. Sent again after an ambiguous failure: a shard its
    /// holder already completed at that epoch is answered completed again
    /// (and counted once).
    pub async fn complete_shards(
        &mut self,
        node: NodeId,
        shards: Vec<(ShardId, Epoch)>,
    ) -> Result<Response, ClientError> {
        self.written(&Request::Complete { node, shards }, true)
            .await
    }

    /// `node` staged its part of `job` with these counts, under the
    /// partition map of `map_epoch`. Sent again after an ambiguous
    /// failure: a second report replaces the first.
    pub async fn stage(
        &mut self,
        node: NodeId,
        job: JobId,
        counts: StagedCounts,
        map_epoch: Epoch,
    ) -> Result<Response, ClientError> {
        let request = Request::Stage {
            node,
            job,
            counts,
            map_epoch,
        };
        self.written(&request, true).await
    }

    /// `node` starts its part of `job` after shards of `attempt` were
    /// done: the job runs again (as the next attempt, or already does).
    pub async fn restart(
        &mut self,
        node: NodeId,
        job: JobId,
        attempt: u32,
    ) -> Result<Response, ClientError> {
        self.written(&Request::Restart { node, job, attempt }, true)
            .await
    }

    /// `dataset`'s partition map over the live nodes with its owners'
    /// addresses and lanes for `job`, as the leader has it (`node` starts
    /// its part `part` of `job`, splitting its partitions into `lanes`;
    /// a part draws its `part` once and asks with it every time).
    pub async fn partition_map(
        &mut self,
        node: NodeId,
        dataset: &str,
        job: JobId,
        lanes: u16,
        part: u64,
    ) -> Result<OwnerMap, ClientError> {
        let request = Request::PartitionMap {
            node,
            dataset: dataset.into(),
            job,
            lanes,
            part,
        };
        match self.call(&request, true).await? {
            Reply::PartitionMap(map) => Ok(map),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The job's progress as the leader has applied it.
    pub async fn job(&mut self, job: JobId) -> Result<Option<JobStatus>, ClientError> {
        match self.call(&Request::Job { job }, true).await? {
            Reply::Job(status) => Ok(status),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The jobs `node` may work on (submitted, not yet committed), oldest
    /// first, with their datasets' specs.
    pub async fn work(&mut self, node: NodeId) -> Result<Vec<WorkItem>, ClientError> {
        match self.call(&Request::Work { node }, true).await? {
            Reply::Work(items) => Ok(items),
            _ => Err(ClientError::Unexpected),
        }
    }

    async fn written(
        &mut self,
        request: &Request,
        idempotent: bool,
    ) -> Result<Response, ClientError> {
        match self.call(request, idempotent).await? {
            Reply::Written(Applied(response)) => Ok(response),
            _ => Err(ClientError::Unexpected),
        }
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
