//! k-way merge of sorted sources: a tree of losers with offset-value
//! coding.
//!
//! A tree of losers plays log2(k) matches per record, half a binary heap's
//! comparisons. Each record in the tree carries an offset-value code
//! relative to the record it last lost to: the offset of the first byte
//! where the two differ, and its own byte there (Graefe, "Offset-value
//! coding in database query processing"). Every loser on the path from
//! the last winner's leaf to the root lost to that winner, so the codes
//! met on the way up are all relative to one record and order their
//! records by themselves unless equal; only then are bytes compared, from
//! the coded offset on. Keys that share long prefixes (URLs, absolute
//! paths, timestamped log lines) then cost what any other key costs: with
//! a cached 8-byte prefix, every match between them went to a whole-key
//! comparison from the first byte.

use proto_schema::Record;

use super::SortError;

/// Records in ascending order, one at a time.
pub trait SortedSource {
    /// The current record, or `None` once exhausted.
    fn current(&self) -> Option<Record<'_>>;
    fn advance(&mut self) -> Result<(), SortError>;
}

/// What orders records in a merge. Records with equal keys go by position,
/// then by source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOrder {
    /// Partition, then key bytes: a lane's runs.
    PartitionThenKey,
    /// Key bytes alone: partitions that hold disjoint keys (export).
    Key,
}

impl MergeOrder {
    /// Bytes of the partition that come before the key.
    fn header_len(self) -> usize {
        match self {
            MergeOrder::PartitionThenKey => 2,
            MergeOrder::Key => 0,
        }
    }

    /// Where the byte sequences of two records (partition bytes if ordered
    /// by them, then the key) first differ at or after `from`, given they
    /// agree before it: the offset, and each one's value there (a byte + 1,
    /// or 0 where its sequence has ended). `None` if they are equal.
    fn first_difference(self, a: Coded<'_>, b: Coded<'_>, from: usize) -> Option<Difference> {
        let header = self.header_len();
        if from < header {
            let (pa, pb) = (a.partition.to_be_bytes(), b.partition.to_be_bytes());
            if let Some(i) = (from..header).find(|&i| pa[i] != pb[i]) {
                return Some(Difference {
                    offset: i,
                    a: u16::from(pa[i]) + 1,
                    b: u16::from(pb[i]) + 1,
                });
            }
        }
        let start = from.max(header) - header;
        let (ka, kb) = (
            a.key.get(start..).unwrap_or_default(),
            b.key.get(start..).unwrap_or_default(),
        );
        let i = mismatch(ka, kb);
        let value = |k: &[u8]| k.get(i).map_or(0, |&byte| u16::from(byte) + 1);
        let (va, vb) = (value(ka), value(kb));
        (va != vb).then_some(Difference {
            offset: header + start + i,
            a: va,
            b: vb,
        })
    }
}

/// The part of a record the codes are about.
#[derive(Clone, Copy)]
struct Coded<'a> {
    partition: u16,
    key: &'a [u8],
}

impl<'a> From<&Record<'a>> for Coded<'a> {
    fn from(record: &Record<'a>) -> Self {
        Coded {
            partition: record.partition,
            key: record.key,
        }
    }
}

struct Difference {
    offset: usize,
    a: u16,
    b: u16,
}

/// Offset-value code of a record relative to a record it does not sort
/// before: smaller codes sort first. A later first difference means a
/// record closer to the base, hence smaller; at the same offset, the
/// smaller value is smaller.
type Code = u64;
/// The key equals the base's: only positions can order it.
const EQUAL_KEY: Code = 0;
/// An exhausted source, which loses every match.
const EXHAUSTED: Code = u64::MAX;

fn code(offset: usize, value: u16) -> Code {
    ((u64::from(u32::MAX) - offset as u64) << 16) | u64::from(value)
}

fn code_offset(code: Code) -> usize {
    (u64::from(u32::MAX) - (code >> 16)) as usize
}

