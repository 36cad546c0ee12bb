//! The input listing: the files under the PATH arguments, in a fixed
//! order, the input order.
//!
//! Input order decides which occurrence of a key is "first", so it must
//! not depend on the file system's whims: arguments in the order given,
//! directories walked depth-first with entries sorted by name (bytewise),
//! glob matches in sorted order. The walk streams: files are handed on as
//! they are found, and only one directory's entries are held at a time.
//!
//! Symbolic links follow `find -H`, `sort` and `rg`: a path named on the
//! command line (or matched by a glob) is read even if it is a link, while
//! links met inside a directory are skipped and counted unless the walk
//! follows links; a followed link that leads back to a directory being
//! walked is reported, never walked again. `-` stands for standard input,
//! in its place among the arguments.

use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use walkdir::{DirEntryExt, WalkDir};

/// The PATH argument that stands for standard input, and its name in the
/// ledger, as `sort` and `cat` take it.
pub const STDIN: &str = "-";

/// What the walk found at one place.
#[derive(Debug)]
pub enum Listed {
    /// A file to read, or standard input (path `-`, size 0, no time).
    File {
        path: PathBuf,
        size: u64,
        modified: Option<SystemTime>,
    },
    /// A path that cannot be read as input: missing, no permission, a glob
    /// that matched nothing, a symbolic link loop.
    Unreadable { path: PathBuf, error: String },
}

/// Directories a walk never enters, known by device and inode so that any
/// spelling of their path matches: the store's own files must not be read
/// back as input when someone ingests the directory holding the store.
#[derive(Debug, Default, Clone)]
pub struct Excluded(Vec<(u64, u64)>);

impl Excluded {
    /// The given directories that exist.
    pub fn dirs(dirs: &[PathBuf]) -> Self {
        Self(
            dirs.iter()
                .filter_map(|d| std::fs::metadata(d).ok())
                .map(|m| (m.dev(), m.ino()))
                .collect(),
        )
    }

    /// A followed link is known by its target (walkdir gives it the
    /// target's inode and metadata), so no link leads the walk into the
    /// store either.
    fn contains(&self, entry: &walkdir::DirEntry) -> bool {
        !self.0.is_empty()
            && entry.file_type().is_dir()
            && self.0.iter().any(|&(dev, ino)| {
                ino == entry.ino() && entry.metadata().is_ok_and(|m| m.dev() == dev)
            })
    }
}

/// Lists the input files under PATH arguments, in input order.
pub struct Walk {
    excluded: Excluded,
    follow_links: bool,
    links_skipped: u64,
}

impl Walk {
    /// A walk that never enters `excluded` directories and, inside
    /// directories, follows symbolic links only if `follow_links`.
    pub fn new(excluded: Excluded, follow_links: bool) -> Self {
        Self {
            excluded,
            follow_links,
            links_skipped: 0,
        }
    }

    /// Symbolic links met inside directories and not followed so far.
    pub fn links_skipped(&self) -> u64 {
        self.links_skipped
    }

    /// Lists every input under `inputs` in input order. Stops early if
    /// `visit` breaks.
    pub fn run(
        &mut self,
        inputs: &[PathBuf],
        visit: &mut dyn FnMut(Listed) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for input in inputs {
            if input.as_os_str() == STDIN {
                visit(Listed::File {
                    path: input.clone(),
                    size: 0,
                    modified: None,
                })?;
            } else if std::fs::symlink_metadata(input).is_err()
                && let Some(pattern) = input.to_str().filter(|s| is_glob(s))
            {
                self.walk_glob(input, pattern, visit)?;
            } else {
                self.walk_named(input, visit)?;
            }
        }
        ControlFlow::Continue(())
    }

    fn walk_glob(
        &mut self,
        input: &Path,
        pattern: &str,
        visit: &mut dyn FnMut(Listed) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let matches = match glob::glob(pattern) {
            Ok(matches) => matches,
            Err(e) => {
                return visit(Listed::Unreadable {
                    path: input.to_path_buf(),
                    error: format!("invalid glob pattern: {e}"),
                });
            }
        };
        let mut any = false;
        for entry in matches {
            any = true;
            match entry {
                // A file named `-` must not pass for standard input.
                Ok(path) if path.as_os_str() == STDIN => {
                    self.walk_named(&Path::new(".").join(path), visit)?
                }
                Ok(path) => self.walk_named(&path, visit)?,
                Err(e) => visit(Listed::Unreadable {
                    path: e.path().to_path_buf(),
                    error: e.error().to_string(),
                })?,
            }
        }
        if any {
            ControlFlow::Continue(())
        } else {
            visit(Listed::Unreadable {
                path: input.to_path_buf(),
                error: "no file matches this pattern".into(),
            })
        }
    }

