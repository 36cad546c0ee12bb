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

/// Gives memory freed by a finished job back to the OS: this thread's
/// mimalloc pages and glibc's free pages. The job's own threads have
/// already exited, which frees theirs.
pub fn release_free_memory() {
    TrackingAllocator::collect_thread_heap(true);
    system_malloc::trim();
}
