//! An in-memory run: records copied row by row into fixed-size chunks as
//! batches arrive, sorted by permuting a compact index, never by moving
//! record bytes.
//!
//! Rows, not the batches' column vectors: a run is read back in sorted
//! order, i.e. at random. A batch spreads one record over seven vectors
//! (seven cache misses per record); a row keeps its fields and bytes
//! together (one or two), and the reader prefetches rows a few entries
//! ahead so those misses overlap. Measured with `bench/ab` on 2 GB of
//! lines at 128 MiB: the job's CPU time fell by 15%, its wall time by 24%.

use proto_schema::{BatchView, Position, Record, RecordBatch};

use super::merge::SortedSource;
use super::merge_prefix;

/// One index entry: 8 bytes of the sort key up front so most comparisons
/// never touch the record bytes, then where the row lives.
#[derive(Clone, Copy)]
struct Entry {
    prefix: u64,
    chunk: u32,
    offset: u32,
}

const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Size of a row chunk. Rows never straddle chunks; a record longer than
/// this gets a chunk of its own.
const CHUNK_BYTES: usize = 1 << 20;

/// Row header: partition u16, file u32, offset u64, key length u32, value
/// length u32, all little-endian; then the key and value bytes.
const ROW_HEADER_BYTES: usize = 2 + 4 + 8 + 4 + 4;

/// How many index entries ahead the reader prefetches rows: enough to
/// cover a memory latency with the work of that many records.
const PREFETCH_DISTANCE: usize = 8;

