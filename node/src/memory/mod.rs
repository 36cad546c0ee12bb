//! Where a node's memory goes, and how the pipeline is held inside its
//! budget.
//!
//! - [`tracking`]: the global allocator wrapper that counts live bytes in
//!   total and per actor ([`Account`]).
//! - [`process`]: the kernel's view (anonymous vs file-backed resident set).
//! - [`governor`]: turns those figures into back-pressure.
//! - [`monitor`]: the sampling thread that feeds the governor and the
//!   metrics.
//! - [`system_malloc`]: glibc's malloc, which RocksDB allocates from.

pub mod governor;
pub mod monitor;
pub mod process;
pub mod system_malloc;
pub mod tracking;

pub use governor::{Governor, GovernorLimits};
pub use monitor::Monitor;
pub use process::ProcessMemory;
pub use tracking::{Account, Attributed, TrackingAllocator};

/// Settings of both allocators that keep resident memory close to live
/// memory. Runs before `main` (see [`install_tracking_allocator!`]).
pub fn configure_allocators() {
    TrackingAllocator::configure_for_bounded_memory();
    system_malloc::configure();
}

/// For a long-running service that churns through large buffers back to
/// back (a coordinator applies commands of up to ~1 MiB, and RocksDB's
/// write batches grow as large): freed pages are kept
/// `SERVICE_PURGE_DELAY_MS` before returning to the OS, and glibc serves
/// blocks up to `SERVICE_MMAP_THRESHOLD` from its arenas. Returned at once
/// (the ingest settings), every such buffer was faulted in and zeroed
/// again: a third of a coordinator's CPU (1M files submitted: 50 s of CPU
/// in three coordinators, 32 s with these settings; peak anonymous memory
/// +~40 MiB). Environment variables set by the user win.
pub fn configure_for_service() {
    TrackingAllocator::set_purge_delay(SERVICE_PURGE_DELAY_MS);
    system_malloc::set_mmap_threshold(SERVICE_MMAP_THRESHOLD);
}

/// How long a service keeps freed pages (mimalloc's purge delay).
pub const SERVICE_PURGE_DELAY_MS: i64 = 100;
/// Blocks a service's glibc malloc maps on their own: this size or more.
pub const SERVICE_MMAP_THRESHOLD: i32 = 8 << 20;

/// Gives memory freed by a finished job back to the OS: this thread's
/// mimalloc pages and glibc's free pages. The job's own threads have
/// already exited, which frees theirs.
pub fn release_free_memory() {
    TrackingAllocator::collect_thread_heap(true);
    system_malloc::trim();
}
