//! Sort-merge: gathers a lane's records into runs within its memory share,
//! spills sorted runs, and on `Finish` merges them and streams the result, in
//! merge order and without repeated keys, to the lane's dedup stage.

use std::sync::Arc;

use proto_schema::BatchView;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::{DedupMsg, SortMergeMsg};
use super::{JobContext, blocking};
use crate::counters::{FileTally, JobCounters};
use crate::edge::Edge;
use crate::memory::Account;
use external_sort::{LaneSorter, SortLimits};

pub struct SortMergeArgs {
    pub ctx: Arc<JobContext>,
    pub lane: usize,
    pub dedup: Edge<DedupMsg>,
    pub account: Account,
}

pub struct SortMergeState {
    account: Account,
    ctx: Arc<JobContext>,
    dedup: Edge<DedupMsg>,
    /// `None` once the final merge has started.
    sorter: Option<LaneSorter>,
    tally: FileTally,
}

pub struct SortMerge;

impl Actor for SortMerge {
    type Msg = SortMergeMsg;
    type State = SortMergeState;
    type Arguments = SortMergeArgs;

    async fn pre_start(
        &self,
        _: ActorRef<SortMergeMsg>,
        args: SortMergeArgs,
    ) -> Result<SortMergeState, ActorProcessingErr> {
        let ctx = args.ctx;
        let limits = SortLimits {
            frame_bytes: ctx.plan.spill_frame_bytes as usize,
            max_open_runs: ctx.config.max_open_runs,
            max_record: ctx.config.max_record_bytes as usize,
        };
        Ok(SortMergeState {
            account: args.account,
            sorter: Some(
                LaneSorter::new(ctx.scratch.clone(), args.lane, limits, ctx.pool.clone())
                    // A run spilling on its own thread is still this lane's memory.
                    .with_spill_context(Arc::new(move |work| args.account.enter(work))),
            ),
            tally: ctx.tally(),
            dedup: args.dedup,
            ctx,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<SortMergeMsg>,
        msg: SortMergeMsg,
        state: &mut SortMergeState,
    ) -> Result<(), ActorProcessingErr> {
        let account = state.account;
        account
            .attribute(async move {
                let SortMergeState {
                    ctx,
                    dedup,
                    sorter,
                    tally,
                    ..
                } = state;
                let sorter_gone = || "sort-merge received input after it finished";
                match msg {
                    SortMergeMsg::Batch(batch, credit) => {
                        // The batch now counts against the sort share, not the edge.
                        drop(credit);
                        let sorter = sorter.as_mut().ok_or_else(sorter_gone)?;
                        // Runs spill earlier when the heap is under pressure.
                        let run_bytes = ctx.governor.run_bytes() as usize;
                        blocking(|| {
                            fail::fail_point!("sort-merge-batch");
                            sorter.add(batch, run_bytes, &mut |position| {
                                tally.duplicate(position.file)
                            })
                        })?;
                        tally.publish()?;
                    }
                    SortMergeMsg::Received(batch, credit) => {
                        // What the sender's early dedup dropped for these
                        // partitions is counted here, by their owner.
                        for repeats in batch.repeats() {
                            tally.duplicates(repeats.file, repeats.count);
                        }
                        JobCounters::add(&ctx.counters.received, batch.len() as u64);
                        let sorter = sorter.as_mut().ok_or_else(sorter_gone)?;
                        let run_bytes = ctx.governor.run_bytes() as usize;
                        blocking(|| {
                            sorter.add_view(&batch, run_bytes, &mut |position| {
                                tally.duplicate(position.file)
                            })
                        })?;
                        // Copied into the run: the archive and its room go.
                        drop((batch, credit));
                        tally.publish()?;
                    }
                    SortMergeMsg::Finish => {
                        let sorter = sorter.take().ok_or_else(sorter_gone)?;
                        // Scanning has ended: from here on the pool only
                        // recycles what is in flight between the stages.
                        ctx.pool.lower_cap(ctx.plan.in_flight);
                        let (mut merge, stats) = blocking(|| {
                            sorter.finish(&mut |position| tally.duplicate(position.file))
                        })?;
                        JobCounters::add(&ctx.counters.runs_spilled, stats.runs_spilled);
                        JobCounters::add(&ctx.counters.merge_passes, stats.merge_passes);
                        tally.flush()?;
                        let batch_bytes = ctx.batch_bytes();
                        // Repeats the merge meets are dropped there and
                        // counted here, as those dropped while spilling;
                        // they have been merged too.
                        let mut repeats = 0;
                        while let Some(batch) = blocking(|| {
                            merge.next_batch(
                                batch_bytes,
                                Some(&mut |position| {
                                    repeats += 1;
                                    tally.duplicate(position.file)
                                }),
                            )
                        })? {
                            tally.publish()?;
                            let merged = batch.len() as u64 + std::mem::take(&mut repeats);
                            JobCounters::add(&ctx.counters.merged, merged);
                            let bytes = batch.heap_bytes() as u64;
                            dedup
                                .send(bytes, |credit| DedupMsg::Batch(batch, credit))
                                .await?;
                        }
                        JobCounters::add(&ctx.counters.merged, repeats);
                        tally.flush()?;
                        dedup.send_control(DedupMsg::Finish)?;
                    }
                }
                Ok::<(), ActorProcessingErr>(())
            })
            .await
    }
}
