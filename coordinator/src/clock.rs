//! Where the leader's lease desk reads the time. Leases and nodes'
//! liveness are deadlines in ms since the Unix epoch, kept in the leader's
//! memory; every command that needs the time carries it (`now_ms`), so
//! only the desk reads a clock. A service reads the system clock; a test
//! gives its own (one that jumps ahead at a moment a seed chose), so a
//! lease's expiry comes when the test decides, not when a slow machine
//! happens to let it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system() -> Clock {
    Arc::new(system_ms)
}

/// The system clock's time in ms since the Unix epoch (0 before it).
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
