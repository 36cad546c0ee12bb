//! k-way merge of sorted sources with a binary heap of source indices.

use std::cmp::Ordering;

use proto_schema::Record;

use super::SortError;

/// Records in ascending order, one at a time.
pub trait SortedSource {
    /// The current record, or `None` once exhausted.
    fn current(&self) -> Option<Record<'_>>;
    fn advance(&mut self) -> Result<(), SortError>;
}

/// How two records compare in a merge.
pub type Order = fn(&Record<'_>, &Record<'_>) -> Ordering;

/// Merges sources that are each sorted by `order` into one sorted stream.
/// Costs about 2·log2(k) comparisons per record and no copying.
pub struct KMerge<S> {
    sources: Vec<S>,
    /// A min-heap of indices into `sources`, all of them non-exhausted.
    heap: Vec<usize>,
    order: Order,
}

impl<S: SortedSource> KMerge<S> {
    pub fn new(sources: Vec<S>, order: Order) -> Self {
        let heap = (0..sources.len())
            .filter(|&i| sources[i].current().is_some())
            .collect();
        let mut merge = Self {
            sources,
            heap,
            order,
        };
        for i in (0..merge.heap.len() / 2).rev() {
            merge.sift_down(i);
        }
        merge
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (ra, rb) = (
            self.sources[self.heap[a]].current(),
            self.sources[self.heap[b]].current(),
        );
        match (ra, rb) {
            (Some(ra), Some(rb)) => (self.order)(&ra, &rb) == Ordering::Less,
            _ => unreachable!("the heap holds only non-exhausted sources"),
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if left < self.heap.len() && self.less(left, smallest) {
                smallest = left;
            }
            if right < self.heap.len() && self.less(right, smallest) {
                smallest = right;
            }
            if smallest == i {
                return;
            }
            self.heap.swap(i, smallest);
            i = smallest;
        }
    }

    /// Gives the sources back, e.g. to delete their files.
    pub fn into_sources(self) -> Vec<S> {
        self.sources
    }
}

impl<S: SortedSource> SortedSource for KMerge<S> {
    fn current(&self) -> Option<Record<'_>> {
        self.heap
            .first()
            .and_then(|&top| self.sources[top].current())
    }

    fn advance(&mut self) -> Result<(), SortError> {
        let Some(&top) = self.heap.first() else {
            return Ok(());
        };
        self.sources[top].advance()?;
        if self.sources[top].current().is_none() {
            let last = self.heap.pop().expect("heap is not empty");
            if self.heap.is_empty() {
                return Ok(());
            }
            self.heap[0] = last;
        }
        self.sift_down(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto_schema::{BatchView, Position, RecordBatch};

    struct VecSource {
        batch: RecordBatch,
        next: usize,
    }

    impl SortedSource for VecSource {
        fn current(&self) -> Option<Record<'_>> {
            (self.next < self.batch.len()).then(|| self.batch.record(self.next))
        }
        fn advance(&mut self) -> Result<(), SortError> {
            self.next += 1;
            Ok(())
        }
    }

    fn by_merge_order(a: &Record<'_>, b: &Record<'_>) -> Ordering {
        a.merge_order(b)
    }

    proptest! {
        #[test]
        fn merges_like_a_sort(runs in proptest::collection::vec(
            proptest::collection::vec((0u16..2, proptest::collection::vec(0u8..4, 0..5)), 0..40), 0..12)) {
            let mut want = Vec::new();
            let mut sources = Vec::new();
            for (run_no, mut run) in runs.into_iter().enumerate() {
                run.sort();
                let mut batch = RecordBatch::new();
                for (i, (partition, key)) in run.iter().enumerate() {
                    let position = Position { file: run_no as u32, offset: i as u64 };
                    batch.push(Record { partition: *partition, key, value: b"", position });
                    want.push((*partition, key.clone(), position));
                }
                sources.push(VecSource { batch, next: 0 });
            }
            want.sort();
            let mut merge = KMerge::new(sources, by_merge_order);
            let mut got = Vec::new();
            while let Some(r) = merge.current() {
                got.push((r.partition, r.key.to_vec(), r.position));
                merge.advance().unwrap();
            }
            prop_assert_eq!(got, want);
        }
    }
}
