//! Dedup: the lane's merged stream arrives in merge order; the first record
//! of each key (its first occurrence) goes on to commit, the rest are
//! counted as duplicates of their files.

use std::sync::Arc;

use proto_schema::{BatchView, RecordBatch};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{CommitMsg, DedupMsg};
use super::{JobContext, blocking};
use crate::counters::FileTally;
use crate::edge::Edge;
use crate::memory::Account;
use external_sort::batch_pool::BatchPool;
use external_sort::dedup::FirstOccurrence;

pub struct DedupArgs {
    pub ctx: Arc<JobContext>,
    pub commit: Edge<CommitMsg>,
    pub account: Account,
}

pub struct DedupState {
    account: Account,
    pool: Arc<BatchPool>,
    commit: Edge<CommitMsg>,
    first: FirstOccurrence,
    tally: FileTally,
}

pub struct Dedup;

impl Actor for Dedup {
    type Msg = DedupMsg;
    type State = DedupState;
    type Arguments = DedupArgs;

    async fn pre_start(
        &self,
        _: ActorRef<DedupMsg>,
        args: DedupArgs,
    ) -> Result<DedupState, ActorProcessingErr> {
        Ok(DedupState {
            account: args.account,
            pool: args.ctx.pool.clone(),
            commit: args.commit,
            first: FirstOccurrence::default(),
            tally: args.ctx.tally(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<DedupMsg>,
        msg: DedupMsg,
        state: &mut DedupState,
    ) -> Result<(), ActorProcessingErr> {
        let account = state.account;
        account
            .attribute(async move {
                match msg {
                    DedupMsg::Batch(batch, credit) => {
                        let unique = blocking(|| {
                            fail::fail_point!("dedup-batch");
                            state.keep_first_occurrences(&batch)
                        });
                        state.pool.give(batch);
                        drop(credit);
                        state.tally.publish()?;
                        if !unique.is_empty() {
                            let bytes = unique.heap_bytes() as u64;
                            state
                                .commit
                                .send(bytes, |credit| CommitMsg::Batch(unique, credit))
                                .await?;
                        }
                    }
                    DedupMsg::Finish => {
                        blocking(|| state.tally.flush())?;
                        state.commit.send_control(CommitMsg::Finish)?;
                    }
                }
                Ok::<(), ActorProcessingErr>(())
            })
            .await
    }
}

impl DedupState {
    fn keep_first_occurrences(&mut self, batch: &RecordBatch) -> RecordBatch {
        let mut unique = self.pool.take(batch.shape());
        for i in 0..batch.len() {
            let record = batch.record(i);
            if self.first.is_first(batch, i) {
                self.tally.unique(record.position.file);
                unique.push(record);
            } else {
                self.tally.duplicate(record.position.file);
            }
        }
        unique
    }
}
