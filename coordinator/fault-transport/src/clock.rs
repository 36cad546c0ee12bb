//! The coordinators' clock in a fault run: the system clock plus an
//! offset that only grows. A jump past the lease time expires every
//! lease and every node's liveness at once, at the request the seed chose
//! (a leader's clock stepping ahead, or every node stalled together).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Default)]
pub struct JumpClock {
    offset_ms: Arc<AtomicU64>,
}

impl JumpClock {
    /// Milliseconds since the Unix epoch, with every jump so far added.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        system + self.offset_ms.load(Ordering::Acquire)
    }

    pub fn jump(&self, ms: u64) {
        self.offset_ms.fetch_add(ms, Ordering::AcqRel);
    }

    /// How far it has jumped in all.
    pub fn offset_ms(&self) -> u64 {
        self.offset_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_moves_the_time_ahead_by_its_length() {
        let clock = JumpClock::default();
        let before = clock.now_ms();
        clock.jump(60_000);
        let after = clock.now_ms();
        assert!(after >= before + 60_000, "{before} -> {after}");
        assert!(after < before + 61_000, "{before} -> {after}");
        assert_eq!(clock.clone().offset_ms(), 60_000);
    }
}
