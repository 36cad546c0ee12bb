//! Where a node's memory goes, and how the pipeline is held inside its
//! budget.
//!
//! - [`tracking`]: the global allocator wrapper that counts live bytes in
//!   total and per actor ([`Account`]).
//! - [`process`]: the kernel's view (anonymous vs file-backed resident set).
//! - [`governor`]: turns those figures into back-pressure.
//! - [`monitor`]: the sampling thread that feeds the governor and the
//!   metrics.

pub mod governor;
pub mod monitor;
pub mod process;
pub mod tracking;

pub use governor::{Governor, GovernorLimits};
pub use monitor::Monitor;
pub use process::ProcessMemory;
pub use tracking::{Account, Attributed, TrackingAllocator};
