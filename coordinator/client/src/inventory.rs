//! What a submission sends, read and put in path order (see `path_order`
//! for why). A manifest is read through once first to validate every
//! line, so a bad line is reported with its number before anything is
//! sent; a manifest already in path order is then read again and sent as
//! it streams, any other is sorted in that same first pass and sent from
//! the sort. A directory is walked, stat'ing each file, into the sort.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use proto_schema::command::FileEntry;

use crate::manifest::{ManifestError, ManifestFormat, ManifestReader, walk};
use crate::path_order::{PathOrderError, PathSorter, SortMemory};
use crate::read_ahead::read_ahead;

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
/// sort and the rest follow them there.
pub fn read_manifest(path: &Path, memory: &SortMemory) -> Result<Inventory, InventoryError> {
    let format = ManifestFormat::detect(path)?;
    let mut lines = 0;
    let mut last: Option<String> = None;
    let mut sorter: Option<PathSorter> = None;
    for entry in read_ahead(ManifestReader::open(path, format)?)? {
        let entry = entry?;
        lines += 1;
        if let Some(sorter) = &mut sorter {
            sorter
                .push(&entry, lines)
                .map_err(|e| in_manifest(path, format, e))?;
            continue;
        }
        match last.as_deref().map(|l| l.cmp(&entry.path)) {
            Some(Ordering::Equal) => {
                return Err(InventoryError::Repeated {
                    manifest: path.to_owned(),
                    path: entry.path,
                    first: lines - 1,
                    again: lines,
                });
            }
            Some(Ordering::Greater) => {
                let mut started = PathSorter::new(memory)?;
                let earlier = ManifestReader::open(path, format)?.take(lines as usize - 1);
                for (n, entry) in earlier.chain([Ok(entry)]).enumerate() {
                    started
                        .push(&entry?, n as u64 + 1)
                        .map_err(|e| in_manifest(path, format, e))?;
                }
                sorter = Some(started);
            }
            _ => last = Some(entry.path),
        }
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
