//! Quern's external sort, plain synchronous code shared by the node (a
//! lane's sort-merge) and the coordinator client (manifests put in path
//! order): gather records into a run within a memory share, sort and spill
//! it, and finally merge every run, with a bounded number of runs open at
//! once (extra merge passes when there are more). Also the batch pool the
//! stages recycle batches through, and the exact dedup of a sorted stream.
//!
//! Duplicates met while spilling, in intermediate passes or in the final
//! merge are dropped as they are met (and reported, so counters
//! reconcile), never copied: the final merge streams only first
//! occurrences, which the dedup stage checks and counts.

pub mod batch_pool;
pub mod dedup;
pub mod digits;
pub mod merge;
pub mod run;
pub mod run_file;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto_schema::{BatchShape, BatchView, Position, Record, RecordBatch};

use batch_pool::BatchPool;
use dedup::{CarriedKey, repeats_last};
use merge::{KMerge, MergeOrder, SortedSource};
use run::{RunBuffer, SortedRun};
use run_file::{RunFile, RunReader, RunWriter, run_path};

#[derive(Debug, thiserror::Error)]
pub enum SortError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spilled run {path} is corrupt: {detail}")]
    CorruptRun { path: PathBuf, detail: String },
}

impl SortError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        SortError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Limits of one lane's sort.
#[derive(Debug, Clone)]
pub struct SortLimits {
    /// Target size of a spilled frame.
    pub frame_bytes: usize,
    pub max_open_runs: usize,
    pub max_record: usize,
}

impl SortLimits {
    /// The largest frame a run file of ours can hold: a frame is cut once it
    /// reaches `frame_bytes`, so by then it holds at most one more record.
    fn max_frame_payload(&self) -> u32 {
        (2 * self.frame_bytes + self.max_record + 64 * 1024).min(u32::MAX as usize) as u32
    }
}

/// The order of runs and of a lane's output: [`Record::merge_order`].
pub const MERGE_ORDER: MergeOrder = MergeOrder::PartitionThenKey;

/// Counts of the work a lane's sort did, for the job summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct SortStats {
    pub runs_spilled: u64,
    pub merge_passes: u64,
}

pub struct LaneSorter {
    dir: PathBuf,
    lane: usize,
    limits: SortLimits,
    buffer: RunBuffer,
    /// Spilled runs, oldest first.
    runs: VecDeque<RunFile>,
    next_run: u64,
    stats: SortStats,
    /// Where batches go for reuse once copied into the run.
    pool: Arc<BatchPool>,
}

impl LaneSorter {
    pub fn new(dir: PathBuf, lane: usize, limits: SortLimits, pool: Arc<BatchPool>) -> Self {
        Self {
            dir,
            lane,
            limits,
            pool,
            buffer: RunBuffer::default(),
            runs: VecDeque::new(),
            next_run: 0,
            stats: SortStats::default(),
        }
    }

