//! Record batches: many records in a few contiguous buffers.
//!
//! A batch stores key bytes and value bytes back to back, with end offsets,
//! plus each record's partition and position. Moving a batch between actors
//! moves six vectors, not millions of small allocations; sorting permutes
//! indices into it; spilling archives it with rkyv so a reader can validate a
//! frame once and then read it in place.

use std::cmp::Ordering;

use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// Where a record was first seen inside one job: the file's sequence number
/// in manifest order, then the byte offset of the record's first byte in the
/// (decompressed) file. Ordering by position is ordering by input order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub file: u32,
    pub offset: u64,
}

/// One record borrowed from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub partition: u16,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub position: Position,
}

impl Record<'_> {
    /// The order of sorted runs and of the store: partition, then key bytes
    /// (memcmp, as `LC_ALL=C sort` compares), then position so that among
    /// equal keys the first occurrence comes first.
    pub fn merge_order(&self, other: &Record<'_>) -> Ordering {
        self.partition
            .cmp(&other.partition)
            .then_with(|| self.key.cmp(other.key))
            .then_with(|| self.position.cmp(&other.position))
    }

    /// True if both records carry the same store key.
    pub fn same_key(&self, other: &Record<'_>) -> bool {
        self.partition == other.partition && self.key == other.key
    }
}

/// Read access shared by owned batches and validated archived batches, so
/// sorting, merging and dedup are written once for both.
pub trait BatchView {
    fn len(&self) -> usize;
    fn record(&self, index: usize) -> Record<'_>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An owned batch. Fields are private so the invariants that validation
/// checks on archived batches hold by construction here: every per-record
/// vector has one entry per record and end offsets are non-decreasing.
#[derive(Archive, Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    values: Vec<u8>,
    value_ends: Vec<u32>,
    files: Vec<u32>,
    offsets: Vec<u64>,
    partitions: Vec<u16>,
    /// Records of the batch's partitions its sender dropped as repeats of
    /// a key it had sent at an earlier position (a scanner's early dedup),
    /// per file: carried in the shuffle so that their owner counts them as
    /// duplicates. Empty in runs and reads.
    repeats: Vec<FileRepeats>,
}

/// `count` records of file `file` dropped as repeats (see
/// [`RecordBatch::push_repeat`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRepeats {
    pub file: u32,
    pub count: u64,
}

/// The size of a batch's contents, to size the next batch like it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchShape {
    pub records: usize,
    pub key_bytes: usize,
    pub value_bytes: usize,
}

/// Bytes of per-record bookkeeping besides key and value bytes.
pub const RECORD_OVERHEAD_BYTES: usize = 4 + 4 + 4 + 8 + 2;
/// Bytes of one file's repeats.
const REPEAT_BYTES: usize = std::mem::size_of::<FileRepeats>();

