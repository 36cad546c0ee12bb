//! Spilled runs: sorted records written as framed rkyv batches, closed by a
//! trailer frame, and read back one validated frame at a time.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use proto_schema::{
    BatchView, FrameKind, FrameReader, Record, RecordBatch, RunTrailer, ValidBatch, write_frame,
};

use rkyv::util::AlignedVec;

use super::SortError;
use super::dedup::{CarriedKey, repeats_last};
use super::merge::SortedSource;

/// A run reader's buffer: one per open run in a merge, so kept small.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A run file on disk. Deleted when dropped, so runs never outlive the job
/// that made them, whether it succeeds or fails.
pub struct RunFile {
    path: PathBuf,
    records: u64,
}

impl RunFile {
    pub fn records(&self) -> u64 {
        self.records
    }
}

impl Drop for RunFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes sorted records into a run file.
pub struct RunWriter {
    out: BufWriter<File>,
    path: PathBuf,
    batch: RecordBatch,
    /// The last key of the frame last written, for [`Self::push_first`].
    carried: CarriedKey,
    /// The last frame's archive buffer, reused for the next.
    archive: AlignedVec,
    frame_bytes: usize,
    records: u64,
    frames: u64,
}

impl RunWriter {
    pub fn create(path: PathBuf, frame_bytes: usize) -> Result<Self, SortError> {
        let file = File::create(&path).map_err(|e| SortError::io(&path, e))?;
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, file),
            path,
            batch: RecordBatch::new(),
            carried: CarriedKey::default(),
            archive: AlignedVec::new(),
            frame_bytes,
            records: 0,
            frames: 0,
        })
    }

    fn push(&mut self, record: Record<'_>) -> Result<(), SortError> {
        self.batch.push(record);
        self.records += 1;
        if self.batch.payload_bytes() >= self.frame_bytes {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Pushes `record` unless it has the key of the record pushed last
    /// (records come in merge order, so that one is the key's first
    /// occurrence); returns whether it was pushed. The record before is
    /// still in the frame being filled, or its key carried over from the
    /// frame written: no key is copied per record.
    pub fn push_first(&mut self, record: Record<'_>) -> Result<bool, SortError> {
        if repeats_last(&self.batch, &self.carried, &record) {
            return Ok(false);
        }
        self.push(record)?;
        Ok(true)
    }

    fn write_batch(&mut self) -> Result<(), SortError> {
        if let Some(last) = self.batch.len().checked_sub(1) {
            self.carried.keep(&self.batch.record(last));
        }
        self.archive = self.batch.archive_into(std::mem::take(&mut self.archive));
        write_frame(&mut self.out, FrameKind::RecordBatch, &self.archive)
            .map_err(|e| SortError::io(&self.path, e))?;
        self.batch.clear();
        self.frames += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<RunFile, SortError> {
        if !self.batch.is_empty() {
            self.write_batch()?;
        }
        let trailer = RunTrailer {
            records: self.records,
            frames: self.frames,
        };
        write_frame(&mut self.out, FrameKind::RunTrailer, &trailer.to_archive())
            .and_then(|_| self.out.flush())
            .map_err(|e| SortError::io(&self.path, e))?;
        Ok(RunFile {
            path: self.path,
            records: self.records,
        })
    }
}

/// Reads a run file back, validating each frame once and then reading its
/// records in place.
pub struct RunReader {
    run: RunFile,
    frames: FrameReader<io::BufReader<File>>,
    batch: Option<ValidBatch>,
    next: usize,
    records_seen: u64,
    frames_seen: u64,
}

impl RunReader {
    pub fn open(run: RunFile, max_frame_bytes: u32) -> Result<Self, SortError> {
        let file = File::open(&run.path).map_err(|e| SortError::io(&run.path, e))?;
        let mut reader = Self {
            frames: FrameReader::new(
                // Small: it serves frame headers; payloads, larger than
                // it, are read straight into the frame's buffer.
                io::BufReader::with_capacity(READ_BUFFER_BYTES, file),
                max_frame_bytes,
            ),
            run,
            batch: None,
            next: 0,
            records_seen: 0,
            frames_seen: 0,
        };
        reader.load_next_frame()?;
        Ok(reader)
    }

    /// Loads frames until one has records, or checks the trailer at the end.
    fn load_next_frame(&mut self) -> Result<(), SortError> {
        let path = &self.run.path;
        let corrupt = |detail: String| SortError::CorruptRun {
            path: path.to_path_buf(),
            detail,
        };
        loop {
            // The frame before this one has been read: reuse its buffer.
            let buffer = self
                .batch
                .take()
                .map(ValidBatch::into_bytes)
                .unwrap_or_default();
            let frame = self
                .frames
                .next_frame_in(buffer)
                .map_err(|e| corrupt(e.to_string()))?
                .ok_or_else(|| corrupt("run ends without its trailer frame".into()))?;
            if frame.kind == FrameKind::RunTrailer {
                let trailer = frame.into_trailer().map_err(|e| corrupt(e.to_string()))?;
                let seen = RunTrailer {
                    records: self.records_seen,
                    frames: self.frames_seen,
                };
                if trailer != seen {
                    return Err(corrupt(format!("trailer says {trailer:?}, read {seen:?}")));
                }
                self.batch = None;
                return Ok(());
            }
            let batch = frame.into_batch().map_err(|e| corrupt(e.to_string()))?;
            self.frames_seen += 1;
            self.records_seen += batch.len() as u64;
            if !batch.is_empty() {
                self.batch = Some(batch);
                self.next = 0;
                return Ok(());
            }
        }
    }
}

impl SortedSource for RunReader {
    fn current(&self) -> Option<Record<'_>> {
        self.batch.as_ref().map(|b| b.record(self.next))
    }

    fn advance(&mut self) -> Result<(), SortError> {
        let Some(batch) = &self.batch else {
            return Ok(());
        };
        self.next += 1;
        if self.next == batch.len() {
            self.load_next_frame()?;
        }
        Ok(())
    }
}

pub fn run_path(dir: &Path, lane: usize, id: u64) -> PathBuf {
    dir.join(format!("lane{lane}-run{id:06}.qrun"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_schema::Position;

    fn write_run(path: &Path, n: u64, frame_bytes: usize) -> RunFile {
        let mut writer = RunWriter::create(path.to_path_buf(), frame_bytes).unwrap();
        for i in 0..n {
            let key = format!("key{i:05}");
            writer
                .push(Record {
                    partition: 0,
                    key: key.as_bytes(),
                    value: b"",
                    position: Position { file: 0, offset: i },
                })
                .unwrap();
        }
        writer.finish().unwrap()
    }

    fn read_all(run: RunFile) -> Result<Vec<u64>, SortError> {
        let mut reader = RunReader::open(run, 1 << 20)?;
        let mut out = Vec::new();
        while let Some(r) = reader.current() {
            out.push(r.position.offset);
            reader.advance()?;
        }
        Ok(out)
    }

    #[test]
    fn round_trips_and_deletes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let run = write_run(&path, 1000, 256);
        assert_eq!(run.records(), 1000);
        assert_eq!(read_all(run).unwrap(), (0..1000).collect::<Vec<_>>());
        assert!(!path.exists(), "a consumed run file must be deleted");
    }

    #[test]
    fn truncated_or_corrupt_runs_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let original = {
            let run = write_run(&path, 500, 256);
            let bytes = std::fs::read(&path).unwrap();
            std::mem::forget(run);
            bytes
        };
        // Cut inside frames, and exactly before the trailer frame (a clean
        // frame boundary that only the trailer reveals).
        let before_trailer = original.len() - 32;
        for cut in [
            0,
            16,
            original.len() / 2,
            before_trailer,
            original.len() - 1,
        ] {
            std::fs::write(&path, &original[..cut]).unwrap();
            let run = RunFile {
                path: path.clone(),
                records: 500,
            };
            let err = read_all(run).map(|_| ()).unwrap_err();
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
        let mut flipped = original.clone();
        flipped[original.len() / 3] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = read_all(RunFile {
            path: path.clone(),
            records: 500,
        })
        .unwrap_err();
        assert!(matches!(err, SortError::CorruptRun { .. }), "{err}");
    }
}
