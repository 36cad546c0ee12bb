//! Dedup: the lane's merged stream arrives in merge order; the first record
//! of each key (its first occurrence) goes on to commit, the rest are
//! counted as duplicates of their files. The merge has dropped repeats
//! already: here each key is checked once more and counted.

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
    /// Per record of the batch in hand: whether it is its key's first
    /// occurrence (kept between batches for its memory).
    kept: Vec<bool>,
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
            kept: Vec::new(),
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
                            state.keep_first_occurrences(batch)
                        });
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
    /// The batch's first occurrences, counted per file. The merge drops
    /// repeats before they come here, so a batch goes on as it is; only
    /// one holding a repeat is copied without it.
    fn keep_first_occurrences(&mut self, batch: RecordBatch) -> RecordBatch {
        self.kept.clear();
        for i in 0..batch.len() {
            let first = self.first.is_first(&batch, i);
            let file = batch.record(i).position.file;
            if first {
                self.tally.unique(file);
            } else {
                self.tally.duplicate(file);
            }
            self.kept.push(first);
        }
        if self.kept.iter().all(|&first| first) {
            return batch;
        }
        let mut unique = self.pool.take(batch.shape());
        for i in (0..batch.len()).filter(|&i| self.kept[i]) {
            unique.push(batch.record(i));
        }
        self.pool.give(batch);
        unique
    }
}