impl RecordBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `key_bytes` and
    /// `value_bytes` in total, so filling it never reallocates.
    pub fn with_capacity(records: usize, key_bytes: usize, value_bytes: usize) -> Self {
        Self {
            keys: Vec::with_capacity(key_bytes),
            key_ends: Vec::with_capacity(records),
            values: Vec::with_capacity(value_bytes),
            value_ends: Vec::with_capacity(records),
            files: Vec::with_capacity(records),
            offsets: Vec::with_capacity(records),
            partitions: Vec::with_capacity(records),
            repeats: Vec::new(),
        }
    }

    /// How much this batch holds.
    pub fn shape(&self) -> BatchShape {
        BatchShape {
            records: self.key_ends.len(),
            key_bytes: self.keys.len(),
            value_bytes: self.values.len(),
        }
    }

    /// An empty batch with room for `shape` plus an eighth: batches filled
    /// to the same target then rarely reallocate, which keeps the allocator
    /// from fragmenting on ever-different sizes.
    pub fn with_room_for(shape: BatchShape) -> Self {
        let more = |n: usize| n + n / 8;
        Self::with_capacity(
            more(shape.records),
            more(shape.key_bytes),
            more(shape.value_bytes),
        )
    }

    /// Appends a record. Panics if the batch would exceed 4 GiB of key or
    /// value bytes, which batch size limits keep far away.
    pub fn push(&mut self, record: Record<'_>) {
        self.keys.extend_from_slice(record.key);
        self.key_ends.push(end_offset(self.keys.len()));
        self.values.extend_from_slice(record.value);
        self.value_ends.push(end_offset(self.values.len()));
        self.files.push(record.position.file);
        self.offsets.push(record.position.offset);
        self.partitions.push(record.partition);
    }

    /// Counts one record of `file` dropped as a repeat: consecutive
    /// repeats of one file share an entry.
    pub fn push_repeat(&mut self, file: u32) {
        match self.repeats.last_mut() {
            Some(last) if last.file == file => last.count += 1,
            _ => self.repeats.push(FileRepeats { file, count: 1 }),
        }
    }

    /// The repeats the batch carries, per file.
    pub fn repeats(&self) -> &[FileRepeats] {
        &self.repeats
    }

    /// Key and value bytes plus per-record bookkeeping (and the repeats'):
    /// what the batch costs to carry, used for edge credits and batch size
    /// limits.
    pub fn payload_bytes(&self) -> usize {
        self.keys.len()
            + self.values.len()
            + self.key_ends.len() * RECORD_OVERHEAD_BYTES
            + self.repeats.len() * REPEAT_BYTES
    }

    /// Heap bytes actually reserved by the batch's vectors.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity()
            + self.values.capacity()
            + self.key_ends.capacity() * 4
            + self.value_ends.capacity() * 4
            + self.files.capacity() * 4
            + self.offsets.capacity() * 8
            + self.partitions.capacity() * 2
            + self.repeats.capacity() * REPEAT_BYTES
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.key_ends.clear();
        self.values.clear();
        self.value_ends.clear();
        self.files.clear();
        self.offsets.clear();
        self.partitions.clear();
        self.repeats.clear();
    }

    /// Serializes the batch into an rkyv archive.
    pub fn to_archive(&self) -> AlignedVec {
        self.archive_into(AlignedVec::new())
    }

    /// Serializes the batch into `buffer` (emptied first), so a writer of
    /// many frames reuses one allocation.
    pub fn archive_into(&self, mut buffer: AlignedVec) -> AlignedVec {
        buffer.clear();
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, buffer)
            .expect("serializing a RecordBatch into memory cannot fail")
    }
}

fn end_offset(len: usize) -> u32 {
    u32::try_from(len).expect("record batch exceeds 4 GiB of key or value bytes")
}

/// The byte range of entry `index` given the entries' end offsets.
fn entry_range(ends: &[u32], index: usize) -> std::ops::Range<usize> {
    let start = if index == 0 {
        0
    } else {
        ends[index - 1] as usize
    };
    start..ends[index] as usize
}

impl BatchView for RecordBatch {
    fn len(&self) -> usize {
        self.key_ends.len()
    }

    fn record(&self, index: usize) -> Record<'_> {
        Record {
            partition: self.partitions[index],
            key: &self.keys[entry_range(&self.key_ends, index)],
            value: &self.values[entry_range(&self.value_ends, index)],
            position: Position {
                file: self.files[index],
                offset: self.offsets[index],
            },
        }
    }
}

/// Why an archived batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("not a valid record batch archive: {0}")]
    Archive(String),
    #[error("record batch is inconsistent: {0}")]
    Inconsistent(String),
}

/// An archived batch that passed rkyv validation and the batch invariants,
/// readable in place without copying.
pub struct ValidBatch {
    bytes: AlignedVec,
    len: usize,
}

impl ValidBatch {
    /// Validates `bytes` as an archived [`RecordBatch`].
    pub fn new(bytes: AlignedVec) -> Result<Self, BatchError> {
        let archived = rkyv::access::<ArchivedRecordBatch, rkyv::rancor::BoxedError>(&bytes)
            .map_err(|e| BatchError::Archive(e.to_string()))?;
        let len = archived.check_invariants()?;
        Ok(Self { bytes, len })
    }

    fn archived(&self) -> &ArchivedRecordBatch {
        // SAFETY: `bytes` passed `rkyv::access` validation in `new` and is
        // never mutated afterwards, so the unchecked access sees the same
        // validated archive.
        unsafe { rkyv::access_unchecked::<ArchivedRecordBatch>(&self.bytes) }
    }

    /// The archive's bytes, for reuse as a buffer.
    pub fn into_bytes(self) -> AlignedVec {
        self.bytes
    }

