//! The file system holding a process's data directory: its size and the
//! bytes left to Quern on it, as gauges, so that an alert comes before a
//! write fails with ENOSPC. A node's store, its jobs' spilled runs and
//! staged SST files, and a coordinator's Raft log and state all live
//! under their data directory.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Gauge: bytes of the file system holding the data directory.
pub const DATA_DIR_SIZE_METRIC: &str = "quern_data_dir_size_bytes";
/// Gauge: bytes of that file system an unprivileged process may still
/// write (blocks reserved for root do not count).
pub const DATA_DIR_AVAILABLE_METRIC: &str = "quern_data_dir_available_bytes";
/// How often `publish` reads the file system again.
pub const DATA_DIR_REFRESH: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub size: u64,
    pub available: u64,
}

impl Space {
    /// `statvfs` of the file system holding `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is NUL-terminated and `stat` is writable; on
        // success statvfs has filled it.
        let stat = unsafe {
            if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            stat.assume_init()
        };
        // The field types differ between platforms.
        #[allow(clippy::unnecessary_cast)]
        let (fragment, blocks, available) = (
            stat.f_frsize as u64,
            stat.f_blocks as u64,
            stat.f_bavail as u64,
        );
        Ok(Self {
            size: blocks.saturating_mul(fragment),
            available: available.saturating_mul(fragment),
        })
    }
}

/// Keeps the gauges current for the file system holding `dir`, every
/// `DATA_DIR_REFRESH`; runs until dropped (spawn it). A failed reading
/// is logged once and leaves the gauges as they were.
pub async fn publish(dir: PathBuf) {
    let size = metrics::gauge!(DATA_DIR_SIZE_METRIC);
    let available = metrics::gauge!(DATA_DIR_AVAILABLE_METRIC);
    let mut warned = false;
    loop {
        // A blocking call: a hung network file system must not hold a
        // runtime thread.
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || Space::of(&dir)).await
        };
        match read {
            Ok(Ok(space)) => {
                size.set(space.size as f64);
                available.set(space.available as f64);
            }
            Ok(Err(e)) if !warned => {
                tracing::warn!("reading the free space under {}: {e}", dir.display());
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(DATA_DIR_REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_file_system_has_a_size_and_less_available() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::of(dir.path()).unwrap();
        assert!(space.size > 0, "{space:?}");
        assert!(space.available <= space.size, "{space:?}");
        assert!(space.available > 0, "{space:?}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            Space::of(&file).unwrap().size,
            space.size,
            "the same file system"
        );
        let missing = Space::of(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_gauges_say_the_file_systems_figures() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            let publish = publish(dir.path().to_owned());
            let wait = Duration::from_millis(500);
            let ran = runtime.block_on(async { tokio::time::timeout(wait, publish).await });
            assert!(ran.is_err(), "it runs until dropped");
        });
        let text = handle.render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .parse()
                .unwrap()
        };
        let (size, available) = (
            value(DATA_DIR_SIZE_METRIC),
            value(DATA_DIR_AVAILABLE_METRIC),
        );
        let space = Space::of(dir.path()).unwrap();
        assert_eq!(size, space.size as f64);
        assert!(
            available > 0.0 && available <= size,
            "{available} of {size}"
        );
    }
}