fn write_row(chunk: &mut Vec<u8>, record: &Record<'_>) {
    chunk.extend_from_slice(&record.partition.to_le_bytes());
    chunk.extend_from_slice(&record.position.file.to_le_bytes());
    chunk.extend_from_slice(&record.position.offset.to_le_bytes());
    chunk.extend_from_slice(&(record.key.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    chunk.extend_from_slice(record.key);
    chunk.extend_from_slice(record.value);
}

fn read_row(chunk: &[u8]) -> Record<'_> {
    let (header, bytes) = chunk.split_at(ROW_HEADER_BYTES);
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let key_len = u32_at(14) as usize;
    let value_len = u32_at(18) as usize;
    Record {
        partition: u16::from_le_bytes([header[0], header[1]]),
        key: &bytes[..key_len],
        value: &bytes[key_len..key_len + value_len],
        position: Position {
            file: u32_at(2),
            offset: u64::from_le_bytes(header[6..14].try_into().expect("8 bytes")),
        },
    }
}

/// Hints the CPU to start loading `bytes` into cache.
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no
    // architectural effect, and the pointer is a valid slice's anyway.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Row chunks, filled front to back.
#[derive(Default)]
struct Rows {
    chunks: Vec<Vec<u8>>,
    /// Chunks in use: `chunks[..used]`. The rest are empty, kept for reuse.
    used: usize,
}

impl Rows {
    /// Appends `record` as a row and returns where it lives.
    fn push(&mut self, record: &Record<'_>) -> (u32, u32) {
        let row_bytes = ROW_HEADER_BYTES + record.key.len() + record.value.len();
        let fits = |chunk: &Vec<u8>| chunk.capacity() - chunk.len() >= row_bytes;
        if self.used == 0 || !fits(&self.chunks[self.used - 1]) {
            if self.used == self.chunks.len() {
                self.chunks.push(Vec::new());
            }
            let chunk = &mut self.chunks[self.used];
            chunk.reserve_exact(row_bytes.max(CHUNK_BYTES));
            self.used += 1;
        }
        let chunk = &mut self.chunks[self.used - 1];
        let offset = u32::try_from(chunk.len()).expect("a row chunk stays under 4 GiB");
        write_row(chunk, record);
        ((self.used - 1) as u32, offset)
    }

    fn row(&self, entry: &Entry) -> &[u8] {
        &self.chunks[entry.chunk as usize][entry.offset as usize..]
    }

    fn record(&self, entry: &Entry) -> Record<'_> {
        read_row(self.row(entry))
    }

    #[cfg(test)]
    fn heap_bytes_kept(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    /// Empties the chunks for reuse; chunks that grew past the standard
    /// size for one long record are freed.
    fn clear(&mut self) {
        self.chunks.retain(|chunk| chunk.capacity() <= CHUNK_BYTES);
        for chunk in &mut self.chunks {
            chunk.clear();
        }
        self.used = 0;
    }

    /// Bytes of the chunks in use. Emptied chunks kept for reuse are not
    /// counted: the run's bound is what it holds when it spills, and they
    /// are part of that again by then.
    fn bytes_in_use(&self) -> usize {
        self.chunks[..self.used].iter().map(Vec::capacity).sum()
    }
}

/// Records gathered for one run.
#[derive(Default)]
pub struct RunBuffer {
    rows: Rows,
    /// Built as rows arrive; kept from the previous run, emptied, so its
    /// memory is reused.
    index: Vec<Entry>,
}

impl RunBuffer {
    /// Copies the batch's records in; the caller keeps the batch for reuse.
    pub fn push(&mut self, batch: &RecordBatch) {
        self.index.reserve(batch.len());
        for i in 0..batch.len() {
            let record = batch.record(i);
            let (chunk, offset) = self.rows.push(&record);
            self.index.push(Entry {
                prefix: merge_prefix(&record),
                chunk,
                offset,
            });
        }
    }

    /// Memory the run holds: its row chunks and its index.
    pub fn bytes(&self) -> usize {
        self.rows.bytes_in_use() + self.index.len() * ENTRY_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Sorts the run into merge order.
    pub fn sort(self) -> SortedRun {
        let Self { rows, mut index } = self;
        // By prefix only: an integer sort that never reads a row. Entries
        // with equal prefixes (mostly copies of one key) are put in full
        // merge order as the run is read, when their rows are read anyway.
        // Ordering them here cost two cache misses per comparison, which
        // was a third of a run's sort with 30% duplicates.
        index.sort_unstable_by_key(|e| e.prefix);
        let mut run = SortedRun {
            rows,
            index,
            next: 0,
            ordered_until: 0,
        };
        run.prefetch_ahead(0..PREFETCH_DISTANCE);
        run.order_ties();
        run
    }
}

/// A sorted run, read front to back.
pub struct SortedRun {
    rows: Rows,
    index: Vec<Entry>,
    next: usize,
    /// `index[..ordered_until]` is in full merge order; beyond it, only
    /// by prefix.
    ordered_until: usize,
}

impl SortedRun {
    /// Empties the run for reuse; rows and index keep their memory.
    pub fn recycle(self) -> RunBuffer {
        let Self {
            mut rows,
            mut index,
            ..
        } = self;
        rows.clear();
        index.clear();
        RunBuffer { rows, index }
    }

    /// Once the reader reaches a new prefix, puts the entries sharing it
    /// into full merge order.
    fn order_ties(&mut self) {
        if self.next < self.ordered_until {
            return;
        }
        let Some((first, rest)) = self.index[self.next..].split_first() else {
            return;
        };
        let ties = rest.iter().take_while(|e| e.prefix == first.prefix).count();
        let end = self.next + 1 + ties;
        if ties > 0 {
            let rows = &self.rows;
            self.index[self.next..end]
                .sort_unstable_by(|a, b| rows.record(a).merge_order(&rows.record(b)));
        }
        self.ordered_until = end;
    }

    fn prefetch_ahead(&self, entries: std::ops::Range<usize>) {
        for entry in self.index.get(entries).unwrap_or_default() {
            prefetch(self.rows.row(entry));
        }
    }
}

impl SortedSource for SortedRun {
    fn current(&self) -> Option<Record<'_>> {
        self.index.get(self.next).map(|e| self.rows.record(e))
    }

    fn advance(&mut self) -> Result<(), super::SortError> {
        self.next += 1;
        let ahead = self.next + PREFETCH_DISTANCE - 1;
        self.prefetch_ahead(ahead..ahead + 1);
        self.order_ties();
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::Position;

    fn batch_of(keys: &[Vec<u8>]) -> RecordBatch {
        let mut batch = RecordBatch::new();
        for (i, key) in keys.iter().enumerate() {
            let position = Position {
                file: 0,
                offset: i as u64,
            };
            batch.push(Record {
                partition: 1,
                key,
                value: b"value",
                position,
            });
        }
        batch
    }

    fn keys_in_order(mut run: SortedRun) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        while let Some(r) = run.current() {
            assert_eq!(r.value, b"value");
            keys.push(r.key.to_vec());
            run.advance().unwrap();
        }
        keys
    }

    /// A record longer than a chunk gets a chunk of its own, which is not
    /// kept for the next run.
    #[test]
    fn records_longer_than_a_chunk_fit() {
        let keys = vec![b"b".to_vec(), vec![b'a'; 3 * CHUNK_BYTES], b"c".to_vec()];
        let mut buffer = RunBuffer::default();
        buffer.push(&batch_of(&keys));
        assert!(buffer.bytes() >= 3 * CHUNK_BYTES);
        let mut sorted = keys.clone();
        sorted.sort();
        let run = buffer.sort();
        let recycled = {
            let mut run = run;
            let first = run.current().unwrap().key.len();
            assert_eq!(first, 3 * CHUNK_BYTES);
            run.advance().unwrap();
            run.recycle()
        };
        assert!(recycled.rows.heap_bytes_kept() <= 2 * CHUNK_BYTES);
        let mut buffer = recycled;
        buffer.push(&batch_of(&keys));
        assert_eq!(keys_in_order(buffer.sort()), sorted);
    }

    /// A recycled buffer counts from zero again although it keeps its
    /// chunks: counting them made every later run spill at once.
    #[test]
    fn recycled_buffer_counts_from_zero() {
        let keys: Vec<Vec<u8>> = (0..50_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut buffer = RunBuffer::default();
        buffer.push(&batch_of(&keys));
        let full = buffer.bytes();
        assert!(full > CHUNK_BYTES);
        let mut buffer = buffer.sort().recycle();
        assert_eq!(buffer.bytes(), 0);
        buffer.push(&batch_of(&keys));
        assert_eq!(buffer.bytes(), full);
    }

    proptest! {
        /// Sorting batches equals sorting all records with the full order.
        #[test]
        fn sorts_like_the_reference(records in proptest::collection::vec(
            (0u16..3, proptest::collection::vec(0u8..3, 0..8), 0u32..4, 0u64..100), 0..200),
            batch_size in 1usize..30,
        ) {
            let mut buffer = RunBuffer::default();
            for chunk in records.chunks(batch_size) {
                let mut batch = RecordBatch::new();
                for (partition, key, file, offset) in chunk {
                    batch.push(Record { partition: *partition, key, value: b"v", position: Position { file: *file, offset: *offset } });
                }
                buffer.push(&batch);
            }
            let mut run = buffer.sort();
            let mut got = Vec::new();
            while let Some(r) = run.current() {
                got.push((r.partition, r.key.to_vec(), r.position));
                run.advance().unwrap();
            }
            let mut want: Vec<_> = records.iter().map(|(p, k, f, o)| (*p, k.clone(), Position { file: *f, offset: *o })).collect();
            want.sort();
            prop_assert_eq!(got, want);
        }
    }
}