    /// Copies the batch out into an owned one.
    pub fn to_owned_batch(&self) -> RecordBatch {
        let mut batch = RecordBatch::with_capacity(self.len, self.bytes.len(), self.bytes.len());
        for i in 0..self.len {
            batch.push(self.record(i));
        }
        batch.repeats = self.repeats().collect();
        batch
    }

    /// The repeats the batch carries, per file.
    pub fn repeats(&self) -> impl Iterator<Item = FileRepeats> + '_ {
        self.archived().repeats.iter().map(|r| FileRepeats {
            file: r.file.to_native(),
            count: r.count.to_native(),
        })
    }
}

impl ArchivedRecordBatch {
    /// Checks what rkyv cannot: one entry per record in every vector and end
    /// offsets that stay inside their byte buffers. Returns the record count.
    fn check_invariants(&self) -> Result<usize, BatchError> {
        let len = self.key_ends.len();
        let counts = [
            ("value_ends", self.value_ends.len()),
            ("files", self.files.len()),
            ("offsets", self.offsets.len()),
            ("partitions", self.partitions.len()),
        ];
        for (name, count) in counts {
            if count != len {
                return Err(BatchError::Inconsistent(format!(
                    "{len} keys but {count} {name}"
                )));
            }
        }
        check_ends("key", &self.key_ends, self.keys.len())?;
        check_ends("value", &self.value_ends, self.values.len())?;
        Ok(len)
    }
}

fn check_ends(
    what: &str,
    ends: &[rkyv::rend::u32_le],
    buffer_len: usize,
) -> Result<(), BatchError> {
    let mut previous = 0usize;
    for (i, end) in ends.iter().enumerate() {
        let end = end.to_native() as usize;
        if end < previous {
            return Err(BatchError::Inconsistent(format!(
                "{what} {i} ends at {end}, before the previous end {previous}"
            )));
        }
        previous = end;
    }
    if previous != buffer_len {
        return Err(BatchError::Inconsistent(format!(
            "{what}s end at {previous} but the {what} buffer holds {buffer_len} bytes"
        )));
    }
    Ok(())
}

impl BatchView for ValidBatch {
    fn len(&self) -> usize {
        self.len
    }

    fn record(&self, index: usize) -> Record<'_> {
        let a = self.archived();
        let end = |ends: &[rkyv::rend::u32_le], i: usize| ends[i].to_native() as usize;
        let key_start = if index == 0 {
            0
        } else {
            end(&a.key_ends, index - 1)
        };
        let value_start = if index == 0 {
            0
        } else {
            end(&a.value_ends, index - 1)
        };
        Record {
            partition: a.partitions[index].to_native(),
            key: &a.keys[key_start..end(&a.key_ends, index)],
            value: &a.values[value_start..end(&a.value_ends, index)],
            position: Position {
                file: a.files[index].to_native(),
                offset: a.offsets[index].to_native(),
            },
        }
    }
}

/// The last frame of a sorted run file. A run cut short at a frame boundary
/// would otherwise read as a valid, shorter run and silently lose records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTrailer {
    pub records: u64,
    pub frames: u64,
}

