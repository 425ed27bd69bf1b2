//! Peak-EWMA latency (Finagle's, as Linkerd uses it): a moving average of
//! each channel's time to first token that jumps up to any slower
//! observation at once and decays towards faster ones (and, between
//! observations, towards zero) with a time constant of [`DECAY`]. Jumping
//! up makes a channel that turns slow lose traffic on its first slow
//! answer; decaying while unused makes the gateway try a channel again now
//! and then, so one that got fast again is noticed.
//!
//! Lock-free: the estimate is an `f64` in an atomic, updated by
//! compare-and-swap; the time of the last update is a second atomic (a race
//! between the two only blurs one decay step).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::Nanos;

/// The time constant of the decay, in nanoseconds (10 s).
pub const DECAY: f64 = 10e9;

#[derive(Debug, Default)]
pub struct PeakEwma {
    /// The estimate in nanoseconds, as `f64` bits (0: never observed).
    cost: AtomicU64,
    /// When it was last updated.
    stamp: AtomicU64,
}

impl PeakEwma {
    /// Folds in one observation of `rtt` nanoseconds, made at `now`.
    pub fn observe(&self, rtt: f64, now: Nanos) {
        let elapsed = now.saturating_sub(self.stamp.swap(now, Ordering::Relaxed)) as f64;
        let weight = (-elapsed / DECAY).exp();
        let _ = self.cost.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let prev = f64::from_bits(bits);
            let next = if rtt > prev { rtt } else { prev * weight + rtt * (1.0 - weight) };
            Some(next.to_bits())
        });
    }

    /// The estimate at `now`, in nanoseconds, decayed since the last
    /// observation; 0 for a channel never observed (so it is tried).
    pub fn estimate(&self, now: Nanos) -> f64 {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        if cost == 0.0 {
            return 0.0;
        }
        let elapsed = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        cost * (-elapsed / DECAY).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn jumps_to_a_slower_answer_and_decays_to_faster_ones() {
        let e = PeakEwma::default();
        assert_eq!(e.estimate(0), 0.0);
        e.observe(20.0 * MS, SEC);
        assert_eq!(e.estimate(SEC), 20.0 * MS);
        e.observe(400.0 * MS, SEC);
        assert_eq!(e.estimate(SEC), 400.0 * MS, "a slow answer counts at once");
        for i in 1..=50 {
            e.observe(20.0 * MS, SEC + i * SEC);
        }
        assert!(e.estimate(51 * SEC) < 25.0 * MS, "{}", e.estimate(51 * SEC) / MS);
        // Unused, the estimate fades, so the channel is tried again.
        assert!(e.estimate(100 * SEC) < MS);
    }
}
