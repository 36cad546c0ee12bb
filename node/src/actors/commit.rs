//! Commit: writes the lane's unique records, in store-key order, into SST
//! files. The job publishes every lane's files in one atomic ingest once all
//! lanes are done, so this stage only reports what it wrote.

use std::sync::Arc;

use proto_schema::BatchView;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{CommitMsg, JobMsg, LaneOutput};
use super::{JobContext, blocking};
use crate::memory::Account;
use crate::store::publish::SstSink;
use external_sort::batch_pool::BatchPool;

pub struct CommitArgs {
    pub ctx: Arc<JobContext>,
    pub lane: usize,
    pub job: ActorRef<JobMsg>,
    pub account: Account,
}

pub struct CommitState {
    account: Account,
    pool: Arc<BatchPool>,
    lane: usize,
    job: ActorRef<JobMsg>,
    /// `None` once finished.
    sink: Option<SstSink>,
}

pub struct Commit;

impl Actor for Commit {
    type Msg = CommitMsg;
    type State = CommitState;
    type Arguments = CommitArgs;

    async fn pre_start(
        &self,
        _: ActorRef<CommitMsg>,
        args: CommitArgs,
    ) -> Result<CommitState, ActorProcessingErr> {
        let ctx = args.ctx;
        Ok(CommitState {
            account: args.account,
            pool: ctx.pool.clone(),
            sink: Some(SstSink::new(
                ctx.scratch.clone(),
                args.lane,
                &ctx.job,
                ctx.config.sst_target_bytes,
                ctx.plan.sst_file_keys,
            )),
            lane: args.lane,
            job: args.job,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<CommitMsg>,
        msg: CommitMsg,
        state: &mut CommitState,
    ) -> Result<(), ActorProcessingErr> {
        let account = state.account;
        account
            .attribute(async move {
                let sink_gone = || "commit received input after it finished";
                match msg {
                    CommitMsg::Batch(batch, credit) => {
                        let sink = state.sink.as_mut().ok_or_else(sink_gone)?;
                        blocking(|| {
                            fail::fail_point!("commit-batch");
                            (0..batch.len()).try_for_each(|i| sink.write(&batch.record(i)))
                        })?;
                        state.pool.give(batch);
                        drop(credit);
                    }
                    CommitMsg::Finish => {
                        let sink = state.sink.take().ok_or_else(sink_gone)?;
                        let (files, keys) = blocking(|| sink.finish())?;
                        state.job.cast(JobMsg::LaneWritten {
                            lane: state.lane,
                            output: LaneOutput { files, keys },
                        })?;
                    }
                }
                Ok::<(), ActorProcessingErr>(())
            })
            .await
    }
}