    /// A path named on the command line: read even if it is a symbolic
    /// link (to a file, or to a directory walked in its place).
    fn walk_named(
        &mut self,
        path: &Path,
        visit: &mut dyn FnMut(Listed) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let metadata = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                return visit(Listed::Unreadable {
                    path: path.to_path_buf(),
                    error: e.to_string(),
                });
            }
        };
        if !metadata.is_dir() {
            return visit(listed_file(path.to_path_buf(), &metadata));
        }
        let excluded = &self.excluded;
        // Following links, walkdir checks each directory against its
        // ancestors and yields a loop as an error instead of entering it.
        // Entries of one directory share their parent's path, so their
        // paths' bytes order as their names do; `file_name()` parsed the
        // path's components on every comparison (a fifth of the walk of a
        // tree of small files).
        let entries = WalkDir::new(path)
            .follow_links(self.follow_links)
            .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()))
            .into_iter()
            .filter_entry(|entry| !excluded.contains(entry));
        for entry in entries {
            let item = match entry {
                Err(e) => Listed::Unreadable {
                    path: e.path().unwrap_or(path).to_path_buf(),
                    error: walk_error(&e),
                },
                // The root was named: walkdir follows it, though it keeps
                // a link's type. Below it, only links not followed do.
                Ok(entry) if entry.depth() == 0 || entry.file_type().is_dir() => continue,
                Ok(entry) if entry.file_type().is_symlink() => {
                    self.links_skipped += 1;
                    tracing::debug!(
                        path = %entry.path().display(),
                        "symbolic link skipped (--follow reads it)"
                    );
                    continue;
                }
                Ok(entry) => match entry.metadata() {
                    Ok(m) => listed_file(entry.into_path(), &m),
                    Err(e) => Listed::Unreadable {
                        path: entry.into_path(),
                        error: walk_error(&e),
                    },
                },
            };
            visit(item)?;
        }
        ControlFlow::Continue(())
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// What went wrong, without walkdir's "IO error for operation on PATH"
/// (the problem is reported with its path already).
fn walk_error(e: &walkdir::Error) -> String {
    match (e.loop_ancestor(), e.io_error()) {
        (Some(ancestor), _) => format!(
            "symbolic link loop: it leads back to {}, which is being walked",
            ancestor.display()
        ),
        (None, Some(io)) => io.to_string(),
        (None, None) => e.to_string(),
    }
}

