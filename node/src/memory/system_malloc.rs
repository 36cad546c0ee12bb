//! glibc's malloc, which RocksDB's C++ allocates from (it bypasses the Rust
//! global allocator). Left at its defaults it keeps freed memory: every
//! thread that touches RocksDB may get an arena of its own, and freeing a
//! large block raises the trim threshold as high as 64 MiB, so free memory
//! at the top of an arena stays resident until someone calls `malloc_trim`.
//! Measured here: 20 jobs in one process left ~20 MiB of free but resident
//! glibc memory; with these settings and a trim after each job, under
//! 1 MiB.

/// Arenas glibc may create (default: 8 per core).
const ARENA_MAX: i32 = 2;
/// Blocks of this size or more are mapped on their own and unmapped when
/// freed, whichever thread frees them.
const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory above this at the top of an arena goes back to the OS.
const TRIM_THRESHOLD: i32 = 1 << 20;

/// Environment variables through which a user tunes glibc's malloc; if
/// any is set, it is left as the user asked.
const USER_SETTINGS: [&str; 4] = [
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Applies the settings above. Fixing the thresholds also turns off
/// glibc's dynamic adjustment of them.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        for (param, value) in [
            (libc::M_ARENA_MAX, ARENA_MAX),
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            // SAFETY: mallopt may be called at any time; a refused setting
            // leaves the default in place, which is only less frugal.
            unsafe { libc::mallopt(param, value) };
        }
    }
}

/// Serves blocks below `bytes` from the arenas instead of mapping each on
/// its own, unless the user tuned glibc's malloc.
pub fn set_mmap_threshold(bytes: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        // SAFETY: as in `configure`.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
    }
}

/// Returns free pages inside glibc's arenas to the OS.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
