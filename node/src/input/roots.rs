//! The directories a node may read under. A manifest names paths; a node
//! reads one only if, once `..` and symbolic links are resolved, it lies
//! under one of its roots. Anything else is a rejected file with its
//! reason, never opened for reading.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Roots {
    /// Resolved (canonical) directories.
    dirs: Vec<PathBuf>,
}

impl Roots {
    /// Resolves each root; a root that cannot be resolved is an error
    /// naming it.
    pub fn new(dirs: &[PathBuf]) -> io::Result<Self> {
        let dirs = dirs
            .iter()
            .map(|dir| {
                dir.canonicalize()
                    .map_err(|e| io::Error::new(e.kind(), format!("root {}: {e}", dir.display())))
            })
            .collect::<io::Result<_>>()?;
        Ok(Self { dirs })
    }

    /// `Err`: why `path` may not be read. A path that cannot be resolved
    /// (it does not exist) passes: opening it reports what is wrong.
    pub fn check(&self, path: &Path) -> Result<(), String> {
        let Ok(real) = path.canonicalize() else {
            return Ok(());
        };
        if self.dirs.iter().any(|root| real.starts_with(root)) {
            return Ok(());
        }
        let roots: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "not read: resolves to {}, outside the node's roots ({})",
            real.display(),
            roots.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_after_resolving_dots_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/in.txt"), "a\n").unwrap();
        std::fs::write(outside.join("secret.txt"), "b\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).unwrap();
        let roots = Roots::new(std::slice::from_ref(&root)).unwrap();

        assert_eq!(roots.check(&root.join("sub/in.txt")), Ok(()));
        assert_eq!(roots.check(&root.join("sub/../sub/in.txt")), Ok(()));
        for escape in [
            root.join("sub/../../outside/secret.txt"),
            root.join("link.txt"),
            outside.join("secret.txt"),
        ] {
            let reason = roots.check(&escape).unwrap_err();
            assert!(reason.contains("outside the node's roots"), "{reason}");
        }
        assert_eq!(roots.check(&root.join("missing")), Ok(()));
        assert!(Roots::new(&[dir.path().join("nope")]).is_err());
    }
}
