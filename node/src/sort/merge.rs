//! k-way merge of sorted sources with a tree of losers over cached key
//! prefixes.
//!
//! A loser tree costs log2(k) comparisons per record, half a binary heap's,
//! and most comparisons are between two cached integers: each source's
//! current record is turned into an order-preserving 8-byte prefix once,
//! when the source advances, and the records themselves are read only when
//! two prefixes tie.

use std::cmp::Ordering;

use proto_schema::Record;

use super::SortError;

/// Records in ascending order, one at a time.
pub trait SortedSource {
    /// The current record, or `None` once exhausted.
    fn current(&self) -> Option<Record<'_>>;
    fn advance(&mut self) -> Result<(), SortError>;
}

/// How records compare in a merge: the full order, and a prefix that
/// agrees with it wherever two prefixes differ (`prefix(a) < prefix(b)`
/// implies `a` sorts before `b`).
#[derive(Clone, Copy)]
pub struct MergeOrder {
    pub compare: fn(&Record<'_>, &Record<'_>) -> Ordering,
    pub prefix: fn(&Record<'_>) -> u64,
}

/// The first 8 bytes of `bytes`, zero-padded, as a big-endian integer:
/// comparing two of these agrees with memcmp whenever they differ.
pub fn bytes_prefix(bytes: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = bytes.len().min(8);
    prefix[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(prefix)
}

/// Merges sources that are each sorted by `order` into one sorted stream.
pub struct KMerge<S> {
    sources: Vec<S>,
    /// Each source's current prefix, `None` once the source is exhausted
    /// (an exhausted source loses every match).
    prefixes: Vec<Option<u64>>,
    /// `tree[0]` is the winner: the source holding the smallest record.
    /// `tree[1..k]` are the internal nodes, each holding the loser of its
    /// match; node `n`'s children are `2n` and `2n + 1`, and source `s` is
    /// the leaf `k + s`.
    tree: Vec<usize>,
    order: MergeOrder,
}

impl<S: SortedSource> KMerge<S> {
    pub fn new(sources: Vec<S>, order: MergeOrder) -> Self {
        let k = sources.len();
        let prefixes = sources
            .iter()
            .map(|s| s.current().map(|r| (order.prefix)(&r)))
            .collect();
        let mut merge = Self {
            sources,
            prefixes,
            tree: vec![0; k.max(1)],
            order,
        };
        if k > 1 {
            // Winners of every node, leaves included, built bottom-up;
            // each internal node keeps its loser.
            let mut winners = vec![0; 2 * k];
            for s in 0..k {
                winners[k + s] = s;
            }
            for node in (1..k).rev() {
                let (a, b) = (winners[2 * node], winners[2 * node + 1]);
                let (winner, loser) = if merge.beats(b, a) { (b, a) } else { (a, b) };
                winners[node] = winner;
                merge.tree[node] = loser;
            }
            merge.tree[0] = winners[1];
        }
        merge
    }

    /// True if source `a`'s current record sorts strictly before `b`'s;
    /// equal records go to the lower source index, so the merge is
    /// deterministic.
    fn beats(&self, a: usize, b: usize) -> bool {
        match (self.prefixes[a], self.prefixes[b]) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(pa), Some(pb)) if pa != pb => pa < pb,
            (Some(_), Some(_)) => {
                let (ra, rb) = (self.sources[a].current(), self.sources[b].current());
                let (Some(ra), Some(rb)) = (ra, rb) else {
                    unreachable!("a source with a prefix has a current record")
                };
                match (self.order.compare)(&ra, &rb) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => a < b,
                }
            }
        }
    }

    /// Gives the sources back, e.g. to delete their files.
    pub fn into_sources(self) -> Vec<S> {
        self.sources
    }
}

impl<S: SortedSource> SortedSource for KMerge<S> {
    fn current(&self) -> Option<Record<'_>> {
        let top = *self.tree.first()?;
        self.sources.get(top)?.current()
    }

    fn advance(&mut self) -> Result<(), SortError> {
        let k = self.sources.len();
        if k == 0 {
            return Ok(());
        }
        let top = self.tree[0];
        if self.prefixes[top].is_none() {
            return Ok(());
        }
        self.sources[top].advance()?;
        self.prefixes[top] = self.sources[top].current().map(|r| (self.order.prefix)(&r));
        // Replay the new record's matches from its leaf to the root.
        let mut winner = top;
        let mut node = (k + top) / 2;
        while node >= 1 {
            if self.beats(self.tree[node], winner) {
                std::mem::swap(&mut self.tree[node], &mut winner);
            }
            node /= 2;
        }
        self.tree[0] = winner;
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

    /// Orders with prefixes from useless (every match goes to the records)
    /// to fine, so both paths of a match are exercised.
    const ORDERS: [MergeOrder; 3] = [
        MergeOrder {
            compare: by_merge_order,
            prefix: |_| 0,
        },
        MergeOrder {
            compare: by_merge_order,
            prefix: |r| u64::from(r.partition),
        },
        MergeOrder {
            compare: by_merge_order,
            prefix: |r| (u64::from(r.partition) << 48) | (bytes_prefix(r.key) >> 16),
        },
    ];

    proptest! {
        #[test]
        fn merges_like_a_sort(runs in proptest::collection::vec(
            proptest::collection::vec((0u16..2, proptest::collection::vec(0u8..4, 0..5)), 0..40), 0..12),
            order in 0..ORDERS.len()) {
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
            let mut merge = KMerge::new(sources, ORDERS[order]);
            let mut got = Vec::new();
            while let Some(r) = merge.current() {
                got.push((r.partition, r.key.to_vec(), r.position));
                merge.advance().unwrap();
            }
            // Advancing past the end is harmless.
            merge.advance().unwrap();
            prop_assert!(merge.current().is_none());
            prop_assert_eq!(got, want);
        }

        /// The byte prefix never contradicts memcmp.
        #[test]
        fn bytes_prefix_agrees_with_memcmp(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..11),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(255u8), any::<u8>()], 0..11),
        ) {
            let by_prefix = bytes_prefix(&a).cmp(&bytes_prefix(&b));
            if by_prefix != Ordering::Equal {
                prop_assert_eq!(by_prefix, a.cmp(&b));
            }
        }
    }
}
