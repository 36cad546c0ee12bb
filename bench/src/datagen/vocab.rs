//! Skewed vocabularies: words drawn with Zipf-like popularity, as host
//! names, directory names and log templates are in real data (a few are
//! everywhere, most are rare).

use rand::Rng;

/// Chooses a rank in `0..len` with probability proportional to
/// `1 / (rank + 1)` (Zipf with exponent 1).
///
/// The weights are integers (`2^32 / (rank + 1)`, rounded down) and the
/// draw is an integer below their sum, so no floating-point rounding can
/// make two platforms pick differently for the same seed.
pub(crate) struct Zipf {
    /// `cumulative[r]`: the sum of the weights of ranks `0..=r`.
    cumulative: Vec<u64>,
}

impl Zipf {
    pub(crate) fn new(len: usize) -> Self {
        assert!(len > 0, "a Zipf distribution needs at least one rank");
        let mut total = 0u64;
        let cumulative = (1..=len as u64)
            .map(|rank| {
                total += (1u64 << 32) / rank;
                total
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        let total = *self.cumulative.last().expect("at least one rank");
        let x = rng.random_range(0..total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

/// A vocabulary in popularity order: the `common` words first, then
/// generated ones (see [`push_word`]) up to `len` words in all.
pub(crate) struct Vocabulary {
    common: &'static [&'static str],
    zipf: Zipf,
}

impl Vocabulary {
    pub(crate) fn new(common: &'static [&'static str], len: usize) -> Self {
        Self {
            common,
            zipf: Zipf::new(len.max(common.len())),
        }
    }

    /// A fixed list, drawn with Zipf popularity in list order.
    pub(crate) fn of(common: &'static [&'static str]) -> Self {
        Self::new(common, common.len())
    }

    /// Draws a rank (0 is the most popular).
    pub(crate) fn rank<R: Rng>(&self, rng: &mut R) -> usize {
        self.zipf.sample(rng)
    }

    /// Draws a word and appends it to `buf`.
    pub(crate) fn push<R: Rng>(&self, rng: &mut R, buf: &mut Vec<u8>) {
        let rank = self.rank(rng);
        self.push_rank(rank, buf);
    }

    /// Appends the word of `rank`.
    pub(crate) fn push_rank(&self, rank: usize, buf: &mut Vec<u8>) {
        match self.common.get(rank) {
            Some(word) => buf.extend_from_slice(word.as_bytes()),
            None => push_word(rank - self.common.len(), buf),
        }
    }

    /// The word of a rank within the common list.
    pub(crate) fn common_word<R: Rng>(&self, rng: &mut R) -> &'static str {
        self.common[self.rank(rng) % self.common.len()]
    }
}

/// Syllables of generated words: lowercase, pronounceable, prefix-free
/// (all two letters), so distinct indexes give distinct words.
const SYLLABLES: [&str; 24] = [
    "ka", "ri", "to", "na", "mo", "lu", "se", "vi", "da", "pe", "go", "ha", "ti", "ba", "ne", "ro",
    "fa", "mi", "ku", "zo", "le", "xa", "wi", "ju",
];

/// Appends a made-up word for `index`: its base-24 digits as syllables,
/// at least two of them ("kaka", "kari", ..., "ririka", ...).
pub(crate) fn push_word(index: usize, buf: &mut Vec<u8>) {
    let base = SYLLABLES.len();
    let mut digits = 2;
    while base.pow(digits) <= index {
        digits += 1;
    }
    for position in (0..digits).rev() {
        let digit = index / base.pow(position) % base;
        buf.extend_from_slice(SYLLABLES[digit].as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::datagen::rng_for;

    #[test]
    fn zipf_favours_low_ranks_by_their_inverse() {
        let zipf = Zipf::new(1000);
        let mut rng = rng_for(5);
        let mut counts = vec![0u32; 1000];
        let draws = 200_000;
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1 / H(1000) ~ 0.1336; rank 1 half as likely, rank 9 a tenth.
        let share = |rank: usize| f64::from(counts[rank]) / f64::from(draws);
        assert!((share(0) - 0.1336).abs() < 0.005, "rank 0: {}", share(0));
        assert!((share(0) / share(1) - 2.0).abs() < 0.15);
        assert!((share(0) / share(9) - 10.0).abs() < 1.5);
        // The tail is reachable.
        assert!(counts[500..].iter().any(|&c| c > 0));
    }

    #[test]
    fn single_rank_always_draws_it() {
        let zipf = Zipf::new(1);
        let mut rng = rng_for(1);
        assert!((0..100).all(|_| zipf.sample(&mut rng) == 0));
    }

    #[test]
    fn generated_words_are_distinct_and_lowercase() {
        let words: HashSet<Vec<u8>> = (0..20_000)
            .map(|i| {
                let mut w = Vec::new();
                push_word(i, &mut w);
                assert!(w.len() >= 4 && w.iter().all(u8::is_ascii_lowercase));
                w
            })
            .collect();
        assert_eq!(words.len(), 20_000);
    }

    #[test]
    fn vocabulary_puts_common_words_first() {
        let vocab = Vocabulary::new(&["src", "lib"], 10);
        let word = |rank| {
            let mut w = Vec::new();
            vocab.push_rank(rank, &mut w);
            String::from_utf8(w).unwrap()
        };
        assert_eq!(word(0), "src");
        assert_eq!(word(1), "lib");
        assert_eq!(word(2), "kaka");
        assert_eq!(word(3), "kari");
    }
}