/// The length of the common prefix of `a` and `b`, 8 bytes at a time.
fn mismatch(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let word = |s: &[u8]| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
        let diff = word(a) ^ word(b);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Merges sources that are each sorted by `order` into one sorted stream.
pub struct KMerge<S> {
    sources: Vec<S>,
    /// Each source's current record coded relative to the record it last
    /// lost to (or, for the last winner's source, to the last winner).
    codes: Vec<Code>,
    /// `tree[0]` is the winner: the source holding the smallest record.
    /// `tree[1..k]` are the internal nodes, each holding the loser of its
    /// match; node `n`'s children are `2n` and `2n + 1`, and source `s` is
    /// the leaf `k + s`.
    tree: Vec<usize>,
    order: MergeOrder,
    /// The partition and key of the last winner, which the next record of
    /// its source is coded against (its own bytes may be gone by then).
    last_partition: u16,
    last_key: Vec<u8>,
}

impl<S: SortedSource> KMerge<S> {
    pub fn new(sources: Vec<S>, order: MergeOrder) -> Self {
        let k = sources.len();
        // Relative to a base before every record: the first value decides.
        let codes = sources
            .iter()
            .map(|s| {
                s.current().map_or(EXHAUSTED, |r| {
                    let nothing = Coded {
                        partition: 0,
                        key: &[],
                    };
                    let first = order.first_difference(Coded::from(&r), nothing, 0);
                    first.map_or(EQUAL_KEY, |d| code(d.offset, d.a))
                })
            })
            .collect();
        let mut merge = Self {
            sources,
            codes,
            tree: vec![0; k.max(1)],
            order,
            last_partition: 0,
            last_key: Vec::new(),
        };
        if k > 1 {
            // Winners of every node, leaves included, built bottom-up; each
            // internal node keeps its loser. Both players of a match are
            // winners of their subtrees, coded relative to the same base.
            let mut winners = vec![0; 2 * k];
            for s in 0..k {
                winners[k + s] = s;
            }
            for node in (1..k).rev() {
                let (winner, loser) = merge.play(winners[2 * node], winners[2 * node + 1]);
                winners[node] = winner;
                merge.tree[node] = loser;
            }
            merge.tree[0] = winners[1];
        }
        merge
    }

    /// Plays a match between sources `a` and `b`, whose codes are relative
    /// to the same record. Returns (winner, loser); the loser's code becomes
    /// relative to the winner.
    fn play(&mut self, a: usize, b: usize) -> (usize, usize) {
        let (ca, cb) = (self.codes[a], self.codes[b]);
        if ca != cb || ca == EXHAUSTED {
            // The loser's code relative to the winner is its code relative
            // to their common base: the winner matches the base further.
            return if ca < cb || (ca == cb && a < b) {
                (a, b)
            } else {
                (b, a)
            };
        }
        let (Some(ra), Some(rb)) = (self.sources[a].current(), self.sources[b].current()) else {
            unreachable!("a source with a code has a current record")
        };
        // Equal codes: the same value at the same offset, and equal before.
        let from = (ca != EQUAL_KEY).then(|| code_offset(ca) + 1);
        let difference = from.and_then(|from| {
            self.order
                .first_difference((&ra).into(), (&rb).into(), from)
        });
        let (winner, loser, loser_code) = match difference {
            Some(d) if d.a < d.b => (a, b, code(d.offset, d.b)),
            Some(d) => (b, a, code(d.offset, d.a)),
            None if (ra.position, a) < (rb.position, b) => (a, b, EQUAL_KEY),
            None => (b, a, EQUAL_KEY),
        };
        self.codes[loser] = loser_code;
        (winner, loser)
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
        let Some(winner) = self.sources[top].current() else {
            return Ok(());
        };
        self.last_partition = winner.partition;
        self.last_key.clear();
        self.last_key.extend_from_slice(winner.key);
        self.sources[top].advance()?;
        let last = Coded {
            partition: self.last_partition,
            key: &self.last_key,
        };
        self.codes[top] = match self.sources[top].current() {
            None => EXHAUSTED,
            Some(next) => match self.order.first_difference((&next).into(), last, 0) {
                Some(d) => code(d.offset, d.a),
                None => EQUAL_KEY,
            },
        };
        // Replay the new record's matches from its leaf to the root.
        let mut winner = top;
        let mut node = (k + top) / 2;
        while node >= 1 {
            let (won, lost) = self.play(self.tree[node], winner);
            self.tree[node] = lost;
            winner = won;
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

    /// Keys from few distinct bytes (zeros among them) behind one of a few
    /// long shared prefixes: equal codes, keys that are prefixes of others
    /// and exact copies are all common.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                Just(&b""[..]),
                Just(&b"https://www."[..]),
                Just(&b"/srv/a\0b/"[..])
            ],
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'w')], 0..12),
        )
            .prop_map(|(prefix, rest)| [prefix, &rest[..]].concat())
    }

    type Merged = Vec<(u16, Vec<u8>, Position)>;

    /// Merges `runs` (each sorted here by `order`'s reference) and returns
    /// what came out and what a sort of everything gives.
    fn merged(runs: Vec<Vec<(u16, Vec<u8>)>>, order: MergeOrder) -> (Merged, Merged) {
        let reference = |a: &(u16, Vec<u8>, Position), b: &(u16, Vec<u8>, Position)| match order {
            MergeOrder::PartitionThenKey => a.cmp(b),
            MergeOrder::Key => (&a.1, a.2).cmp(&(&b.1, b.2)),
        };
        let mut want = Vec::new();
        let mut sources = Vec::new();
        for (run_no, run) in runs.into_iter().enumerate() {
            let mut records: Vec<_> = run
                .into_iter()
                .enumerate()
                .map(|(i, (p, k))| {
                    (
                        p,
                        k,
                        Position {
                            file: (i % 3) as u32,
                            offset: run_no as u64,
                        },
                    )
                })
                .collect();
            records.sort_by(reference);
            let mut batch = RecordBatch::new();
            for (partition, key, position) in &records {
                batch.push(Record {
                    partition: *partition,
                    key,
                    value: b"",
                    position: *position,
                });
            }
            want.extend(records);
            sources.push(VecSource { batch, next: 0 });
        }
        want.sort_by(reference);
        let mut merge = KMerge::new(sources, order);
        let mut got = Vec::new();
        while let Some(r) = merge.current() {
            got.push((r.partition, r.key.to_vec(), r.position));
            merge.advance().unwrap();
        }
        // Advancing past the end is harmless.
        merge.advance().unwrap();
        assert!(merge.current().is_none());
        (got, want)
    }

    proptest! {
        #[test]
        fn merges_like_a_sort_by_partition_then_key(runs in proptest::collection::vec(
            proptest::collection::vec((prop_oneof![Just(0u16), Just(1u16), Just(256u16)], key()), 0..40), 0..12)) {
            let (got, want) = merged(runs, MergeOrder::PartitionThenKey);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn merges_like_a_sort_by_key(runs in proptest::collection::vec(
            proptest::collection::vec((0u16..3, key()), 0..40), 0..12)) {
            let (got, want) = merged(runs, MergeOrder::Key);
            prop_assert_eq!(got, want);
        }

        /// The common prefix, 8 bytes at a time, is the common prefix.
        #[test]
        fn mismatch_finds_the_first_difference(
            a in proptest::collection::vec(0u8..3, 0..40), b in proptest::collection::vec(0u8..3, 0..40),
        ) {
            let want = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(mismatch(&a, &b), want);
        }
    }
}
