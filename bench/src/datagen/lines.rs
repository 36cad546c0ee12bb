//! Line-oriented datasets: the input `quern ingest` deduplicates and sorts.

use std::fs;
use std::io;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::alphabet::push_printable;
use super::pool::Pool;
use super::sink::{Compression, LineWriter, cycled, part_path};
use super::{GeneratedDataset, check_ratio, invalid_input, rng_for};

/// Shape of a line dataset. The same spec always produces the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LinesSpec {
    pub files: usize,
    /// Approximate uncompressed size of each file: records are appended
    /// until it is reached.
    pub bytes_per_file: u64,
    /// Record length range in bytes, excluding the '\n'. Edge-case records
    /// may fall outside it (empty lines, added padding or bytes).
    pub min_len: usize,
    pub max_len: usize,
    /// Fraction of records that repeat an earlier record, in this file or an
    /// earlier one. Fresh records are random, so with very short lengths
    /// chance collisions add duplicates on top.
    pub duplicate_ratio: f64,
    /// Sprinkle the edge cases `sort -u` must get right; see
    /// [`write_lines_dataset`].
    pub edge_cases: bool,
    /// Cycled over files: file `i` uses `compression[i % len]`; empty means
    /// all plain.
    pub compression: Vec<Compression>,
    pub seed: u64,
}

impl LinesSpec {
    /// Small demo dataset: 8 files of ~256 KiB, 20-120 byte records, 30%
    /// duplicates, edge cases on, plain/plain/gzip/zstd, seed 42.
    pub fn sample() -> Self {
        Self {
            files: 8,
            bytes_per_file: 256 << 10,
            min_len: 20,
            max_len: 120,
            duplicate_ratio: 0.3,
            edge_cases: true,
            compression: vec![
                Compression::Plain,
                Compression::Plain,
                Compression::Gzip,
                Compression::Zstd,
            ],
            seed: 42,
        }
    }

    fn compression_of(&self, file: usize) -> Compression {
        cycled(&self.compression, file)
    }

    fn validate(&self) -> io::Result<()> {
        if self.min_len > self.max_len {
            return Err(invalid_input(format!(
                "min_len {} exceeds max_len {}",
                self.min_len, self.max_len
            )));
        }
        check_ratio("duplicate_ratio", self.duplicate_ratio)
    }
}

/// Writes `part-00000.txt`, `part-00001.txt.gz`, ... into `dir`, creating
/// it if needed; existing files of the same names are overwritten.
///
/// With `edge_cases` on, the dataset contains at least once: empty lines,
/// lines ending in '\r', lines with NUL bytes, lines with non-UTF-8 bytes,
/// lines with leading and trailing spaces and tabs, a line that is a prefix
/// of another, exact duplicates across files, a last line without '\n'
/// (in the last record-bearing file), a 0-byte file and a file of newlines
/// only. The two special files take the last plain-compressed slots so
/// they stay literally 0 bytes / newlines on disk (a compressed slot is used
/// only if no file is plain). File-level cases need room: one file carries
/// records only; two add the empty file; three the newlines-only file; four
/// or more also give cross-file duplicates.
pub fn write_lines_dataset(dir: &Path, spec: &LinesSpec) -> io::Result<GeneratedDataset> {
    spec.validate()?;
    fs::create_dir_all(dir)?;
    let roles = plan_roles(spec);
    let first_records = roles.iter().position(|&r| r == Role::Records);
    let last_records = roles.iter().rposition(|&r| r == Role::Records);
    let mut generator = LinesGenerator::new(spec);
    let mut files = Vec::with_capacity(spec.files);
    for (i, &role) in roles.iter().enumerate() {
        let compression = spec.compression_of(i);
        let mut out = LineWriter::create(part_path(dir, i, compression), compression)?;
        match role {
            Role::Empty => {}
            Role::NewlinesOnly => {
                for _ in 0..generator.rng.random_range(2..=16) {
                    out.write_line(b"")?;
                }
            }
            Role::Records => {
                generator.fill_file(&mut out, Some(i) == first_records, Some(i) == last_records)?
            }
        }
        files.push(out.finish()?);
    }
    Ok(GeneratedDataset::from_files(files))
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Records,
    Empty,
    NewlinesOnly,
}

