//! Warnings about refusals, spaced out: a misconfigured or hostile sender
//! retries several times a second, so a refusal is logged at most once per
//! `LOG_INTERVAL`, with the number of refusals left out since the last.

use std::time::{Duration, Instant};

/// The least time between two refusal warnings.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets a warning through at most once per `LOG_INTERVAL`.
#[derive(Default)]
pub struct LogLimit {
    last: Option<Instant>,
    left_out: u64,
}

impl LogLimit {
    /// `Some(refusals left out since the last warning)` when one may be
    /// logged at `now`.
    pub fn speak(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_spaced_and_count_what_they_left_out() {
        let mut limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.speak(start), Some(0));
        for i in 1..=5 {
            assert_eq!(limit.speak(start + Duration::from_secs(i)), None);
        }
        assert_eq!(limit.speak(start + LOG_INTERVAL), Some(5));
        assert_eq!(limit.speak(start + LOG_INTERVAL), None);
        assert_eq!(limit.speak(start + 2 * LOG_INTERVAL), Some(1));
    }
}
