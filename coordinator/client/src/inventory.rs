//! What a submission sends, read and put in path order (see `path_order`
//! for why). A manifest is read through once first to validate every
//! line, so a bad line is reported with its number before anything is
//! sent; a manifest already in path order is then read again and sent as
//! it streams, any other is sorted in that same first pass and sent from
//! the sort. A directory is walked, stat'ing each file, into the sort.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use proto_schema::command::FileEntry;
use proto_schema::{BatchShape, BatchView, RecordBatch};

use crate::manifest::{ManifestError, ManifestFormat, ManifestReader, walk};
use crate::path_order::{PathOrderError, PathSorter, SortMemory, batch_bytes, push_entry};
use crate::read_ahead::{read_ahead, read_ahead_each};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The reading thread could not start.
    #[error(transparent)]
    Thread(#[from] std::io::Error),
    /// Sorting a walk.
    #[error(transparent)]
    Sort(#[from] PathOrderError),
    /// Sorting a manifest.
    #[error("{}: {error}", manifest.display())]
    SortManifest {
        manifest: PathBuf,
        error: PathOrderError,
    },
    #[error(
        "{}:{again}: {path:?} is listed twice in the manifest (first on line {first})",
        manifest.display()
    )]
    Repeated {
        manifest: PathBuf,
        path: String,
        first: u64,
        again: u64,
    },
    /// A repeat the sort found, whose first listing could not be found
    /// again in the file.
    #[error(
        "{}:{again}: the path is listed on an earlier line too (reading it again: {reason})",
        manifest.display()
    )]
    RepeatedSomewhere {
        manifest: PathBuf,
        again: u64,
        reason: String,
    },
}

/// The entries to submit, in path order, and how many there are. A
/// reading error ends them.
pub struct Inventory {
    files: u64,
    entries: Box<dyn Iterator<Item = Result<FileEntry, InventoryError>> + Send>,
}

impl Inventory {
    /// Entries (manifest lines, or files walked).
    pub fn files(&self) -> u64 {
        self.files
    }
}

impl Iterator for Inventory {
    type Item = Result<FileEntry, InventoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.entries.next()
    }
}

/// Reads a manifest through once, validating every line. While the paths
/// come in order, nothing is kept (the file is read again to send it); at
/// the first path out of order, the lines before it are read again into a
/// sort and the rest follow them there, as the batches the reading thread
/// made (no allocation nor copy per line on this thread).
pub fn read_manifest(path: &Path, memory: &SortMemory) -> Result<Inventory, InventoryError> {
    let format = ManifestFormat::detect(path)?;
    let reader = ManifestReader::open(path, format)?;
    let batches = ManifestBatches::new(reader, batch_bytes(memory.run_bytes()));
    let mut lines = 0;
    // The last path, while the paths ascend.
    let mut last = Vec::new();
    let mut sorter: Option<PathSorter> = None;
    for batch in read_ahead_each(batches)? {
        let batch = batch?;
        let first_line = lines + 1;
        lines += batch.len() as u64;
        if let Some(sorter) = &mut sorter {
            sorter
                .add(batch)
                .map_err(|e| in_manifest(path, format, e))?;
            continue;
        }
        let Some(at) = first_out_of_order(path, &batch, &last, first_line)? else {
            last.clear();
            last.extend_from_slice(batch.record(batch.len() - 1).key);
            continue;
        };
        let mut started = PathSorter::new(memory)?;
        let earlier = ManifestReader::open(path, format)?.take(first_line as usize - 1 + at);
        for (n, entry) in earlier.enumerate() {
            started
                .push(&entry?, n as u64 + 1)
                .map_err(|e| in_manifest(path, format, e))?;
        }
        for index in at..batch.len() {
            started
                .push_record(batch.record(index))
                .map_err(|e| in_manifest(path, format, e))?;
        }
        sorter = Some(started);
    }
    let entries: Box<dyn Iterator<Item = _> + Send> = match sorter {
        None => Box::new(
            read_ahead(ManifestReader::open(path, format)?)?.map(|e| e.map_err(Into::into)),
        ),
        Some(sorter) => {
            let sorted = sorter.finish().map_err(|e| in_manifest(path, format, e))?;
            let manifest = path.to_owned();
            Box::new(sorted.map(move |e| e.map_err(|e| in_manifest(&manifest, format, e))))
        }
    };
    Ok(Inventory {
        files: lines,
        entries,
    })
}

