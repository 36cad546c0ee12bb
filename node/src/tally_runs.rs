//! Per-file counters on their way to the ledger: spilled as runs sorted by
//! file, merged once at the end of the job, and written once per file, in
//! key order.
//!
//! Stages count per file as records pass, and dedup meets files in key
//! order, which is random. Written straight to the ledger as RocksDB merge
//! operands every few thousand files, the counts of a job over a million
//! small files were about 15 million operands spread over the whole key
//! range, which RocksDB merged again in compaction after compaction: 85 of
//! the job's 107 CPU seconds. Here each stage's window of counts becomes a
//! sorted run. Runs are kept in levels: [`RUNS_PER_LEVEL`] runs of one
//! level are merged into one run of the next, so a count is rewritten once
//! per level (a logarithmic number of times), a merge opens a bounded
//! number of runs, and the last merge sums each file's counts.
//!
//! A run is a file of frames (`FrameKind::FileCounts`, checksummed), each
//! holding tuples `file u32 | read | unique | duplicates | rejected` (u64s,
//! little-endian) in strictly ascending file order; a run that breaks any
//! of that is refused with its path and offset.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto_schema::{DatasetId, FrameError, FrameKind, FrameReader, write_frame};
use rkyv::util::AlignedVec;

use crate::store::ledger::{FileCounts, LedgerPart, LedgerWriter};
use crate::store::{Store, StoreError};

/// Runs of one level merged into one run of the next: the fan-in of a
/// merge, which holds a frame and a read buffer per run.
pub const RUNS_PER_LEVEL: usize = 16;
/// Tuples per frame (9 KiB).
const FRAME_TUPLES: usize = 256;
const TUPLE_BYTES: usize = 4 + 4 * 8;

#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("counter run {path}: {source}")]
    Frame { path: PathBuf, source: FrameError },
    #[error("counter run {path} is corrupt near byte {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: &'static str,
    },
    #[error(transparent)]
    Ledger(#[from] StoreError),
}

/// The runs of one job, in its scratch directory.
pub struct TallyRuns {
    dir: PathBuf,
    runs: Mutex<Runs>,
}

#[derive(Default)]
struct Runs {
    /// `levels[l]` holds runs merged from `RUNS_PER_LEVEL` runs of level
    /// `l - 1` (level 0: the stages' windows); fewer than
    /// `RUNS_PER_LEVEL` each.
    levels: Vec<Vec<PathBuf>>,
    next_id: u64,
}

impl Runs {
    fn next_path(&mut self, dir: &Path) -> PathBuf {
        self.next_id += 1;
        dir.join(format!("counts-{:06}.qrun", self.next_id))
    }
}