/// Assigns the file-level edge cases, preferring the last plain slots and
/// always leaving at least one file of records.
fn plan_roles(spec: &LinesSpec) -> Vec<Role> {
    let mut roles = vec![Role::Records; spec.files];
    if !spec.edge_cases {
        return roles;
    }
    // Popped from the end: latest plain files first, then latest others.
    let (plain, compressed): (Vec<usize>, Vec<usize>) =
        (0..spec.files).partition(|&i| spec.compression_of(i) == Compression::Plain);
    let mut candidates = compressed;
    candidates.extend(plain);
    for role in [Role::Empty, Role::NewlinesOnly] {
        let records_files = roles.iter().filter(|&&r| r == Role::Records).count();
        match candidates.pop() {
            Some(i) if records_files > 1 => roles[i] = role,
            _ => break,
        }
    }
    roles
}

/// Record-level edge cases.
#[derive(Debug, Clone, Copy)]
enum Edge {
    Empty,
    CarriageReturn,
    Nul,
    NonUtf8,
    Whitespace,
    PrefixPair,
}

impl Edge {
    const ALL: [Edge; 6] = [
        Edge::Empty,
        Edge::CarriageReturn,
        Edge::Nul,
        Edge::NonUtf8,
        Edge::Whitespace,
        Edge::PrefixPair,
    ];
}

/// With edge cases on, one step in this many emits one: a few per 100 KiB
/// of output, few enough not to move the duplicate ratio.
const EDGE_ONE_IN: u32 = 512;

/// Whitespace padding; each mixes spaces and tabs so every padded line has
/// both at both ends.
const PADS: [&[u8]; 4] = [b" \t", b"\t ", b" \t ", b"\t \t"];

pub(crate) struct LinesGenerator<'a> {
    spec: &'a LinesSpec,
    rng: ChaCha8Rng,
    pool: Pool,
    /// Scratch buffer for the record being built.
    record: Vec<u8>,
}

impl<'a> LinesGenerator<'a> {
    pub(crate) fn new(spec: &'a LinesSpec) -> Self {
        Self {
            spec,
            rng: rng_for(spec.seed),
            pool: Pool::new(spec.max_len),
            record: Vec::with_capacity(spec.max_len + 16),
        }
    }

    /// Fills `out` to the spec's size; `first` and `last` place the edge
    /// cases that need a first or last file.
    pub(crate) fn fill_file(
        &mut self,
        out: &mut LineWriter,
        first: bool,
        last: bool,
    ) -> io::Result<()> {
        if self.spec.edge_cases {
            if first {
                // Guarantee each record-level case however small the files.
                for edge in Edge::ALL {
                    self.emit_edge(out, edge)?;
                }
            } else if let Some(earlier) = self.pool.pick(&mut self.rng) {
                // The pool only holds earlier files' records at this point.
                out.write_line(earlier)?;
            }
        }
        while out.bytes() < self.spec.bytes_per_file {
            self.emit_step(out)?;
        }
        if self.spec.edge_cases && last {
            self.fresh();
            if self.record.is_empty() {
                push_printable(&mut self.rng, &mut self.record, 1);
            }
            out.write_unterminated(&self.record)?;
        }
        Ok(())
    }

    /// One record (two for a prefix pair): a duplicate with probability
    /// `duplicate_ratio`, else fresh, occasionally an edge case.
    fn emit_step(&mut self, out: &mut LineWriter) -> io::Result<()> {
        if self.rng.random_bool(self.spec.duplicate_ratio)
            && let Some(earlier) = self.pool.pick(&mut self.rng)
        {
            return out.write_line(earlier);
        }
        if self.spec.edge_cases && self.rng.random_ratio(1, EDGE_ONE_IN) {
            let edge = Edge::ALL[self.rng.random_range(0..Edge::ALL.len())];
            return self.emit_edge(out, edge);
        }
        self.fresh();
        self.emit_record(out)
    }

    /// Replaces the scratch record with random printable ASCII.
    fn fresh(&mut self) {
        self.record.clear();
        let len = self.rng.random_range(self.spec.min_len..=self.spec.max_len);
        push_printable(&mut self.rng, &mut self.record, len);
    }

    /// Writes the scratch record and makes it available for duplication.
    fn emit_record(&mut self, out: &mut LineWriter) -> io::Result<()> {
        out.write_line(&self.record)?;
        self.pool.push(&mut self.rng, &self.record);
        Ok(())
    }

