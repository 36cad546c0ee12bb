//! The ingest pipeline as supervised ractor actors.
//!
//! ```text
//!            ┌──────────────── job (supervisor) ◄── shard feed (thread)
//!            │ bundles of shards
//!   scan × threads ──► sort-merge ──► dedup ──► commit      (one lane per
//!                 └──► sort-merge ──► dedup ──► commit       partition range)
//! ```
//! Every data edge is an [`Edge`](crate::edge::Edge), bounded in bytes and
//! messages. End-of-stream travels as a `Finish` message behind the data, so
//! each stage knows its input is complete. A failing stage is reported to the
//! job actor with its name and cause; the job then closes every edge (no
//! sender waits on a dead stage), stops the rest, and fails cleanly.
//!
//! Each actor has its own file, with its tests at the bottom. What they
//! say to each other is in [`messages`]: an actor's file imports the
//! messages it receives and sends, never another actor's file.

pub mod commit;
pub mod dedup;
pub mod feed;
pub mod job;
pub mod messages;
pub mod scan;
pub mod sort_merge;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{IngestConfig, MemoryPlan};
use crate::counters::{FileTally, JobCounters};
use crate::memory::Governor;
use crate::store::Store;
use crate::store::catalog::{DatasetInfo, JobInfo};
use crate::tally_runs::TallyRuns;
use external_sort::batch_pool::BatchPool;

/// What every actor of one job shares.
pub struct JobContext {
    pub store: Arc<Store>,
    pub dataset: DatasetInfo,
    pub job: JobInfo,
    pub config: IngestConfig,
    pub plan: MemoryPlan,
    /// Back-pressure from the heap actually allocated.
    pub governor: Arc<Governor>,
    /// Batches recycled between stages.
    pub pool: Arc<BatchPool>,
    pub lanes: LaneMap,
    pub counters: Arc<JobCounters>,
    /// Per-file counts spilled by the stages, written to the ledger when
    /// the job publishes.
    pub tally_runs: Arc<TallyRuns>,
    /// The job's scratch directory: spilled runs and SST files.
    pub scratch: PathBuf,
    /// Stages that did not stop within the shutdown timeout.
    pub hung_stages: Mutex<Vec<String>>,
}

impl JobContext {
    pub fn tally(&self) -> FileTally {
        FileTally::new(self.tally_runs.clone(), self.counters.clone())
    }

    pub fn batch_bytes(&self) -> usize {
        self.plan.batch_bytes as usize
    }
}

/// Which lane owns a partition: lanes own contiguous partition ranges, so a
/// lane's SST files never overlap another's and partitions keep moving as
/// ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneMap {
    pub partitions: u16,
    pub lanes: usize,
}

impl LaneMap {
    /// At most one lane per partition.
    pub fn new(partitions: u16, threads: usize) -> Self {
        Self {
            partitions,
            lanes: threads.clamp(1, partitions as usize),
        }
    }

    pub fn lane_of(&self, partition: u16) -> usize {
        partition as usize * self.lanes / self.partitions as usize
    }
}

/// Runs disk- or CPU-bound work from an actor without stalling the async
/// workers: the runtime moves its other tasks to another thread meanwhile.
/// Needs the multi-threaded runtime.
pub fn blocking<R>(work: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Lanes own contiguous, non-empty partition ranges covering all
        /// partitions in order.
        #[test]
        fn lanes_own_contiguous_ranges(partitions in 1u16..2000, threads in 1usize..64) {
            let map = LaneMap::new(partitions, threads);
            let owners: Vec<usize> = (0..partitions).map(|p| map.lane_of(p)).collect();
            prop_assert_eq!(owners[0], 0);
            prop_assert_eq!(*owners.last().unwrap(), map.lanes - 1);
            prop_assert!(owners.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        }
    }
}
