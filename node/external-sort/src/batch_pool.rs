//! Recycled record batches: memory circulates through the pipeline instead
//! of being freed by one thread and allocated again by another.
//!
//! A batch is filled by a scanner, copied into a sort run and released at
//! once; merged batches are released by dedup and commit. Freeing them
//! there and allocating afresh in the scanners left most of the freed memory
//! stranded in the allocator's per-thread pages (resident memory twice the
//! live heap with two lanes); handing the same buffers back keeps resident
//! memory at the live heap. A batch keeps its capacity when recycled.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::Gauge;
use proto_schema::{BatchShape, RecordBatch};

pub struct BatchPool {
    free: Mutex<Free>,
    /// Heap bytes the pool may keep idle; batches given beyond it are freed.
    cap_bytes: AtomicUsize,
    gauge: Gauge,
}

#[derive(Default)]
struct Free {
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl BatchPool {
    pub fn new(cap_bytes: u64) -> Self {
        Self {
            free: Mutex::new(Free::default()),
            cap_bytes: AtomicUsize::new(usize::try_from(cap_bytes).unwrap_or(usize::MAX)),
            gauge: metrics::gauge!("quern_batch_pool_bytes"),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty batch: a recycled one if there is one, else a new one with
    /// room for `shape`.
    pub fn take(&self, shape: BatchShape) -> RecordBatch {
        let recycled = {
            let mut free = self.free();
            let batch = free.batches.pop();
            if let Some(batch) = &batch {
                free.bytes -= batch.heap_bytes();
                self.gauge.set(free.bytes as f64);
            }
            batch
        };
        recycled.unwrap_or_else(|| RecordBatch::with_room_for(shape))
    }

    /// Keeps `batch` for reuse, emptied, unless the pool is full.
    pub fn give(&self, mut batch: RecordBatch) {
        let bytes = batch.heap_bytes();
        if bytes == 0 {
            return;
        }
        batch.clear();
        let mut free = self.free();
        if free.bytes + bytes <= self.cap_bytes.load(Ordering::Relaxed) {
            free.bytes += bytes;
            free.batches.push(batch);
            self.gauge.set(free.bytes as f64);
        }
    }

    /// Lowers the cap (never raises it) and frees the idle batches above
    /// it. Once scanning has ended, the batches the scanners filled are
    /// no longer needed: kept, they sat idle beside the merge's buffers
    /// (measured: 70 MiB of a 128 MiB budget through a whole final merge).
    pub fn lower_cap(&self, cap_bytes: u64) {
        let cap = usize::try_from(cap_bytes).unwrap_or(usize::MAX);
        self.cap_bytes.fetch_min(cap, Ordering::Relaxed);
        let freed = {
            let mut free = self.free();
            let mut freed = Vec::new();
            while free.bytes > cap {
                let Some(batch) = free.batches.pop() else {
                    break;
                };
                free.bytes -= batch.heap_bytes();
                freed.push(batch);
            }
            self.gauge.set(free.bytes as f64);
            freed
        };
        // Freed outside the lock.
        drop(freed);
    }

    pub fn give_all(&self, batches: impl IntoIterator<Item = RecordBatch>) {
        for batch in batches {
            self.give(batch);
        }
    }

    /// Heap bytes held idle.
    pub fn idle_bytes(&self) -> usize {
        self.free().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_schema::{BatchView, Position, Record};

    fn batch_of(records: usize) -> RecordBatch {
        let mut batch = RecordBatch::new();
        for i in 0..records {
            let position = Position {
                file: 0,
                offset: i as u64,
            };
            batch.push(Record {
                partition: 0,
                key: b"key",
                value: b"",
                position,
            });
        }
        batch
    }

    #[test]
    fn a_given_batch_comes_back_empty_with_its_capacity() {
        let pool = BatchPool::new(1 << 20);
        let batch = batch_of(100);
        let heap = batch.heap_bytes();
        pool.give(batch);
        assert_eq!(pool.idle_bytes(), heap);
        let again = pool.take(BatchShape::default());
        assert_eq!(again.len(), 0);
        assert_eq!(again.heap_bytes(), heap);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_pool_never_keeps_more_than_its_cap() {
        let one = batch_of(100).heap_bytes();
        let pool = BatchPool::new(3 * one as u64);
        pool.give_all((0..10).map(|_| batch_of(100)));
        assert_eq!(pool.idle_bytes(), 3 * one);
        // An empty pool makes a batch sized for the shape asked for.
        let pool = BatchPool::new(0);
        let shape = BatchShape {
            records: 10,
            key_bytes: 100,
            value_bytes: 0,
        };
        assert!(pool.take(shape).heap_bytes() >= 100);
    }

    #[test]
    fn a_lowered_cap_frees_idle_batches_and_holds_afterwards() {
        let one = batch_of(100).heap_bytes();
        let pool = BatchPool::new(10 * one as u64);
        pool.give_all((0..8).map(|_| batch_of(100)));
        assert_eq!(pool.idle_bytes(), 8 * one);
        pool.lower_cap(2 * one as u64);
        assert_eq!(pool.idle_bytes(), 2 * one);
        pool.give_all((0..4).map(|_| batch_of(100)));
        assert_eq!(pool.idle_bytes(), 2 * one, "the lower cap holds");
        pool.lower_cap(100 * one as u64);
        pool.give_all((0..4).map(|_| batch_of(100)));
        assert_eq!(pool.idle_bytes(), 2 * one, "a cap is never raised");
    }
}
