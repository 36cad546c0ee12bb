//! File inventories: `path \t size \t mtime \t md5` records, as a file
//! system walk or a storage listing produces them, keyed by path. Used to
//! benchmark keyed ingest beside `sort -u` and as coordinator manifests.
//!
//! Paths come from a bounded directory tree (a few roots, tens of projects,
//! dated and sharded subdirectories), so neighbouring keys share long
//! prefixes as real listings do; file names carry a counter, so fresh
//! paths never collide.

use std::fs;
use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::pool::Pool;
use super::sink::{Compression, LineWriter};
use super::{GeneratedDataset, check_ratio, invalid_input, rng_for};

/// Shape of an inventory. The same spec always produces the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct InventorySpec {
    pub files: usize,
    pub records_per_file: u64,
    /// Fraction of records that list an earlier path again, with a new
    /// size, mtime and md5 (a file that changed between two listings).
    pub relisted_ratio: f64,
    pub seed: u64,
}

impl InventorySpec {
    /// 4 files of 10,000 records, 10% relisted paths, seed 42.
    pub fn sample() -> Self {
        Self {
            files: 4,
            records_per_file: 10_000,
            relisted_ratio: 0.1,
            seed: 42,
        }
    }
}

/// Length of a path in bytes.
pub const PATH_LEN: RangeInclusive<usize> = 60..=110;

const ROOTS: &[&str] = &[
    "/data",
    "/srv/storage",
    "/home/shared",
    "/mnt/archive",
    "/var/lib/ingest",
];
const KINDS: &[&str] = &[
    "raw",
    "processed",
    "images",
    "logs",
    "exports",
    "models",
    "reports",
];
const EXTENSIONS: &[&str] = &[
    "parquet", "csv", "json.gz", "jpg", "log", "txt", "bin", "tsv",
];
/// Projects under each root.
const PROJECTS: u32 = 48;
/// Shards under each dated directory.
const SHARDS: u32 = 256;

/// Writes plain `part-00000.tsv`, ... into `dir`, creating it if needed.
pub fn write_inventory_dataset(dir: &Path, spec: &InventorySpec) -> io::Result<GeneratedDataset> {
    check_ratio("relisted_ratio", spec.relisted_ratio)?;
    if spec.files == 0 {
        return Err(invalid_input("an inventory needs at least one file".into()));
    }
    fs::create_dir_all(dir)?;
    let mut generator = InventoryGenerator {
        rng: rng_for(spec.seed),
        pool: Pool::new(*PATH_LEN.end()),
        next_file_id: 0,
        path: Vec::with_capacity(*PATH_LEN.end()),
        record: Vec::with_capacity(*PATH_LEN.end() + 64),
    };
    let mut files = Vec::with_capacity(spec.files);
    for i in 0..spec.files {
        let mut out = LineWriter::create(dir.join(format!("part-{i:05}.tsv")), Compression::Plain)?;
        for _ in 0..spec.records_per_file {
            generator.emit(&mut out, spec.relisted_ratio)?;
        }
        files.push(out.finish()?);
    }
    Ok(GeneratedDataset::from_files(files))
}

struct InventoryGenerator {
    rng: ChaCha8Rng,
    /// Earlier paths, for relisting.
    pool: Pool,
    /// Counter in every fresh file name: fresh paths are unique.
    next_file_id: u64,
    path: Vec<u8>,
    record: Vec<u8>,
}

impl InventoryGenerator {
    fn emit(&mut self, out: &mut LineWriter, relisted_ratio: f64) -> io::Result<()> {
        self.path.clear();
        let relisted = self.rng.random_bool(relisted_ratio)
            && match self.pool.pick(&mut self.rng) {
                Some(earlier) => {
                    self.path.extend_from_slice(earlier);
                    true
                }
                None => false,
            };
        if !relisted {
            fresh_path(&mut self.rng, self.next_file_id, &mut self.path);
            self.next_file_id += 1;
            self.pool.push(&mut self.rng, &self.path);
        }
        self.record.clear();
        self.record.extend_from_slice(&self.path);
        // Sizes spread over orders of magnitude, as real files are.
        let magnitude = self.rng.random_range(4..34);
        let size = self.rng.random_range(0..1u64 << magnitude);
        let mtime = self.rng.random_range(1_600_000_000u64..1_800_000_000);
        let md5: u128 = self.rng.random();
        write!(self.record, "\t{size}\t{mtime}\t{md5:032x}")?;
        out.write_line(&self.record)
    }
}