impl RunTrailer {
    pub fn to_archive(self) -> AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(&self)
            .expect("serializing a RunTrailer into memory cannot fail")
    }

    pub fn from_archive(bytes: &[u8]) -> Result<Self, BatchError> {
        let archived = rkyv::access::<ArchivedRunTrailer, rkyv::rancor::BoxedError>(bytes)
            .map_err(|e| BatchError::Archive(e.to_string()))?;
        Ok(Self {
            records: archived.records.to_native(),
            frames: archived.frames.to_native(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random records with the byte values that break naive line handling.
    pub(crate) fn arb_batch() -> impl Strategy<Value = RecordBatch> {
        let record = (
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<u32>(),
            any::<u64>(),
        );
        let repeats = proptest::collection::vec(0u32..4, 0..8);
        (proptest::collection::vec(record, 0..60), repeats).prop_map(|(records, repeats)| {
            let mut batch = RecordBatch::new();
            for file in repeats {
                batch.push_repeat(file);
            }
            for (partition, key, value, file, offset) in &records {
                batch.push(Record {
                    partition: *partition,
                    key,
                    value,
                    position: Position {
                        file: *file,
                        offset: *offset,
                    },
                });
            }
            batch
        })
    }

    fn records_of(view: &impl BatchView) -> Vec<(u16, Vec<u8>, Vec<u8>, Position)> {
        (0..view.len())
            .map(|i| {
                let r = view.record(i);
                (r.partition, r.key.to_vec(), r.value.to_vec(), r.position)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn archive_round_trips(batch in arb_batch()) {
            let valid = ValidBatch::new(batch.to_archive()).unwrap();
            prop_assert_eq!(records_of(&valid), records_of(&batch));
            prop_assert_eq!(valid.repeats().collect::<Vec<_>>(), batch.repeats());
            prop_assert_eq!(valid.to_owned_batch(), batch);
        }

        /// Vectors of arbitrary, mutually inconsistent lengths and offsets
        /// must be refused by validation, or, if they happen to be
        /// consistent, be readable without panicking.
        #[test]
        fn inconsistent_batches_are_refused(
            keys in proptest::collection::vec(any::<u8>(), 0..20),
            key_ends in proptest::collection::vec(0u32..30, 0..6),
            values in proptest::collection::vec(any::<u8>(), 0..20),
            value_ends in proptest::collection::vec(0u32..30, 0..6),
            n_files in 0usize..6, n_offsets in 0usize..6, n_partitions in 0usize..6,
        ) {
            let raw = RecordBatch {
                keys, key_ends, values, value_ends,
                files: vec![0; n_files],
                offsets: vec![0; n_offsets],
                partitions: vec![0; n_partitions],
                repeats: Vec::new(),
            };
            let consistent = raw.files.len() == raw.key_ends.len()
                && raw.offsets.len() == raw.key_ends.len()
                && raw.partitions.len() == raw.key_ends.len()
                && raw.value_ends.len() == raw.key_ends.len()
                && raw.key_ends.is_sorted()
                && raw.value_ends.is_sorted()
                && raw.key_ends.last().map_or(0, |&e| e as usize) == raw.keys.len()
                && raw.value_ends.last().map_or(0, |&e| e as usize) == raw.values.len();
            match ValidBatch::new(raw.to_archive()) {
                Ok(valid) => {
                    prop_assert!(consistent, "accepted an inconsistent batch");
                    let _ = records_of(&valid);
                }
                Err(_) => prop_assert!(!consistent, "refused a consistent batch"),
            }
        }
    }

    #[test]
    fn merge_order_is_partition_then_key_then_position() {
        let rec = |partition, key: &'static [u8], file, offset| Record {
            partition,
            key,
            value: b"",
            position: Position { file, offset },
        };
        let mut records = [
            rec(1, b"a", 0, 0),
            rec(0, b"b", 0, 0),
            rec(0, b"a", 2, 0),
            rec(0, b"a", 1, 9),
            rec(0, b"", 5, 5),
            rec(0, b"a\0", 0, 0),
        ];
        records.sort_by(|a, b| a.merge_order(b));
        let order: Vec<_> = records
            .iter()
            .map(|r| (r.partition, r.key, r.position.file))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, &b""[..], 5),
                (0, &b"a"[..], 1),
                (0, &b"a"[..], 2),
                (0, &b"a\0"[..], 0),
                (0, &b"b"[..], 0),
                (1, &b"a"[..], 0),
            ]
        );
    }

    #[test]
    fn consecutive_repeats_of_a_file_share_an_entry_and_count_as_payload() {
        let mut batch = RecordBatch::new();
        for file in [3, 3, 3, 5, 3] {
            batch.push_repeat(file);
        }
        let repeats: Vec<_> = batch.repeats().iter().map(|r| (r.file, r.count)).collect();
        assert_eq!(repeats, [(3, 3), (5, 1), (3, 1)]);
        assert!(batch.is_empty());
        assert_eq!(batch.payload_bytes(), 3 * REPEAT_BYTES);
        batch.clear();
        assert!(batch.repeats().is_empty());
        assert_eq!(batch.payload_bytes(), 0);
    }

    #[test]
    fn trailer_round_trips_and_garbage_is_refused() {
        let trailer = RunTrailer {
            records: 7,
            frames: 3,
        };
        assert_eq!(
            RunTrailer::from_archive(&trailer.to_archive()).unwrap(),
            trailer
        );
        assert!(RunTrailer::from_archive(&[1, 2, 3]).is_err());
    }
}