impl TallyRuns {
    /// Runs go to `dir`, created if missing (the job's scratch directory,
    /// removed with it).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            runs: Mutex::default(),
        }
    }

    /// Spills `counts`, sorted by file with each file once, as a run.
    pub fn add(&self, counts: &[(u32, FileCounts)]) -> Result<(), TallyError> {
        debug_assert!(counts.windows(2).all(|w| w[0].0 < w[1].0));
        if counts.is_empty() {
            return Ok(());
        }
        let mut runs = self.runs.lock().expect("tally runs lock");
        std::fs::create_dir_all(&self.dir).map_err(|source| TallyError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = runs.next_path(&self.dir);
        let mut writer = RunWriter::create(path)?;
        for &(file, c) in counts {
            writer.push(file, c)?;
        }
        let mut run = writer.finish()?;
        let mut level = 0;
        loop {
            if runs.levels.len() == level {
                runs.levels.push(Vec::new());
            }
            runs.levels[level].push(run);
            if runs.levels[level].len() < RUNS_PER_LEVEL {
                return Ok(());
            }
            let full = std::mem::take(&mut runs.levels[level]);
            let mut writer = RunWriter::create(runs.next_path(&self.dir))?;
            merge(&full, |file, c| writer.push(file, c))?;
            run = writer.finish()?;
            for path in full {
                let _ = std::fs::remove_file(path);
            }
            level += 1;
        }
    }

    /// Merges every run and writes each file's summed counts to the
    /// ledger of `job`, once per file and in key order; deletes the runs.
    pub fn write_to(&self, store: &Store, dataset: DatasetId, job: u32) -> Result<(), TallyError> {
        let levels = std::mem::take(&mut self.runs.lock().expect("tally runs lock").levels);
        let paths: Vec<PathBuf> = levels.into_iter().flatten().collect();
        let mut ledger =
            LedgerWriter::new(store, LedgerPart::Counts, dataset, job, self.dir.clone());
        merge(&paths, |file, c| Ok(ledger.add_counts(file, c)?))?;
        ledger.finish()?;
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// Merges `paths` by file, summing each file's counts, into `out`.
fn merge(
    paths: &[PathBuf],
    mut out: impl FnMut(u32, FileCounts) -> Result<(), TallyError>,
) -> Result<(), TallyError> {
    let mut readers = paths
        .iter()
        .map(|p| RunReader::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heads = BinaryHeap::new();
    for (i, reader) in readers.iter_mut().enumerate() {
        if let Some((file, _)) = reader.peek()? {
            heads.push(Reverse((file, i)));
        }
    }
    let mut current: Option<(u32, FileCounts)> = None;
    while let Some(Reverse((file, i))) = heads.pop() {
        let (_, counts) = readers[i].take()?;
        if let Some(next) = readers[i].peek()? {
            heads.push(Reverse((next.0, i)));
        }
        match &mut current {
            Some((f, total)) if *f == file => total.add(counts),
            _ => {
                if let Some((f, total)) = current.replace((file, counts)) {
                    out(f, total)?;
                }
            }
        }
    }
    if let Some((f, total)) = current {
        out(f, total)?;
    }
    Ok(())
}

struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
    frame: Vec<u8>,
}

impl RunWriter {
    fn create(path: PathBuf) -> Result<Self, TallyError> {
        let file = File::create(&path).map_err(|source| TallyError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
            frame: Vec::with_capacity(FRAME_TUPLES * TUPLE_BYTES),
        })
    }

    fn push(&mut self, file: u32, c: FileCounts) -> Result<(), TallyError> {
        self.frame.extend_from_slice(&file.to_le_bytes());
        for v in [c.read, c.unique, c.duplicates, c.rejected] {
            self.frame.extend_from_slice(&v.to_le_bytes());
        }
        if self.frame.len() == FRAME_TUPLES * TUPLE_BYTES {
            self.write_frame()?;
        }
        Ok(())
    }

    fn write_frame(&mut self) -> Result<(), TallyError> {
        if !self.frame.is_empty() {
            write_frame(&mut self.out, FrameKind::FileCounts, &self.frame)
                .map_err(|source| self.io_error(source))?;
            self.frame.clear();
        }
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> TallyError {
        TallyError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn finish(mut self) -> Result<PathBuf, TallyError> {
        self.write_frame()?;
        self.out.flush().map_err(|source| self.io_error(source))?;
        Ok(self.path)
    }
}

/// Reads a run's tuples in order, checking each frame and the order.
struct RunReader {
    path: PathBuf,
    frames: FrameReader<BufReader<File>>,
    frame: AlignedVec,
    frame_offset: u64,
    next: usize,
    last_file: Option<u32>,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, TallyError> {
        let file = File::open(path).map_err(|source| TallyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            frames: FrameReader::new(BufReader::new(file), (FRAME_TUPLES * TUPLE_BYTES) as u32),
            frame: AlignedVec::new(),
            frame_offset: 0,
            next: 0,
            last_file: None,
        })
    }

    /// The next tuple without consuming it, loading the next frame if needed.
    fn peek(&mut self) -> Result<Option<(u32, FileCounts)>, TallyError> {
        if self.next == self.frame.len() {
            self.frame_offset = self.frames.offset();
            let buffer = std::mem::take(&mut self.frame);
            let frame = self
                .frames
                .next_frame_in(buffer)
                .map_err(|source| TallyError::Frame {
                    path: self.path.clone(),
                    source,
                })?;
            let Some(frame) = frame else {
                return Ok(None);
            };
            self.frame = frame
                .into_payload(FrameKind::FileCounts)
                .map_err(|source| TallyError::Frame {
                    path: self.path.clone(),
                    source,
                })?;
            self.next = 0;
            if self.frame.is_empty() || self.frame.len() % TUPLE_BYTES != 0 {
                return Err(self.corrupt("a frame does not hold whole counter tuples"));
            }
        }
        let tuple = &self.frame[self.next..self.next + TUPLE_BYTES];
        let u64_at =
            |i: usize| u64::from_le_bytes(tuple[4 + 8 * i..12 + 8 * i].try_into().unwrap());
        let file = u32::from_le_bytes(tuple[..4].try_into().unwrap());
        if self.last_file.is_some_and(|last| last >= file) {
            return Err(self.corrupt("files are not in ascending order"));
        }
        let counts = FileCounts {
            read: u64_at(0),
            unique: u64_at(1),
            duplicates: u64_at(2),
            rejected: u64_at(3),
        };
        Ok(Some((file, counts)))
    }

    /// Consumes the tuple [`peek`](Self::peek) returned.
    fn take(&mut self) -> Result<(u32, FileCounts), TallyError> {
        let tuple = self.peek()?.expect("a tuple was peeked");
        self.next += TUPLE_BYTES;
        self.last_file = Some(tuple.0);
        Ok(tuple)
    }

    fn corrupt(&self, detail: &'static str) -> TallyError {
        TallyError::Corrupt {
            path: self.path.clone(),
            offset: self.frame_offset,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn counts(unique: u64) -> FileCounts {
        FileCounts {
            read: unique * 2,
            unique,
            duplicates: unique,
            rejected: 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the windows (enough of them for runs to be merged
        /// across levels), the ledger gets each file's sum, and no run is
        /// left behind.
        #[test]
        fn every_file_is_summed_once_in_order(
            windows in proptest::collection::vec(
                proptest::collection::btree_map(0u32..3000, 1u64..5, 0..200), 0..300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let runs = TallyRuns::new(dir.path().join("counts"));
            let mut want: BTreeMap<u32, FileCounts> = BTreeMap::new();
            for window in &windows {
                let window: Vec<(u32, FileCounts)> = window.iter().map(|(&f, &u)| (f, counts(u))).collect();
                for &(f, c) in &window {
                    want.entry(f).or_default().add(c);
                }
                runs.add(&window).unwrap();
                let levels = &runs.runs.lock().unwrap().levels;
                prop_assert!(levels.iter().all(|l| l.len() < RUNS_PER_LEVEL));
            }
            let store = Store::open(&dir.path().join("store"), 8 << 20, Access::ReadWrite).unwrap();
            runs.write_to(&store, DatasetId(1), 7).unwrap();
            for (&file, &c) in &want {
                prop_assert_eq!(store.file_counts(DatasetId(1), 7, file).unwrap(), c);
            }
            let left = std::fs::read_dir(dir.path().join("counts")).map_or(0, |d| d.count());
            prop_assert_eq!(left, 0);
        }
    }

    #[test]
    fn a_corrupt_run_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let runs = TallyRuns::new(dir.path().to_path_buf());
        runs.add(&[(1, counts(1)), (2, counts(2))]).unwrap();
        let path = runs.runs.lock().unwrap().levels[0][0].clone();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let store = Store::open(&dir.path().join("store"), 8 << 20, Access::ReadWrite).unwrap();
        let err = runs
            .write_to(&store, DatasetId(1), 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("counts-000001.qrun") && err.contains("checksum"),
            "{err}"
        );
    }
}