    fn emit_edge(&mut self, out: &mut LineWriter, edge: Edge) -> io::Result<()> {
        match edge {
            // Not pooled: an empty line is a poor stand-in for a real
            // cross-file duplicate, and repeats anyway.
            Edge::Empty => return out.write_line(b""),
            Edge::CarriageReturn => {
                self.fresh();
                self.record.push(b'\r');
            }
            Edge::Nul => {
                self.fresh();
                for _ in 0..self.rng.random_range(1..=3) {
                    self.insert_randomly(0);
                }
            }
            Edge::NonUtf8 => {
                self.fresh();
                // 0xF8..=0xFF never occur in UTF-8, so the line is invalid
                // whatever surrounds it; the rest may form any sequence.
                let invalid = self.rng.random_range(0xF8..=0xFF);
                self.insert_randomly(invalid);
                for _ in 0..self.rng.random_range(0..=2) {
                    let high = self.rng.random_range(0x80..=0xFF);
                    self.insert_randomly(high);
                }
            }
            Edge::Whitespace => {
                self.fresh();
                let lead = PADS[self.rng.random_range(0..PADS.len())];
                let trail = PADS[self.rng.random_range(0..PADS.len())];
                self.record.splice(0..0, lead.iter().copied());
                self.record.extend_from_slice(trail);
            }
            Edge::PrefixPair => {
                self.fresh();
                if self.record.is_empty() {
                    push_printable(&mut self.rng, &mut self.record, 1);
                }
                self.emit_record(out)?;
                let extra = self.rng.random_range(1..=8);
                push_printable(&mut self.rng, &mut self.record, extra);
            }
        }
        self.emit_record(out)
    }

    fn insert_randomly(&mut self, byte: u8) {
        let at = self.rng.random_range(0..=self.record.len());
        self.record.insert(at, byte);
    }
}

