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

/// Runs a spill's work on the spill's thread: the node passes one that
/// charges the work's allocations to the lane's memory account.
pub type SpillContext = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// A run sorted and written by a spill thread, with what the lane takes
/// back: the emptied buffer, and the positions of the duplicates the
/// write dropped (at most one per record of the run, 16 bytes each:
/// within the headroom the memory plan leaves beside the run buffers).
struct Spilled {
    file: RunFile,
    buffer: RunBuffer,
    duplicates: Vec<Position>,
}

/// Gathers a lane's records into runs and spills them. A full run is
/// sorted and written on a thread of its own while the next one fills,
/// so the lane keeps taking records (and the scanners feeding it keep
/// reading) through a spill: with the spill in line, a lane's burst of
/// sorting stalled every scanner, and a 2-core ingest of lines used 1.3
/// cores while it scanned. The lane holds two run buffers for it: one
/// filling, one spilling.
pub struct LaneSorter {
    dir: PathBuf,
    lane: usize,
    limits: SortLimits,
    buffer: RunBuffer,
    /// The run being sorted and written, if any: at most one per lane.
    spilling: Option<std::thread::JoinHandle<Result<Spilled, SortError>>>,
    spill_context: SpillContext,
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
            spilling: None,
            spill_context: Arc::new(|work| work()),
            runs: VecDeque::new(),
            next_run: 0,
            stats: SortStats::default(),
        }
    }

    /// Runs every spill's work through `context` on the spill's thread.
    pub fn with_spill_context(mut self, context: SpillContext) -> Self {
        self.spill_context = context;
        self
    }

    /// Adds a batch, spilling a run once the buffer holds `run_bytes` (the
    /// governor moves that limit). Duplicates dropped while spilling are
    /// passed to `on_duplicate` once the spill has ended: at the call that
    /// starts the next spill, or at `finish`.
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
            // The previous spill must be done before this one starts: a
            // lane holds two buffers, no more.
            let emptied = self.join_spill(on_duplicate)?.unwrap_or_default();
            let full = std::mem::replace(&mut self.buffer, emptied);
            let path = self.next_run_path();
            let frame_bytes = self.limits.frame_bytes;
            let context = self.spill_context.clone();
            let spill = move || {
                let (mut full, mut result) = (Some(full), None);
                context(&mut || {
                    let run = full.take().expect("the spill runs once").sort();
                    result = Some(spill_run(run, &path, frame_bytes));
                });
                result.expect("the spill context runs the spill")
            };
            let thread = std::thread::Builder::new()
                .name(format!("quern-spill-{}", self.lane))
                .spawn(spill)
                .map_err(|e| SortError::io(&self.dir, e))?;
            self.spilling = Some(thread);
        }
        Ok(())
    }

    /// Waits for the spill in progress, if any: its run joins the others
    /// and its duplicates are reported. Returns its emptied buffer.
    fn join_spill(
        &mut self,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<Option<RunBuffer>, SortError> {
        let Some(thread) = self.spilling.take() else {
            return Ok(None);
        };
        let spilled = thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        spilled.duplicates.into_iter().for_each(&mut *on_duplicate);
        self.runs.push_back(spilled.file);
        self.stats.runs_spilled += 1;
        Ok(Some(spilled.buffer))
    }

    fn next_run_path(&mut self) -> PathBuf {
        self.next_run += 1;
        run_path(&self.dir, self.lane, self.next_run - 1)
    }

    fn write_run(
        &mut self,
        source: &mut impl SortedSource,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<RunFile, SortError> {
        let path = self.next_run_path();
        write_sorted(source, path, self.limits.frame_bytes, on_duplicate)
    }

    /// Ends the input: merges runs until the rest fit the open-run limit,
    /// then returns the final merge, which streams the first occurrence of
    /// every key in merge order.
    pub fn finish(
        mut self,
        on_duplicate: &mut dyn FnMut(Position),
    ) -> Result<(LaneMerge, SortStats), SortError> {
        self.join_spill(on_duplicate)?;
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

impl Drop for LaneSorter {
    /// A lane that ends early (its job failed) still waits for its spill:
    /// no thread outlives the lane, writing into a scratch directory that
    /// is being removed.
    fn drop(&mut self) {
        if let Some(thread) = self.spilling.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `source` into a new run file at `path`, dropping repeats of the
/// record before (passed to `on_duplicate`).
fn write_sorted(
    source: &mut impl SortedSource,
    path: PathBuf,
    frame_bytes: usize,
    on_duplicate: &mut dyn FnMut(Position),
) -> Result<RunFile, SortError> {
    let mut writer = RunWriter::create(path, frame_bytes)?;
    while let Some(record) = source.current() {
        let position = record.position;
        if !writer.push_first(record)? {
            on_duplicate(position);
        }
        source.advance()?;
    }
    writer.finish()
}

/// A spill thread's work: writes the sorted run, then empties it for the
/// lane to fill again.
fn spill_run(mut run: SortedRun, path: &Path, frame_bytes: usize) -> Result<Spilled, SortError> {
    let mut duplicates = Vec::new();
    let file = write_sorted(&mut run, path.to_path_buf(), frame_bytes, &mut |position| {
        duplicates.push(position)
    })?;
    Ok(Spilled {
        file,
        buffer: run.recycle(),
        duplicates,
    })
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

    fn batch_of(keys: std::ops::Range<u32>) -> RecordBatch {
        let mut batch = RecordBatch::new();
        for i in keys {
            let key = i.to_be_bytes();
            let position = Position {
                file: 0,
                offset: u64::from(i),
            };
            batch.push(Record {
                partition: 0,
                key: &key,
                value: b"",
                position,
            });
        }
        batch
    }

    fn sorter_in(dir: &Path, context: SpillContext) -> LaneSorter {
        let limits = SortLimits {
            frame_bytes: 1024,
            max_open_runs: 64,
            max_record: 16,
        };
        let pool = Arc::new(BatchPool::new(1 << 20));
        LaneSorter::new(dir.to_path_buf(), 0, limits, pool).with_spill_context(context)
    }

    /// A lane holds two run buffers, never more: a spill starts only once
    /// the one before has ended, and every spill runs in the context given.
    #[test]
    fn one_spill_at_a_time_per_lane_each_in_its_context() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let (running, most, spills) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let context: SpillContext = {
            let (running, most, spills) = (running.clone(), most.clone(), spills.clone());
            Arc::new(move |work| {
                most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                work();
                running.fetch_sub(1, SeqCst);
                spills.fetch_add(1, SeqCst);
            })
        };
        let mut sorter = sorter_in(dir.path(), context);
        for start in (0..2000).step_by(100) {
            sorter
                .add(batch_of(start..start + 100), 1000, &mut |_| {})
                .unwrap();
        }
        let (mut merge, stats) = sorter.finish(&mut |_| {}).unwrap();
        let mut merged = 0;
        while let Some(batch) = merge.next_batch(1 << 16, None).unwrap() {
            merged += batch.len();
        }
        assert_eq!(merged, 2000);
        assert_eq!(most.load(SeqCst), 1, "two spills of one lane at once");
        // Every batch filled a run, and each spilled in the background.
        assert_eq!(stats.runs_spilled, 20);
        assert_eq!(spills.load(SeqCst), 20);
    }

    /// A lane dropped while a run spills (its job failed) waits for the
    /// spill: no thread outlives it, and no run file is left behind.
    #[test]
    fn a_sorter_dropped_mid_spill_waits_for_it() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let context: SpillContext = {
            let done = done.clone();
            Arc::new(move |work| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                work();
                done.store(true, SeqCst);
            })
        };
        let mut sorter = sorter_in(dir.path(), context);
        sorter.add(batch_of(0..100), 1000, &mut |_| {}).unwrap();
        assert!(
            sorter.spilling.is_some(),
            "a full run spills in the background"
        );
        drop(sorter);
        assert!(
            done.load(SeqCst),
            "the drop returned before the spill ended"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
