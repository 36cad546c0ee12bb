//! Absolute file paths, as a walk of a large shared tree lists them:
//! `/srv/data/projects/kari/src/core/utils/main_48213.rs`.
//!
//! Roots, projects, directories, file names and extensions follow Zipf
//! popularity, so fan-out is skewed (a few huge directories, many small
//! ones) and most keys share `/srv/...` prefixes of 10-30 bytes. A
//! dataset-wide counter in every file name keeps fresh paths unique, so
//! the duplicate ratio stays the one asked for.

use std::io::Write;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::shaped::FreshRecord;
use super::vocab::Vocabulary;

const ROOTS: &[&str] = &[
    "/srv/data/projects",
    "/srv/data/shared",
    "/srv/backup/projects",
    "/home",
    "/srv/build/cache",
    "/var/lib/containers",
    "/opt",
];
const PROJECTS: usize = 2_000;
/// The first directory inside a project.
const TOP_DIRS: &[&str] = &[
    "src", "docs", "tests", "assets", "vendor", "build", "data", "scripts", "config", "lib",
];
const DIRS: usize = 20_000;
const COMMON_DIRS: &[&str] = &[
    "main",
    "core",
    "internal",
    "utils",
    "components",
    "api",
    "models",
    "common",
    "v1",
    "images",
    "handlers",
    "views",
    "fixtures",
    "java",
    "com",
    "generated",
];
/// Directories below the top one, skewed towards shallow.
const DEPTHS: [usize; 12] = [0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 8];
const NAMES: usize = 20_000;
const COMMON_NAMES: &[&str] = &[
    "index", "main", "utils", "README", "config", "test", "mod", "lib", "app", "types", "IMG",
    "report",
];
const EXTENSIONS: &[&str] = &[
    "rs", "py", "js", "json", "md", "go", "ts", "c", "h", "png", "txt", "html", "java", "yaml",
    "jpg", "css", "o", "svg", "sh", "toml",
];

pub(crate) struct Paths {
    roots: Vocabulary,
    projects: Vocabulary,
    top_dirs: Vocabulary,
    dirs: Vocabulary,
    names: Vocabulary,
    extensions: Vocabulary,
    /// In every file name: no two fresh paths are equal.
    next_file: u64,
}

impl Paths {
    pub(crate) fn new() -> Self {
        Self {
            roots: Vocabulary::of(ROOTS),
            projects: Vocabulary::new(&[], PROJECTS),
            top_dirs: Vocabulary::of(TOP_DIRS),
            dirs: Vocabulary::new(COMMON_DIRS, DIRS),
            names: Vocabulary::new(COMMON_NAMES, NAMES),
            extensions: Vocabulary::of(EXTENSIONS),
            next_file: 0,
        }
    }
}

impl FreshRecord for Paths {
    /// Root 20, project 10, 9 directories of up to 12 bytes, a name of up
    /// to 30: under 200.
    const MAX_LEN: usize = 256;

    fn fresh(&mut self, rng: &mut ChaCha8Rng, path: &mut Vec<u8>) {
        self.roots.push(rng, path);
        path.push(b'/');
        self.projects.push(rng, path);
        path.push(b'/');
        self.top_dirs.push(rng, path);
        for _ in 0..DEPTHS[rng.random_range(0..DEPTHS.len())] {
            path.push(b'/');
            self.dirs.push(rng, path);
        }
        path.push(b'/');
        self.names.push(rng, path);
        write!(path, "_{}.", self.next_file).unwrap();
        self.extensions.push(rng, path);
        self.next_file += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::datagen::shaped::Shape;
    use crate::datagen::shaped::testing::*;

    #[test]
    fn same_spec_gives_same_bytes() {
        assert_deterministic(Shape::Paths);
    }

    #[test]
    fn duplicates_as_asked() {
        assert_duplicates_as_asked(Shape::Paths);
    }

    #[test]
    fn absolute_paths_mostly_under_srv_with_skewed_fan_out() {
        let all: Vec<Vec<u8>> = generate(&spec(Shape::Paths))
            .into_iter()
            .flatten()
            .collect();
        for path in &all {
            assert!(path.starts_with(b"/"), "{}", String::from_utf8_lossy(path));
            assert!(path.len() <= Paths::MAX_LEN);
            assert!(!path.windows(2).any(|w| w == b"//"));
        }
        let under_srv = all.iter().filter(|p| p.starts_with(b"/srv/")).count();
        assert!(under_srv as f64 / all.len() as f64 > 0.6);
        assert!(mean_shared_prefix(Shape::Paths) > 20.0);

        // Files per project directory: the largest holds many times the median.
        let mut per_project: HashMap<&[u8], usize> = HashMap::new();
        for path in &all {
            let root = ROOTS
                .iter()
                .find(|r| path.starts_with(r.as_bytes()) && path[r.len()] == b'/')
                .unwrap();
            let project_len = path[root.len() + 1..]
                .iter()
                .position(|&b| b == b'/')
                .unwrap();
            *per_project
                .entry(&path[..root.len() + 1 + project_len])
                .or_default() += 1;
        }
        let mut sizes: Vec<usize> = per_project.into_values().collect();
        sizes.sort_unstable();
        assert!(
            sizes[sizes.len() - 1] > 20 * sizes[sizes.len() / 2],
            "{sizes:?}"
        );
    }
}