/// The sample dataset (`LinesSpec::sample`) in `dir`, generated on first
/// use: what was written when this call generated it, `None` when a
/// complete one was already there. One whose generation did not finish is
/// generated again: its marker (`dir` + `.complete`) is written last.
pub fn ensure_sample_dataset(dir: &Path) -> io::Result<Option<GeneratedDataset>> {
    let mut done = dir.as_os_str().to_owned();
    done.push(".complete");
    if Path::new(&done).exists() {
        return Ok(None);
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let generated = write_lines_dataset(dir, &LinesSpec::sample())?;
    fs::write(&done, b"")?;
    Ok(Some(generated))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use tempfile::TempDir;

    use super::*;
    use crate::datagen::GeneratedFile;
    use crate::datagen::testutil::{decoded, lines, sort_record_count};

    fn generate(spec: &LinesSpec) -> (TempDir, GeneratedDataset) {
        let dir = tempfile::tempdir().unwrap();
        let dataset = write_lines_dataset(dir.path(), spec).unwrap();
        (dir, dataset)
    }

    fn plain(files: usize, bytes_per_file: u64, duplicate_ratio: f64) -> LinesSpec {
        LinesSpec {
            files,
            bytes_per_file,
            duplicate_ratio,
            edge_cases: false,
            compression: Vec::new(),
            ..LinesSpec::sample()
        }
    }

    fn observed_duplicate_ratio(dataset: &GeneratedDataset) -> f64 {
        let contents: Vec<Vec<u8>> = dataset.files.iter().map(decoded).collect();
        let all: Vec<&[u8]> = contents.iter().flat_map(|c| lines(c)).collect();
        let distinct: HashSet<&[u8]> = all.iter().copied().collect();
        1.0 - distinct.len() as f64 / all.len() as f64
    }

    #[test]
    fn same_spec_gives_same_bytes() {
        let spec = LinesSpec::sample();
        let (_a, first) = generate(&spec);
        let (_b, second) = generate(&spec);
        assert_eq!(first.files.len(), second.files.len());
        for (x, y) in first.files.iter().zip(&second.files) {
            assert_eq!(x.path.file_name(), y.path.file_name());
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
        }

        let (_c, reseeded) = generate(&LinesSpec { seed: 43, ..spec });
        assert_ne!(
            fs::read(&first.files[0].path).unwrap(),
            fs::read(&reseeded.files[0].path).unwrap()
        );
    }

    #[test]
    fn names_files_by_index_and_compression_in_a_new_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested/out");
        let dataset = write_lines_dataset(&dir, &LinesSpec::sample()).unwrap();
        let names: Vec<String> = dataset
            .files
            .iter()
            .map(|f| f.path.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "part-00000.txt",
                "part-00001.txt",
                "part-00002.txt.gz",
                "part-00003.txt.zst",
                "part-00004.txt",
                "part-00005.txt",
                "part-00006.txt.gz",
                "part-00007.txt.zst",
            ]
        );
    }

    #[test]
    fn honours_duplicate_ratio() {
        for ratio in [0.0, 0.3, 0.75] {
            let (_dir, dataset) = generate(&plain(4, 256 << 10, ratio));
            let observed = observed_duplicate_ratio(&dataset);
            assert!(
                (observed - ratio).abs() < 0.02,
                "asked {ratio}, observed {observed}"
            );
        }
        // Edge cases add only a handful of extra duplicates.
        let (_dir, dataset) = generate(&LinesSpec::sample());
        let observed = observed_duplicate_ratio(&dataset);
        assert!((observed - 0.3).abs() < 0.02, "observed {observed}");
    }

    /// Asserts every edge case promised by `write_lines_dataset`.
    fn assert_edge_cases(dataset: &GeneratedDataset) {
        let contents: Vec<Vec<u8>> = dataset.files.iter().map(decoded).collect();
        let per_file: Vec<Vec<&[u8]>> = contents.iter().map(|c| lines(c)).collect();
        let all = || per_file.iter().flatten().copied();
        let is_blank = |b: &u8| *b == b' ' || *b == b'\t';

        let empty_among_records = per_file
            .iter()
            .any(|f| f.iter().any(|l| l.is_empty()) && f.iter().any(|l| !l.is_empty()));
        assert!(empty_among_records, "empty line between records");
        assert!(all().any(|l| l.ends_with(b"\r")), "CRLF line");
        assert!(all().any(|l| l.contains(&0)), "NUL byte");
        assert!(all().any(|l| std::str::from_utf8(l).is_err()), "non-UTF-8");
        assert!(
            all().any(|l| {
                l.first().is_some_and(is_blank)
                    && l.last().is_some_and(is_blank)
                    && l.contains(&b'\t')
                    && l.contains(&b' ')
            }),
            "leading and trailing spaces and tabs"
        );

        // If a is a proper prefix of b, a's successor in sorted order also
        // starts with a, so checking neighbours is enough.
        let mut distinct: Vec<&[u8]> = all().filter(|l| !l.is_empty()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.windows(2).any(|w| w[1].starts_with(w[0])),
            "a line that prefixes another"
        );

        let mut first_file: HashMap<&[u8], usize> = HashMap::new();
        let cross_file = per_file.iter().enumerate().any(|(i, f)| {
            f.iter()
                .filter(|l| !l.is_empty())
                .any(|l| *first_file.entry(l).or_insert(i) != i)
        });
        assert!(cross_file, "duplicate across files");

        assert!(
            contents
                .iter()
                .any(|c| c.last().is_some_and(|&b| b != b'\n')),
            "last line without newline"
        );
        assert!(contents.iter().any(|c| c.is_empty()), "empty file");
        assert!(
            contents
                .iter()
                .any(|c| !c.is_empty() && c.iter().all(|&b| b == b'\n')),
            "newlines-only file"
        );
    }

    #[test]
    fn the_sample_is_generated_once_and_again_if_unfinished() {
        let root = TempDir::new().unwrap();
        let dir = root.path().join("sample-input");
        let first = ensure_sample_dataset(&dir).unwrap().expect("generated");
        assert_eq!(first.files.len(), LinesSpec::sample().files);
        let written = fs::metadata(&first.files[0].path)
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(ensure_sample_dataset(&dir).unwrap(), None, "kept");
        assert_eq!(
            fs::metadata(&first.files[0].path)
                .unwrap()
                .modified()
                .unwrap(),
            written
        );
        // A generation cut short (no marker, a stray file) starts over.
        fs::remove_file(root.path().join("sample-input.complete")).unwrap();
        fs::write(dir.join("stray"), b"x").unwrap();
        let again = ensure_sample_dataset(&dir)
            .unwrap()
            .expect("generated again");
        assert_eq!(again, first);
        assert!(!dir.join("stray").exists());
    }

    #[test]
    fn sample_contains_every_edge_case() {
        let (_dir, dataset) = generate(&LinesSpec::sample());
        assert_edge_cases(&dataset);
        // Plain slots exist, so the special files are literal on disk.
        let sizes: Vec<u64> = dataset
            .files
            .iter()
            .map(|f| fs::metadata(&f.path).unwrap().len())
            .collect();
        assert!(sizes.contains(&0));
    }

    #[test]
    fn edge_cases_survive_tiny_and_compressed_datasets() {
        for seed in 0..4 {
            let spec = LinesSpec {
                files: 4,
                bytes_per_file: 0,
                min_len: 0,
                max_len: 3,
                compression: vec![Compression::Gzip, Compression::Zstd],
                seed,
                ..LinesSpec::sample()
            };
            let (_dir, dataset) = generate(&spec);
            assert_edge_cases(&dataset);
        }
    }

    #[test]
    fn special_files_prefer_late_plain_slots() {
        use Compression::{Gzip, Plain, Zstd};
        use Role::{Empty, NewlinesOnly as Newlines, Records};
        let roles = |files, compression: &[Compression]| {
            plan_roles(&LinesSpec {
                files,
                compression: compression.to_vec(),
                ..LinesSpec::sample()
            })
        };
        assert_eq!(roles(1, &[]), [Records]);
        assert_eq!(roles(2, &[]), [Records, Empty]);
        assert_eq!(roles(3, &[]), [Records, Newlines, Empty]);
        assert_eq!(
            roles(8, &LinesSpec::sample().compression),
            [
                Records, Records, Records, Records, Newlines, Empty, Records, Records
            ]
        );
        // Only one plain slot: the newlines file falls back to a compressed one.
        assert_eq!(
            roles(4, &[Gzip, Plain, Zstd]),
            [Records, Empty, Records, Newlines]
        );
    }

    #[test]
    fn one_file_still_gets_record_level_edge_cases() {
        let (_dir, dataset) = generate(&LinesSpec {
            files: 1,
            ..LinesSpec::sample()
        });
        let data = decoded(&dataset.files[0]);
        let all = lines(&data);
        assert!(all.iter().any(|l| l.is_empty()));
        assert!(all.iter().any(|l| l.ends_with(b"\r")));
        assert!(all.iter().any(|l| l.contains(&0)));
        assert_ne!(data.last(), Some(&b'\n'));
    }

    #[test]
    fn without_edge_cases_records_are_printable_and_in_range() {
        let spec = LinesSpec {
            min_len: 5,
            max_len: 9,
            ..plain(3, 32 << 10, 0.3)
        };
        let (_dir, dataset) = generate(&spec);
        for file in &dataset.files {
            let data = decoded(file);
            assert_eq!(data.last(), Some(&b'\n'));
            for line in lines(&data) {
                assert!((5..=9).contains(&line.len()), "{line:?}");
                assert!(line.iter().all(|b| (0x20..=0x7E).contains(b)));
            }
        }
    }

    #[test]
    fn reported_counts_match_decoded_contents() {
        let (_dir, dataset) = generate(&LinesSpec::sample());
        let check = |file: &GeneratedFile| {
            let data = decoded(file);
            assert_eq!(file.uncompressed_bytes, data.len() as u64, "{file:?}");
            assert_eq!(file.records, sort_record_count(&data), "{file:?}");
            assert_eq!(file.records, lines(&data).len() as u64, "{file:?}");
            if file.compression == Compression::Plain {
                assert_eq!(fs::metadata(&file.path).unwrap().len(), data.len() as u64);
            } else {
                assert!(file.path.extension().is_some());
            }
        };
        dataset.files.iter().for_each(check);
        let compressed = dataset
            .files
            .iter()
            .filter(|f| f.compression != Compression::Plain)
            .count();
        assert_eq!(compressed, 4);
        assert_eq!(
            dataset.records,
            dataset.files.iter().map(|f| f.records).sum::<u64>()
        );
        assert_eq!(
            dataset.uncompressed_bytes,
            dataset
                .files
                .iter()
                .map(|f| f.uncompressed_bytes)
                .sum::<u64>()
        );
        // ~256 KiB per records file, overshooting by at most one record.
        let target = LinesSpec::sample().bytes_per_file;
        let sizes = dataset.files.iter().map(|f| f.uncompressed_bytes);
        assert_eq!(
            sizes.filter(|&b| b >= target && b < target + 512).count(),
            6
        );
    }

    #[test]
    fn rejects_invalid_specs() {
        let dir = tempfile::tempdir().unwrap();
        for spec in [
            LinesSpec {
                min_len: 10,
                max_len: 9,
                ..LinesSpec::sample()
            },
            LinesSpec {
                duplicate_ratio: 1.5,
                ..LinesSpec::sample()
            },
        ] {
            let err = write_lines_dataset(dir.path(), &spec).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