/// `root/project-NN/kind/YYYY/MM/DD/shard-NNN/name-ID.ext`, with
/// directories dropped from the end or the name padded so the whole path
/// is a length drawn from [`PATH_LEN`].
fn fresh_path(rng: &mut ChaCha8Rng, id: u64, path: &mut Vec<u8>) {
    let target = rng.random_range(PATH_LEN);
    let extension = EXTENSIONS[rng.random_range(0..EXTENSIONS.len())];
    let name = format!("f{id:x}");
    let directories = [
        ROOTS[rng.random_range(0..ROOTS.len())].to_string(),
        format!("project-{:02}", rng.random_range(0..PROJECTS)),
        KINDS[rng.random_range(0..KINDS.len())].to_string(),
        format!("{}", rng.random_range(2019..=2026)),
        format!("{:02}", rng.random_range(1..=12)),
        format!("{:02}", rng.random_range(1..=28)),
        format!("shard-{:03}", rng.random_range(0..SHARDS)),
    ];
    // Room the name needs: "/", the counter, "." and the extension.
    let name_len = 1 + name.len() + 1 + extension.len();
    let mut used = 0;
    for directory in &directories {
        if used + directory.len() + 1 + name_len > target && used > 0 {
            break;
        }
        if used > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(directory.as_bytes());
        used = path.len();
    }
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    // Padding between the counter and the extension: lowercase letters.
    while path.len() + 1 + extension.len() < target {
        path.push(b'a' + rng.random_range(0..26u8));
    }
    path.push(b'.');
    path.extend_from_slice(extension.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::datagen::testutil::lines;

    fn spec() -> InventorySpec {
        InventorySpec {
            files: 3,
            records_per_file: 5_000,
            relisted_ratio: 0.1,
            seed: 7,
        }
    }

    #[test]
    fn same_spec_gives_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = write_inventory_dataset(a.path(), &spec()).unwrap();
        let second = write_inventory_dataset(b.path(), &spec()).unwrap();
        for (x, y) in first.files.iter().zip(&second.files) {
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
        }
    }

    /// Four well-formed fields; paths within the length range, under a
    /// shared tree; relisted paths at about the asked ratio and fresh
    /// paths unique.
    #[test]
    fn records_look_like_a_listing() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = write_inventory_dataset(dir.path(), &spec()).unwrap();
        assert_eq!(dataset.records, 15_000);
        let mut seen = HashSet::new();
        let mut relisted = 0;
        let mut prefixes = HashSet::new();
        for file in &dataset.files {
            let data = fs::read(&file.path).unwrap();
            for line in lines(&data) {
                let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
                assert_eq!(fields.len(), 4, "{}", String::from_utf8_lossy(line));
                let path = fields[0];
                assert!(
                    PATH_LEN.contains(&path.len()),
                    "{}",
                    String::from_utf8_lossy(path)
                );
                assert!(path.starts_with(b"/") && !path.contains(&b'\t'));
                let number = |f: &[u8]| std::str::from_utf8(f).unwrap().parse::<u64>().unwrap();
                number(fields[1]);
                assert!((1_600_000_000..1_800_000_000).contains(&number(fields[2])));
                assert!(fields[3].len() == 32 && fields[3].iter().all(u8::is_ascii_hexdigit));
                prefixes.insert(
                    path.split(|&b| b == b'/')
                        .take(3)
                        .map(<[u8]>::to_vec)
                        .collect::<Vec<_>>(),
                );
                if !seen.insert(path.to_vec()) {
                    relisted += 1;
                }
            }
        }
        let ratio = relisted as f64 / 15_000.0;
        assert!((0.08..0.12).contains(&ratio), "relisted {ratio}");
        assert!(
            prefixes.len() <= ROOTS.len() * PROJECTS as usize,
            "a bounded tree"
        );
    }
}