fn listed_file(path: PathBuf, metadata: &std::fs::Metadata) -> Listed {
    Listed::File {
        path,
        size: metadata.len(),
        modified: metadata.modified().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn listed(inputs: &[PathBuf]) -> Vec<String> {
        walked(inputs, Walk::new(Excluded::default(), false)).0
    }

    /// What a walk lists, one line per item, and the links it skipped.
    fn walked(inputs: &[PathBuf], mut walk: Walk) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        let _ = walk.run(inputs, &mut |item| {
            out.push(match item {
                Listed::File { path, size, .. } => format!("{} {size}", path.display()),
                Listed::Unreadable { path, error } => format!("! {} {error}", path.display()),
            });
            ControlFlow::Continue(())
        });
        (out, walk.links_skipped())
    }

    #[test]
    fn order_is_arguments_then_sorted_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("tree/b")).unwrap();
        fs::create_dir_all(d.join("tree/a")).unwrap();
        fs::write(d.join("tree/b/2"), "xx").unwrap();
        fs::write(d.join("tree/a/1"), "x").unwrap();
        fs::write(d.join("tree/Z"), "").unwrap();
        fs::write(d.join("single"), "abc").unwrap();

        let got = listed(&[d.join("single"), d.join("tree"), d.join("missing")]);
        let p = |s: &str| d.join(s).display().to_string();
        assert_eq!(
            got,
            vec![
                format!("{} 3", p("single")),
                format!("{} 0", p("tree/Z")),
                format!("{} 1", p("tree/a/1")),
                format!("{} 2", p("tree/b/2")),
                format!("! {} No such file or directory (os error 2)", p("missing")),
            ]
        );
    }

    /// `d/single` (3 bytes), `d/outside/o` (1 byte), and `d/tree` holding
    /// a file and links to `single`, `outside`, `tree` itself, and nothing.
    fn tree_with_links(d: &Path) {
        fs::create_dir_all(d.join("tree")).unwrap();
        fs::create_dir_all(d.join("outside")).unwrap();
        fs::write(d.join("single"), "abc").unwrap();
        fs::write(d.join("outside/o"), "o").unwrap();
        fs::write(d.join("tree/a"), "aa").unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(d.join(target), d.join(name)).unwrap()
        };
        link("single", "tree/link-file");
        link("outside", "tree/link-dir");
        link("tree", "tree/loop");
        link("missing", "tree/broken");
    }

    #[test]
    fn links_inside_directories_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tree_with_links(d);
        let walk = Walk::new(Excluded::default(), false);
        let (got, skipped) = walked(&[d.join("tree")], walk);
        assert_eq!(got, vec![format!("{} 2", d.join("tree/a").display())]);
        assert_eq!(skipped, 4);
    }

    #[test]
    fn followed_links_are_read_and_loops_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tree_with_links(d);
        let walk = Walk::new(Excluded::default(), true);
        let (got, skipped) = walked(&[d.join("tree")], walk);
        let p = |s: &str| d.join(s).display().to_string();
        assert_eq!(
            got,
            vec![
                format!("{} 2", p("tree/a")),
                format!(
                    "! {} No such file or directory (os error 2)",
                    p("tree/broken")
                ),
                format!("{} 1", p("tree/link-dir/o")),
                format!("{} 3", p("tree/link-file")),
                format!(
                    "! {} symbolic link loop: it leads back to {}, which is being walked",
                    p("tree/loop"),
                    p("tree")
                ),
            ]
        );
        assert_eq!(skipped, 0);
    }

    #[test]
    fn links_named_as_arguments_or_matched_by_globs_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tree_with_links(d);
        let walk = Walk::new(Excluded::default(), false);
        let inputs = [
            d.join("tree/link-file"),
            d.join("tree/link-dir"),
            d.join("tree/link-f*"),
        ];
        let (got, skipped) = walked(&inputs, walk);
        let p = |s: &str| d.join(s).display().to_string();
        assert_eq!(
            got,
            vec![
                format!("{} 3", p("tree/link-file")),
                format!("{} 1", p("tree/link-dir/o")),
                format!("{} 3", p("tree/link-file")),
            ]
        );
        assert_eq!(skipped, 0);
    }

    #[test]
    fn stdin_takes_its_place_among_the_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("a"), "a").unwrap();
        fs::write(d.join("-"), "a file named -").unwrap();
        let got = listed(&[d.join("a"), PathBuf::from(STDIN), d.join("-")]);
        assert_eq!(
            got,
            vec![
                format!("{} 1", d.join("a").display()),
                "- 0".to_string(),
                format!("{} 14", d.join("-").display()),
            ]
        );
    }

    #[test]
    fn excluded_directories_are_never_entered() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("data/db")).unwrap();
        fs::create_dir_all(d.join("data/sample")).unwrap();
        fs::write(d.join("data/db/000001.sst"), "x").unwrap();
        fs::write(d.join("data/sample/in.txt"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("data/db"), d.join("data/sample/db-link")).unwrap();
        // Excluded by identity, whatever the spelling of the path, and
        // through a followed link too.
        let excluded = Excluded::dirs(&[d.join("data/../data/db"), d.join("missing")]);
        for follow_links in [false, true] {
            let walk = Walk::new(excluded.clone(), follow_links);
            let (got, _) = walked(&[d.to_path_buf()], walk);
            assert_eq!(
                got,
                vec![format!("{} 1", d.join("data/sample/in.txt").display())]
            );
        }
    }

    #[test]
    fn globs_expand_sorted_and_report_no_match() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["b.txt", "a.txt", "c.log"] {
            fs::write(d.join(name), name).unwrap();
        }
        let got = listed(&[d.join("*.txt"), d.join("*.csv")]);
        let p = |s: &str| d.join(s).display().to_string();
        assert_eq!(
            got,
            vec![
                format!("{} 5", p("a.txt")),
                format!("{} 5", p("b.txt")),
                format!("! {} no file matches this pattern", p("*.csv")),
            ]
        );
    }
}