/// Where the paths of `batch` (lines from `first_line` on) stop
/// ascending after `last`, the path before them (empty for none); a path
/// equal to the one before it is a repeat, named with both lines.
fn first_out_of_order(
    manifest: &Path,
    batch: &RecordBatch,
    last: &[u8],
    first_line: u64,
) -> Result<Option<usize>, InventoryError> {
    let mut previous = last;
    for index in 0..batch.len() {
        let path = batch.record(index).key;
        match previous.cmp(path) {
            Ordering::Less => previous = path,
            Ordering::Greater => return Ok(Some(index)),
            Ordering::Equal => {
                let again = first_line + index as u64;
                return Err(InventoryError::Repeated {
                    manifest: manifest.to_owned(),
                    path: String::from_utf8_lossy(path).into_owned(),
                    first: again - 1,
                    again,
                });
            }
        }
    }
    Ok(None)
}

/// A manifest's entries as batches of the sort's records (`push_entry`),
/// each entry's position its line: what `read_manifest` reads ahead. A
/// bad line ends them, after the entries before it.
struct ManifestBatches {
    reader: ManifestReader,
    batch_bytes: usize,
    value: Vec<u8>,
    /// The last batch's, to make the next one as large at once: growing
    /// each by doubling held twice its bytes in the sort's runs.
    shape: BatchShape,
    /// The error that ended the entries, handed out after them.
    failed: Option<InventoryError>,
    done: bool,
}

impl ManifestBatches {
    fn new(reader: ManifestReader, batch_bytes: usize) -> Self {
        Self {
            reader,
            batch_bytes,
            value: Vec::new(),
            shape: BatchShape::default(),
            failed: None,
            done: false,
        }
    }
}

impl Iterator for ManifestBatches {
    type Item = Result<RecordBatch, InventoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(failed) = self.failed.take() {
            return Some(Err(failed));
        }
        let mut batch = RecordBatch::with_room_for(self.shape);
        while !self.done && batch.payload_bytes() < self.batch_bytes {
            let failed: InventoryError = match self.reader.next_entry() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Ok((entry, line))) => {
                    let parts = (
                        entry.path.as_bytes(),
                        entry.size,
                        entry.mtime_ns,
                        entry.checksum,
                    );
                    match push_entry(&mut batch, &mut self.value, parts, line) {
                        Ok(()) => continue,
                        Err(error) => InventoryError::SortManifest {
                            manifest: self.reader.path().to_owned(),
                            error,
                        },
                    }
                }
                Some(Err(error)) => error.into(),
            };
            self.done = true;
            if batch.len() == 0 {
                return Some(Err(failed));
            }
            self.failed = Some(failed);
        }
        self.shape = batch.shape();
        (batch.len() > 0).then_some(Ok(batch))
    }
}

/// Walks a directory into the sort.
pub fn read_walk(dir: &Path, memory: &SortMemory) -> Result<Inventory, InventoryError> {
    read_walks(&[dir], memory)
}

/// As [`read_walk`], of several roots (directories or files) as one
/// inventory in path order; a file under two roots is a repeated path.
pub fn read_walks(
    roots: &[impl AsRef<Path>],
    memory: &SortMemory,
) -> Result<Inventory, InventoryError> {
    let mut sorter = PathSorter::new(memory)?;
    let mut files = 0;
    for root in roots {
        for entry in read_ahead(walk(root.as_ref())?)? {
            files += 1;
            sorter.push(&entry?, files)?;
        }
    }
    let sorted = sorter.finish()?;
    Ok(Inventory {
        files,
        entries: Box::new(sorted.map(|e| e.map_err(Into::into))),
    })
}

