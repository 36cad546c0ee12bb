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
//! holding tuples `gap | read | unique | duplicates | rejected` in strictly
//! ascending file order, every field a LEB128 varint: `gap` is the file
//! less one more than the run's file before (the file itself first), so a
//! tuple of small counts takes 5 or 6 bytes where fixed widths took 36 (a
//! job over a million small files spills one tuple per record, and the
//! runs' bytes were a large share of its I/O). A run that breaks any of
//! that is refused with its path and offset.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto_schema::varint::{self, VarintError};
use proto_schema::{DatasetId, FrameError, FrameKind, FrameReader, write_frame};
use rkyv::util::AlignedVec;

use crate::store::ledger::{FileCounts, LedgerPart, LedgerWriter};
use crate::store::{Store, StoreError};

/// Runs of one level merged into one run of the next: the fan-in of a
/// merge, which holds a frame and a read buffer per run (about 20 KiB).
/// Each level rewrites every count once more.
pub const RUNS_PER_LEVEL: usize = 64;
/// Tuples per frame.
const FRAME_TUPLES: usize = 256;
/// The most bytes a tuple takes: a u32 and four u64s as varints.
const MAX_TUPLE_BYTES: usize = 5 + 4 * 10;

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
    frame_tuples: usize,
    /// The least file the next tuple may have.
    next_file: u64,
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
            frame: Vec::with_capacity(FRAME_TUPLES * MAX_TUPLE_BYTES),
            frame_tuples: 0,
            next_file: 0,
        })
    }

    fn push(&mut self, file: u32, c: FileCounts) -> Result<(), TallyError> {
        debug_assert!(u64::from(file) >= self.next_file, "files must ascend");
        varint::put(&mut self.frame, u64::from(file) - self.next_file);
        self.next_file = u64::from(file) + 1;
        for v in [c.read, c.unique, c.duplicates, c.rejected] {
            varint::put(&mut self.frame, v);
        }
        self.frame_tuples += 1;
        if self.frame_tuples == FRAME_TUPLES {
            self.write_frame()?;
        }
        Ok(())
    }

    fn write_frame(&mut self) -> Result<(), TallyError> {
        if !self.frame.is_empty() {
            write_frame(&mut self.out, FrameKind::FileCounts, &self.frame)
                .map_err(|source| self.io_error(source))?;
            self.frame.clear();
            self.frame_tuples = 0;
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

/// Reads a run's tuples in order, checking each frame and each tuple.
struct RunReader {
    path: PathBuf,
    frames: FrameReader<BufReader<File>>,
    frame: AlignedVec,
    frame_offset: u64,
    /// Where the next tuple starts in `frame`.
    next: usize,
    /// The least file the next tuple may have.
    next_file: u64,
    /// The tuple [`peek`](Self::peek) decoded, and its length.
    peeked: Option<((u32, FileCounts), usize)>,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, TallyError> {
        let file = File::open(path).map_err(|source| TallyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            frames: FrameReader::new(
                BufReader::new(file),
                (FRAME_TUPLES * MAX_TUPLE_BYTES) as u32,
            ),
            frame: AlignedVec::new(),
            frame_offset: 0,
            next: 0,
            next_file: 0,
            peeked: None,
        })
    }

    /// The next tuple without consuming it, loading the next frame if needed.
    fn peek(&mut self) -> Result<Option<(u32, FileCounts)>, TallyError> {
        if let Some((tuple, _)) = self.peeked {
            return Ok(Some(tuple));
        }
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
            if self.frame.is_empty() {
                return Err(self.corrupt("an empty frame"));
            }
        }
        let (tuple, len) = self
            .decode(&self.frame[self.next..])
            .map_err(|e| self.corrupt(e))?;
        self.peeked = Some((tuple, len));
        Ok(Some(tuple))
    }

    /// The tuple at the start of `bytes`, and its length.
    fn decode(&self, bytes: &[u8]) -> Result<((u32, FileCounts), usize), &'static str> {
        let mut at = 0;
        let mut field = |bits| {
            let (n, used) = varint::get(&bytes[at..], bits).map_err(|e| match e {
                VarintError::CutShort => "a tuple cut short",
                VarintError::TooWide(_) => "a field too wide",
            })?;
            at += used;
            Ok::<u64, &'static str>(n)
        };
        let file =
            u32::try_from(self.next_file + field(32)?).map_err(|_| "a file number past 32 bits")?;
        let mut counts = [0; 4];
        for count in &mut counts {
            *count = field(64)?;
        }
        let [read, unique, duplicates, rejected] = counts;
        let counts = FileCounts {
            read,
            unique,
            duplicates,
            rejected,
        };
        Ok(((file, counts), at))
    }

    /// Consumes the tuple [`peek`](Self::peek) returned.
    fn take(&mut self) -> Result<(u32, FileCounts), TallyError> {
        self.peek()?;
        let (tuple, len) = self.peeked.take().expect("a tuple was peeked");
        self.next += len;
        self.next_file = u64::from(tuple.0) + 1;
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

    /// A frame whose checksum holds but whose bytes are not whole tuples
    /// (as a bug writing them would leave) is refused, not misread.
    #[test]
    fn a_frame_of_broken_tuples_is_refused_with_its_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        for (payload, detail) in [
            (&[3u8, 1, 1, 0][..], "a tuple cut short"),
            (
                &[0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0, 0][..],
                "a field too wide",
            ),
        ] {
            let path = dir.path().join("counts-000001.qrun");
            let mut file = std::fs::File::create(&path).unwrap();
            write_frame(&mut file, FrameKind::FileCounts, payload).unwrap();
            let mut reader = RunReader::open(&path).unwrap();
            let err = reader.peek().unwrap_err().to_string();
            assert!(
                err.contains("counts-000001.qrun")
                    && err.contains(detail)
                    && err.contains("byte 0"),
                "{err}"
            );
        }
    }

    /// Small counts of ascending files take a few bytes each: the point of
    /// the varints.
    #[test]
    fn a_tuple_of_small_counts_takes_a_few_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let runs = TallyRuns::new(dir.path().to_path_buf());
        let window: Vec<(u32, FileCounts)> = (0..1000).map(|f| (f * 3, counts(1))).collect();
        runs.add(&window).unwrap();
        let path = runs.runs.lock().unwrap().levels[0][0].clone();
        let bytes = std::fs::metadata(&path).unwrap().len();
        assert!(bytes < 1000 * 6, "{bytes} bytes for 1000 tuples");
    }
}
