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

use proto_schema::shuffle::PartitionRange;

use crate::config::{IngestConfig, MemoryPlan};
use crate::counters::{FileTally, JobCounters};
use crate::memory::Governor;
use crate::shuffle::ShuffleJob;
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
    /// Where scanners send each partition's records.
    pub routes: Routes,
    /// The job's part in a cluster's shuffle, if it has one.
    pub shuffle: Option<ShuffleJob>,
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
/// ranges. On one node the lanes share every partition; in a cluster, the
/// node's own range (`first..first + partitions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneMap {
    pub first: u16,
    pub partitions: u16,
    pub lanes: usize,
}

impl LaneMap {
    /// At most one lane per partition.
    pub fn new(partitions: u16, threads: usize) -> Self {
        Self::over(
            PartitionRange::new(0, partitions).expect("at least one partition"),
            threads,
        )
    }

    /// Lanes over `range` only: a node's share of a cluster's partitions.
    pub fn over(range: PartitionRange, threads: usize) -> Self {
        let partitions = range.end.get() - range.start.get();
        Self {
            first: range.start.get(),
            partitions,
            lanes: threads.clamp(1, partitions as usize),
        }
    }

    /// The lane of a partition in this map's range.
    pub fn lane_of(&self, partition: u16) -> usize {
        (partition - self.first) as usize * self.lanes / self.partitions as usize
    }

    /// The partitions `lane` owns: those with `lane_of` equal to it.
    pub fn range_of(&self, lane: usize) -> PartitionRange {
        let (p, l) = (self.partitions as usize, self.lanes);
        let start = |lane: usize| self.first + (lane * p).div_ceil(l) as u16;
        PartitionRange::new(start(lane), start(lane + 1)).expect("every lane owns a partition")
    }
}

/// Where a scanner sends each partition's records: the index of one of its
/// edges, the node's lanes first, then remote owners' streams in the order
/// given; or nowhere, for a part that reads its lanes' partitions alone.
#[derive(Debug, Clone)]
pub struct Routes {
    table: Arc<[u16]>,
}

/// A partition whose records a part reads and drops (`Routes::only`).
const DROPPED: u16 = u16::MAX;

impl Routes {
    /// `lanes`' partitions to their lanes; the other partitions of the
    /// dataset's `partitions` are dropped (a recovery part's: it reads
    /// every record again for a lost owner's partitions alone).
    pub fn only(partitions: u16, lanes: &LaneMap) -> Self {
        Self {
            table: (0..partitions)
                .map(|p| match p.checked_sub(lanes.first) {
                    Some(at) if at < lanes.partitions => lanes.lane_of(p) as u16,
                    _ => DROPPED,
                })
                .collect(),
        }
    }

    /// Every partition to its lane on this node.
    pub fn local(lanes: &LaneMap) -> Self {
        Self {
            table: (0..lanes.partitions)
                .map(|p| lanes.lane_of(lanes.first + p) as u16)
                .collect(),
        }
    }

    /// `lanes`' partitions to their lanes, each of `remote` to the
    /// destination after the lanes and the remote ranges before it. Every
    /// one of `partitions` must be routed exactly once.
    pub fn cluster(
        partitions: u16,
        lanes: &LaneMap,
        remote: &[PartitionRange],
    ) -> Result<Self, String> {
        let mut table = vec![DROPPED; partitions as usize];
        let local =
            (0..lanes.partitions).map(|p| (lanes.first + p, lanes.lane_of(lanes.first + p)));
        let remote = remote.iter().enumerate().flat_map(|(i, range)| {
            (range.start.get()..range.end.get()).map(move |p| (p, lanes.lanes + i))
        });
        for (partition, destination) in local.chain(remote) {
            let slot = table.get_mut(partition as usize).ok_or(format!(
                "partition {partition} is beyond the dataset's {partitions}"
            ))?;
            if *slot != DROPPED {
                return Err(format!("partition {partition} has two owners"));
            }
            *slot = u16::try_from(destination)
                .ok()
                .filter(|&d| d != DROPPED)
                .ok_or("too many destinations")?;
        }
        match table.iter().position(|&d| d == DROPPED) {
            Some(partition) => Err(format!("partition {partition} has no owner")),
            None => Ok(Self {
                table: table.into(),
            }),
        }
    }

    /// The destination of `partition`'s records; `None`: dropped.
    pub fn of(&self, partition: u16) -> Option<usize> {
        let destination = self.table[partition as usize];
        (destination != DROPPED).then_some(destination as usize)
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
        /// partitions of their map in order, and `range_of` names them.
        #[test]
        fn lanes_own_contiguous_ranges(first in 0u16..1000, partitions in 1u16..2000, threads in 1usize..64) {
            let map = LaneMap::over(PartitionRange::new(first, first + partitions).unwrap(), threads);
            let owners: Vec<usize> = (first..first + partitions).map(|p| map.lane_of(p)).collect();
            prop_assert_eq!(owners[0], 0);
            prop_assert_eq!(*owners.last().unwrap(), map.lanes - 1);
            prop_assert!(owners.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
            for p in first..first + partitions {
                prop_assert!(map.range_of(map.lane_of(p)).contains(p));
            }
        }

        /// A cluster's routes send each partition to its one owner: the
        /// local lane for the node's own, the remote range's index after
        /// the lanes for the others.
        #[test]
        fn routes_cover_every_partition_once(cuts in proptest::collection::btree_set(1u16..200, 1..6), mine in any::<prop::sample::Index>(), threads in 1usize..4) {
            let mut bounds: Vec<u16> = std::iter::once(0).chain(cuts).collect();
            bounds.push(200);
            let ranges: Vec<_> = bounds.windows(2).map(|w| PartitionRange::new(w[0], w[1]).unwrap()).collect();
            let own = mine.index(ranges.len());
            let lanes = LaneMap::over(ranges[own], threads);
            let remote: Vec<_> = ranges.iter().enumerate().filter(|(i, _)| *i != own).map(|(_, r)| *r).collect();
            let routes = Routes::cluster(200, &lanes, &remote).unwrap();
            for p in 0..200 {
                let expected = match remote.iter().position(|r| r.contains(p)) {
                    Some(i) => lanes.lanes + i,
                    None => lanes.lane_of(p),
                };
                prop_assert_eq!(routes.of(p), Some(expected));
            }
            // A gap or an overlap is refused.
            prop_assert!(Routes::cluster(201, &lanes, &remote).is_err());
            if let Some(first) = remote.first() {
                let twice: Vec<_> = remote.iter().chain([first]).copied().collect();
                prop_assert!(Routes::cluster(200, &lanes, &twice).is_err());
            }
        }
    }

    #[test]
    fn local_routes_are_the_lanes() {
        let lanes = LaneMap::new(64, 3);
        let routes = Routes::local(&lanes);
        assert!((0..64).all(|p| routes.of(p) == Some(lanes.lane_of(p))));
    }

    #[test]
    fn a_part_of_some_partitions_drops_the_others() {
        let lanes = LaneMap::over(PartitionRange::new(21, 42).unwrap(), 2);
        let routes = Routes::only(64, &lanes);
        for p in 0..64 {
            let expected = (21..42).contains(&p).then(|| lanes.lane_of(p));
            assert_eq!(routes.of(p), expected, "partition {p}");
        }
    }
}
