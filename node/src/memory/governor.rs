//! The memory governor: turns the allocator's live bytes into back-pressure.
//!
//! The plan's shares bound what each stage *intends* to hold; the governor
//! watches what is *actually* allocated (headers, capacity slack, everything
//! the shares do not see) and reacts before the heap outgrows its limit:
//!
//! - between the soft and the hard limit, pressure rises from 0 to 1: the
//!   scanners' credit on their edges shrinks towards one batch, and
//!   sort-merge's run size shrinks towards a floor, so runs spill earlier;
//! - at or above the hard limit, no new shard starts (work already running
//!   finishes, which is what brings memory back down).
//!
//! Readings come from [`super::Monitor`] in production and from tests
//! directly, so every reaction is a pure function of the last reading.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use metrics::Gauge;

/// The governor's thresholds and the ranges it moves settings within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GovernorLimits {
    /// Heap bytes at which nothing new starts: the budget less RocksDB's
    /// share (RocksDB allocates outside the tracked heap).
    pub hard_bytes: u64,
    /// Heap bytes at which pressure starts to build.
    pub soft_bytes: u64,
    /// Scan credit (bytes queued on a scan edge) without pressure.
    pub scan_credit_bytes: u64,
    /// Scan credit at full pressure: one batch, so scans never stop dead.
    pub min_scan_credit_bytes: u64,
    /// Run size without pressure.
    pub run_bytes: u64,
    /// Run size at full pressure.
    pub min_run_bytes: u64,
}

/// Pressure starts at this share of the hard limit.
const SOFT_PERMILLE: u64 = 800;
/// Runs shrink to this share of their planned size at full pressure.
const MIN_RUN_DIVISOR: u64 = 8;

impl GovernorLimits {
    pub fn new(heap_bytes: u64, scan_credit_bytes: u64, batch_bytes: u64, run_bytes: u64) -> Self {
        Self {
            hard_bytes: heap_bytes,
            soft_bytes: heap_bytes / 1000 * SOFT_PERMILLE,
            scan_credit_bytes,
            min_scan_credit_bytes: batch_bytes.min(scan_credit_bytes),
            run_bytes,
            min_run_bytes: (run_bytes / MIN_RUN_DIVISOR).max(1),
        }
    }
}

pub struct Governor {
    limits: GovernorLimits,
    /// Last heap reading, bytes.
    live: AtomicU64,
    /// Pressure in thousandths, from the last reading.
    pressure: AtomicU64,
    gauges: GovernorGauges,
}

struct GovernorGauges {
    pressure: Gauge,
    scan_credit: Gauge,
    run_bytes: Gauge,
}

impl Governor {
    pub fn new(limits: GovernorLimits) -> Self {
        let gauges = GovernorGauges {
            pressure: metrics::gauge!("quern_governor_pressure_ratio"),
            scan_credit: metrics::gauge!("quern_governor_scan_credit_bytes"),
            run_bytes: metrics::gauge!("quern_governor_run_bytes"),
        };
        metrics::gauge!("quern_governor_soft_limit_bytes").set(limits.soft_bytes as f64);
        metrics::gauge!("quern_governor_hard_limit_bytes").set(limits.hard_bytes as f64);
        let governor = Self {
            limits,
            live: AtomicU64::new(0),
            pressure: AtomicU64::new(0),
            gauges,
        };
        governor.observe(0);
        governor
    }

    pub fn limits(&self) -> GovernorLimits {
        self.limits
    }

    /// Takes a new reading of live heap bytes.
    pub fn observe(&self, live_bytes: u64) {
        let GovernorLimits {
            soft_bytes,
            hard_bytes,
            ..
        } = self.limits;
        let pressure = if live_bytes <= soft_bytes {
            0
        } else if live_bytes >= hard_bytes {
            1000
        } else {
            (live_bytes - soft_bytes) * 1000 / (hard_bytes - soft_bytes).max(1)
        };
        self.live.store(live_bytes, Relaxed);
        self.pressure.store(pressure, Relaxed);
        self.gauges.pressure.set(pressure as f64 / 1000.0);
        self.gauges.scan_credit.set(self.scan_credit_bytes() as f64);
        self.gauges.run_bytes.set(self.run_bytes() as f64);
    }

    /// Pressure from 0 (at or below the soft limit) to 1000 (at the hard
    /// limit).
    pub fn pressure_permille(&self) -> u64 {
        self.pressure.load(Relaxed)
    }

    fn scaled(&self, full: u64, floor: u64) -> u64 {
        let pressure = self.pressure_permille();
        full - (full.saturating_sub(floor)) * pressure / 1000
    }

    /// Bytes a scanner may have queued on one edge before it waits.
    pub fn scan_credit_bytes(&self) -> u64 {
        let l = &self.limits;
        self.scaled(l.scan_credit_bytes, l.min_scan_credit_bytes)
    }

    /// Bytes a lane gathers before it sorts and spills a run.
    pub fn run_bytes(&self) -> u64 {
        let l = &self.limits;
        self.scaled(l.run_bytes, l.min_run_bytes)
    }

    /// Whether new work (a shard) may start: not at or above the hard limit.
    pub fn admits_new_work(&self) -> bool {
        self.live.load(Relaxed) < self.limits.hard_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn governor() -> Governor {
        Governor::new(GovernorLimits::new(
            100 * MIB,
            8 * MIB,
            256 * 1024,
            32 * MIB,
        ))
    }

    #[test]
    fn no_pressure_below_the_soft_limit() {
        let g = governor();
        g.observe(80 * MIB);
        assert_eq!(g.pressure_permille(), 0);
        assert_eq!(g.scan_credit_bytes(), 8 * MIB);
        assert_eq!(g.run_bytes(), 32 * MIB);
        assert!(g.admits_new_work());
    }

    #[test]
    fn credits_shrink_and_runs_spill_earlier_as_the_heap_grows() {
        let g = governor();
        let mut last = (u64::MAX, u64::MAX);
        for live in [81, 85, 90, 95, 99].map(|m| m * MIB) {
            g.observe(live);
            let now = (g.scan_credit_bytes(), g.run_bytes());
            assert!(
                now.0 < last.0 && now.1 < last.1,
                "{live}: {now:?} after {last:?}"
            );
            assert!(g.admits_new_work());
            last = now;
        }
        g.observe(90 * MIB);
        assert_eq!(g.pressure_permille(), 500);
        assert_eq!(g.scan_credit_bytes(), 8 * MIB - (8 * MIB - 256 * 1024) / 2);
    }

    #[test]
    fn nothing_new_starts_at_the_hard_limit() {
        let g = governor();
        g.observe(100 * MIB);
        assert!(!g.admits_new_work());
        assert_eq!(g.pressure_permille(), 1000);
        assert_eq!(g.scan_credit_bytes(), 256 * 1024, "one batch still moves");
        assert_eq!(g.run_bytes(), 4 * MIB);
        g.observe(300 * MIB);
        assert_eq!(g.run_bytes(), 4 * MIB, "floors hold past the limit");
        // And recovery is immediate once the heap falls back.
        g.observe(10 * MIB);
        assert!(g.admits_new_work());
        assert_eq!(g.run_bytes(), 32 * MIB);
    }
}