/// A sort error in terms of the manifest: a repeated path with its line
/// numbers, found again in the file when the sort knew only the later one.
fn in_manifest(path: &Path, format: ManifestFormat, error: PathOrderError) -> InventoryError {
    let PathOrderError::Repeated {
        path: repeated_path,
        first,
        again,
    } = error
    else {
        return InventoryError::SortManifest {
            manifest: path.to_owned(),
            error,
        };
    };
    let found = || -> Result<(String, u64), String> {
        let listed = |n: u64| -> Result<FileEntry, String> {
            let mut entries = ManifestReader::open(path, format)
                .map_err(|e| e.to_string())?
                .skip(n as usize - 1);
            entries
                .next()
                .ok_or_else(|| format!("line {n} is gone"))?
                .map_err(|e| e.to_string())
        };
        let repeated_path = match repeated_path {
            Some(p) => p,
            None => listed(again)?.path,
        };
        let first = match first {
            Some(first) => first,
            None => {
                let mut first = None;
                let entries = ManifestReader::open(path, format).map_err(|e| e.to_string())?;
                for (n, entry) in entries.enumerate() {
                    if entry.map_err(|e| e.to_string())?.path == repeated_path {
                        first = Some(n as u64 + 1);
                        break;
                    }
                }
                first.ok_or("the first listing is gone")?
            }
        };
        Ok((repeated_path, first))
    };
    match found() {
        Ok((repeated_path, first)) => InventoryError::Repeated {
            manifest: path.to_owned(),
            path: repeated_path,
            first,
            again,
        },
        Err(reason) => InventoryError::RepeatedSomewhere {
            manifest: path.to_owned(),
            again,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read(lines: &[String], run_bytes: usize) -> Result<(u64, Vec<FileEntry>), String> {
        let dir = tempfile::TempDir::new().unwrap();
        let manifest = dir.path().join("m.tsv");
        std::fs::write(&manifest, lines.concat()).unwrap();
        let memory = SortMemory {
            bytes: run_bytes,
            temp_dir: dir.path().to_owned(),
        };
        let text = |e: InventoryError| e.to_string().replace(&*manifest.to_string_lossy(), "F");
        let inventory = read_manifest(&manifest, &memory).map_err(text)?;
        let files = inventory.files();
        let entries = inventory.collect::<Result<_, _>>().map_err(text)?;
        Ok((files, entries))
    }

    fn line(path: &str, n: usize) -> String {
        format!("{path}\t{n}\t{n}.5\t{:02x}{:02x}\n", n % 256, path.len())
    }

    proptest! {
        /// However far a manifest's lines keep path order before they stop
        /// and however small the sort's batches and runs, its entries come
        /// back whole, once each, in path order, as its lines say.
        #[test]
        fn a_manifest_comes_back_in_path_order_whatever_its_order(
            paths in proptest::collection::btree_set("[a-c]{1,3}/[a-z]{1,4}", 1..150),
            in_order in 0usize..150,
            seed in any::<u64>(),
            run_bytes in prop_oneof![Just(48usize), Just(4096), Just(1 << 20)],
        ) {
            let paths: Vec<&String> = paths.iter().collect();
            let mut order: Vec<usize> = (0..paths.len()).collect();
            let mut rng = seed;
            for i in (in_order.min(order.len())..order.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let lo = in_order.min(i);
                let j = lo + (rng >> 33) as usize % (i - lo + 1);
                order.swap(i, j);
            }
            let lines: Vec<String> = order.iter().map(|&i| line(paths[i], i)).collect();
            let (files, entries) = read(&lines, run_bytes).unwrap();
            prop_assert_eq!(files, paths.len() as u64);
            let expected: Vec<FileEntry> = (0..paths.len())
                .map(|i| crate::manifest::parse_line(ManifestFormat::Tsv, line(paths[i], i).as_bytes()).unwrap())
                .collect();
            prop_assert_eq!(entries, expected);
        }
    }

    #[test]
    fn a_repeated_path_names_both_lines_in_order_or_not() {
        let lines = |paths: &[&str]| -> Vec<String> {
            paths.iter().enumerate().map(|(n, p)| line(p, n)).collect()
        };
        for run_bytes in [48, 1 << 20] {
            let error = read(&lines(&["a", "b", "b", "c"]), run_bytes).unwrap_err();
            assert!(
                error.starts_with("F:3: \"b\" is listed twice in the manifest (first on line 2)"),
                "{error}"
            );
            let error = read(&lines(&["b", "a", "c", "a", "d"]), run_bytes).unwrap_err();
            assert!(
                error.starts_with("F:4: \"a\" is listed twice in the manifest (first on line 2)"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_bad_line_is_named_whether_the_paths_ascend_or_not() {
        for run_bytes in [48, 1 << 20] {
            for first in ["a", "z"] {
                let lines = [
                    line(first, 1),
                    line("m", 2),
                    "x\tbig\t1\n".into(),
                    line("b", 4),
                ];
                let error = read(&lines, run_bytes).unwrap_err();
                assert!(error.starts_with("F:3: size \"big\""), "{error}");
            }
        }
    }
}