    /// Adds a batch, spilling a run once the buffer holds `run_bytes` (the
    /// governor moves that limit). Duplicates dropped while spilling are
    /// passed to `on_duplicate`.
    pub fn add(
        &mut self,
        batch: RecordBatch,
        run_bytes: usize,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<(), SortError> {
        self.buffer.push(&batch);
        self.pool.give(batch);
        self.spill_if_full(run_bytes, on_duplicate)
    }

    /// As [`add`](Self::add), for a batch read in place (an archive
    /// received from another node), whose buffer is not the pool's.
    pub fn add_view(
        &mut self,
        batch: &impl BatchView,
        run_bytes: usize,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<(), SortError> {
        self.buffer.push(batch);
        self.spill_if_full(run_bytes, on_duplicate)
    }

    fn spill_if_full(
        &mut self,
        run_bytes: usize,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<(), SortError> {
        if self.buffer.bytes() >= run_bytes {
            let mut run = std::mem::take(&mut self.buffer).sort();
            let file = self.write_run(&mut run, on_duplicate)?;
            self.buffer = run.recycle();
            self.runs.push_back(file);
            self.stats.runs_spilled += 1;
        }
        Ok(())
    }

    fn write_run(
        &mut self,
        source: &mut impl SortedSource,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<RunFile, SortError> {
        let path = run_path(&self.dir, self.lane, self.next_run);
        self.next_run += 1;
        let mut writer = RunWriter::create(path, self.limits.frame_bytes)?;
        while let Some(record) = source.current() {
            let position = record.position;
            if !writer.push_first(record)? {
                on_duplicate(position);
            }
            source.advance()?;
        }
        writer.finish()
    }

    /// Ends the input: merges runs until the rest fit the open-run limit,
    /// then returns the final merge, which streams the first occurrence of
    /// every key in merge order.
    pub fn finish(
        mut self,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<(LaneMerge, SortStats), SortError> {
        let last_is_empty = self.buffer.bytes() == 0;
        let mut last = std::mem::take(&mut self.buffer).sort();
        // Once runs have spilled, the last one spills too. Kept in memory,
        // it sat beside the merge's read buffers for the whole merge, so
        // the final merge held as much as the buffer happened to hold plus
        // a frame per run, and the peak grew with the number of runs
        // (measured: +8% from 2 GB to 8 GB of input). Spilled, the merge
        // holds one frame per open run and nothing else.
        let in_memory = if self.runs.is_empty() {
            Some(last)
        } else {
            if !last_is_empty {
                let file = self.write_run(&mut last, on_duplicate)?;
                self.runs.push_back(file);
                self.stats.runs_spilled += 1;
            }
            drop(last);
            None
        };
        let open_slot = usize::from(in_memory.is_some());
        while self.runs.len() + open_slot > self.limits.max_open_runs {
            let group: Vec<RunFile> = self
                .runs
                .drain(..self.limits.max_open_runs.min(self.runs.len()))
                .collect();
            let mut merged = self.open_merge(group, None)?;
            let file = self.write_run(&mut merged, on_duplicate)?;
            self.runs.push_back(file);
            self.stats.merge_passes += 1;
        }
        let runs: Vec<RunFile> = self.runs.drain(..).collect();
        let merge = self.open_merge(runs, in_memory)?;
        let last = BatchShape::default();
        let pool = self.pool.clone();
        let lane_merge = LaneMerge {
            merge,
            last,
            carried: CarriedKey::default(),
            pool,
        };
        Ok((lane_merge, self.stats))
    }

    fn open_merge(
        &self,
        runs: Vec<RunFile>,
        in_memory: Option<SortedRun>,
    ) -> Result<KMerge<RunSource>, SortError> {
        let max_frame = self.limits.max_frame_payload();
        let mut sources = runs
            .into_iter()
            .map(|run| RunReader::open(run, max_frame).map(RunSource::File))
            .collect::<Result<Vec<_>, _>>()?;
        sources.extend(in_memory.map(RunSource::Memory));
        Ok(KMerge::new(sources, MERGE_ORDER))
    }
}

/// A source in a merge: a run still in memory, or one read back from disk.
pub enum RunSource {
    Memory(SortedRun),
    File(RunReader),
}

impl SortedSource for RunSource {
    fn current(&self) -> Option<Record<'_>> {
        match self {
            RunSource::Memory(run) => run.current(),
            RunSource::File(run) => run.current(),
        }
    }

    fn advance(&mut self) -> Result<(), SortError> {
        match self {
            RunSource::Memory(run) => run.advance(),
            RunSource::File(run) => run.advance(),
        }
    }
}

/// The final merge of a lane, handed out in batches of first occurrences.
pub struct LaneMerge {
    merge: KMerge<RunSource>,
    /// Shape of the last batch handed out, to size the next one.
    last: BatchShape,
    /// The last key handed out, to drop its repeats at the next batch's
    /// start.
    carried: CarriedKey,
    pool: Arc<BatchPool>,
}

impl LaneMerge {
    /// The next batch of about `target_bytes`, or `None` when done. With
    /// `on_duplicate`, a record repeating the key of the one before (not
    /// its first occurrence: the merge order puts that first) is not
    /// copied into the batch but passed to it; without, repeats are handed
    /// out too.
    pub fn next_batch(
        &mut self,
        target_bytes: usize,
        mut on_duplicate: Option<&mut dyn FnMut(Position)>,
    ) -> Result<Option<RecordBatch>, SortError> {
        let mut batch = self.pool.take(self.last);
        while let Some(record) = self.merge.current() {
            match &mut on_duplicate {
                Some(dropped) if repeats_last(&batch, &self.carried, &record) => {
                    dropped(record.position)
                }
                _ => batch.push(record),
            }
            self.merge.advance()?;
            if batch.payload_bytes() >= target_bytes {
                break;
            }
        }
        let Some(last) = batch.len().checked_sub(1) else {
            self.pool.give(batch);
            return Ok(None);
        };
        self.carried.keep(&batch.record(last));
        self.last = batch.shape();
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::BatchView;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the run size and open-run limit (forcing spills and
        /// multi-pass merges), the output is the sorted input minus exactly
        /// the duplicates reported, and those are never first occurrences.
        #[test]
        fn spills_and_passes_preserve_every_record(
            records in proptest::collection::vec((0u16..2, proptest::collection::vec(0u8..4, 0..4)), 0..300),
            batch_size in 1usize..40,
            run_bytes in 1usize..4000,
            max_open_runs in 2usize..5,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let limits = SortLimits { frame_bytes: 64, max_open_runs, max_record: 16 };
            let pool = Arc::new(BatchPool::new(1 << 20));
            let mut sorter = LaneSorter::new(dir.path().to_path_buf(), 0, limits, pool);
            let mut dropped = Vec::new();
            for (b, chunk) in records.chunks(batch_size).enumerate() {
                let mut batch = RecordBatch::new();
                for (i, (partition, key)) in chunk.iter().enumerate() {
                    let position = Position { file: b as u32, offset: i as u64 };
                    batch.push(Record { partition: *partition, key, value: b"", position });
                }
                sorter.add(batch, run_bytes, &mut |p| dropped.push(p)).unwrap();
            }
            let (mut merge, _stats) = sorter.finish(&mut |p| dropped.push(p)).unwrap();
            let mut out = Vec::new();
            while let Some(batch) = merge.next_batch(100, Some(&mut |p| dropped.push(p))).unwrap() {
                for i in 0..batch.len() {
                    let r = batch.record(i);
                    out.push((r.partition, r.key.to_vec(), r.position));
                }
            }
            drop(merge);
            let mut all: Vec<_> = records.chunks(batch_size).enumerate().flat_map(|(b, chunk)| {
                chunk.iter().enumerate().map(move |(i, (p, k))| (*p, k.clone(), Position { file: b as u32, offset: i as u64 }))
            }).collect();
            all.sort();
            // Output is sorted and, together with the dropped records, is
            // exactly the input.
            prop_assert!(out.windows(2).all(|w| w[0] < w[1]));
            // One record per key: the merge dropped every repeat.
            prop_assert!(out.windows(2).all(|w| (w[0].0, &w[0].1) != (w[1].0, &w[1].1)));
            let mut rejoined = out.clone();
            rejoined.extend(all.iter().filter(|r| dropped.contains(&r.2)).cloned());
            rejoined.sort();
            prop_assert_eq!(&rejoined, &all);
            // A dropped record is never the first occurrence of its key.
            let mut first = std::collections::HashMap::new();
            for (p, k, pos) in &all {
                first.entry((*p, k.clone())).or_insert(*pos);
            }
            for (p, k, pos) in &all {
                if dropped.contains(pos) {
                    prop_assert_ne!(first[&(*p, k.clone())], *pos);
                }
            }
            // No run files are left behind.
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
