//! Passive health: what a channel's answers say about it, kept lock-free in
//! the registry (so it outlives snapshots).
//!
//! - **Ejection** (Envoy's outlier detection): `consecutiveFailures` failed
//!   attempts in a row, or a failed share of `failureRatePercent` within one
//!   `interval` (after `minRequests` attempts), take the channel out of
//!   routing for `baseEjectionTime` x n, where n counts its recent ejections
//!   (one less for each `baseEjectionTime` it stayed in since the last one
//!   ended), at most `maxEjectionTime`. It comes back when the period ends,
//!   or at once when an active probe succeeds.
//! - **Rate limited**: a 429 (or a 503 with `Retry-After`) keeps the channel
//!   out for the `Retry-After` time (1 s when the upstream gives none; at most
//!   `maxEjectionTime`), and a 429 is not a failure.
//! - **Probe**: the active health check's verdict; `Unhealthy` keeps the
//!   channel out, `Unknown` (no checks) and `Healthy` let it serve.
//!
//! Which failures count is the upstream error's business
//! (`UpstreamError::counts_against_channel`). The settings come from the
//! policy of the request that saw the failure; instants are nanoseconds on
//! the gateway's monotonic clock ([`Nanos`]).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use weaver_crds::snapshot::OutlierSnapshot;

use crate::limits::Nanos;

/// How long a 429 without `Retry-After` keeps a channel out.
pub const DEFAULT_RATE_LIMITED: Duration = Duration::from_secs(1);

/// The active health check's verdict on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Probe {
    /// Not probed (no active checks configured, or none finished yet).
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Unknown => "unknown",
            Probe::Healthy => "healthy",
            Probe::Unhealthy => "unhealthy",
        }
    }
}

/// Whether a channel may serve now, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Healthy,
    Ejected,
    RateLimited,
    /// The active probe failed.
    Unhealthy,
}

impl State {
    /// Every state, for the metrics' label values.
    pub const ALL: [State; 4] = [State::Healthy, State::Ejected, State::RateLimited, State::Unhealthy];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected => "ejected",
            State::RateLimited => "rate_limited",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// A policy's ejection settings, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// 0: never by count.
    pub consecutive: u32,
    pub rate_percent: Option<u32>,
    pub min_requests: u32,
    pub interval: Nanos,
    pub base: Nanos,
    pub max: Nanos,
    /// Below this percent of healthy candidates, health is ignored.
    pub panic_percent: u32,
}

fn nanos(ms: u64) -> Nanos {
    ms.saturating_mul(1_000_000)
}

impl From<&OutlierSnapshot> for Outlier {
    fn from(o: &OutlierSnapshot) -> Self {
        Self {
            consecutive: o.consecutive_failures,
            rate_percent: o.failure_rate_percent,
            min_requests: o.min_requests.max(1),
            interval: nanos(o.interval_ms).max(1),
            base: nanos(o.base_ejection_ms),
            max: nanos(o.max_ejection_ms),
            panic_percent: o.panic_threshold_percent,
        }
    }
}

impl Default for Outlier {
    fn default() -> Self {
        Self::from(&OutlierSnapshot::default())
    }
}

/// One channel's passive health.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    /// The failure-rate window: its number (24 bits), attempts (20), failures (20).
    window: AtomicU64,
    /// Out of routing until then (0: never ejected).
    ejected_until: AtomicU64,
    /// Recent ejections, for the growing period.
    ejections: AtomicU32,
    /// Rate limited until then.
    limited_until: AtomicU64,
    probe: AtomicU8,
}

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const WINDOW_MASK: u64 = (1 << 24) - 1;

fn unpack(w: u64) -> (u64, u64, u64) {
    (w >> (2 * COUNT_BITS), (w >> COUNT_BITS) & COUNT_MAX, w & COUNT_MAX)
}

fn pack(window: u64, attempts: u64, failures: u64) -> u64 {
    (window << (2 * COUNT_BITS)) | (attempts.min(COUNT_MAX) << COUNT_BITS) | failures.min(COUNT_MAX)
}

impl Health {
    /// Whether the channel may serve at `now`.
    pub fn available(&self, now: Nanos) -> bool {
        self.state(now) == State::Healthy
    }

    pub fn state(&self, now: Nanos) -> State {
        if self.probe.load(Ordering::Relaxed) == Probe::Unhealthy as u8 {
            State::Unhealthy
        } else if now < self.ejected_until.load(Ordering::Relaxed) {
            State::Ejected
        } else if now < self.limited_until.load(Ordering::Relaxed) {
            State::RateLimited
        } else {
            State::Healthy
        }
    }

    /// An attempt that did not fail against the channel (an answer, or the
    /// client's own mistake).
    pub fn succeeded(&self, now: Nanos, outlier: &Outlier) {
        // Read first: most successes change nothing, and a store would
        // bounce the cache line between cores.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if outlier.rate_percent.is_some() {
            self.count(now, outlier, false);
        }
    }

    /// An attempt that failed against the channel; the ejection period when
    /// this failure ejected it.
    pub fn failed(&self, now: Nanos, outlier: &Outlier) -> Option<Nanos> {
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let by_count = outlier.consecutive > 0 && in_a_row >= outlier.consecutive;
        let by_rate = outlier.rate_percent.is_some_and(|percent| {
            let (attempts, failures) = self.count(now, outlier, true);
            attempts >= u64::from(outlier.min_requests) && failures * 100 >= u64::from(percent) * attempts
        });
        if by_count || by_rate { self.eject(now, outlier) } else { None }
    }

    /// Counts an attempt in the current failure-rate window; the window's
    /// attempts and failures after it.
    fn count(&self, now: Nanos, outlier: &Outlier, failed: bool) -> (u64, u64) {
        let window = (now / outlier.interval) & WINDOW_MASK;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (w, attempts, failures) = unpack(current);
            let (attempts, failures) = if w == window { (attempts, failures) } else { (0, 0) };
            let next = (attempts + 1, failures + u64::from(failed));
            match self.window.compare_exchange_weak(
                current,
                pack(window, next.0, next.1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// Takes the channel out; `None` when it already is (another request's
    /// failure got there first).
    fn eject(&self, now: Nanos, outlier: &Outlier) -> Option<Nanos> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until > now {
            return None;
        }
        // One step of the growing period is forgiven per base period the
        // channel stayed in since its last ejection ended.
        let forgiven = if until == 0 { u64::MAX } else { (now - until) / outlier.base.max(1) };
        let recent = u64::from(self.ejections.load(Ordering::Relaxed)).saturating_sub(forgiven);
        let n = recent + 1;
        let period = outlier.base.saturating_mul(n).min(outlier.max);
        if period == 0 {
            return None;
        }
        self.ejected_until.compare_exchange(until, now + period, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        self.ejections.store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.store(0, Ordering::Relaxed);
        Some(period)
    }

    /// The upstream asked for a pause (`Retry-After`, or the default for a
    /// 429 without one), capped at the policy's longest ejection.
    pub fn rate_limited(&self, now: Nanos, wait: Duration, outlier: &Outlier) {
        let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX).min(outlier.max.max(1));
        self.limited_until.fetch_max(now.saturating_add(wait), Ordering::Relaxed);
    }

    /// The active health check's verdict; a healthy probe ends an ejection.
    pub fn set_probe(&self, probe: Probe, now: Nanos) {
        self.probe.store(probe as u8, Ordering::Relaxed);
        if probe == Probe::Healthy {
            let _ = self.ejected_until.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| (u > now).then_some(now));
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// The active health check's last verdict.
    pub fn probe(&self) -> Probe {
        match self.probe.load(Ordering::Relaxed) {
            1 => Probe::Healthy,
            2 => Probe::Unhealthy,
            _ => Probe::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn outlier() -> Outlier {
        Outlier {
            consecutive: 3,
            rate_percent: None,
            min_requests: 4,
            interval: 10 * SEC,
            base: 30 * SEC,
            max: 100 * SEC,
            panic_percent: 0,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_period_that_heals() {
        let (h, o) = (Health::default(), outlier());
        let t = 1000 * SEC;
        assert_eq!((h.failed(t, &o), h.failed(t, &o)), (None, None));
        h.succeeded(t, &o);
        assert_eq!((h.failed(t, &o), h.failed(t, &o)), (None, None), "a success starts the count over");
        assert_eq!(h.failed(t, &o), Some(30 * SEC));
        assert_eq!(h.state(t + 29 * SEC), State::Ejected);
        assert!(h.available(t + 30 * SEC), "back when the period ends");
        let t2 = t + 30 * SEC;
        for _ in 0..2 {
            h.failed(t2, &o);
        }
        assert_eq!(h.failed(t2, &o), Some(60 * SEC), "the second ejection in a row lasts twice as long");
        let t3 = t2 + 60 * SEC;
        for _ in 0..2 {
            h.failed(t3, &o);
        }
        assert_eq!(h.failed(t3, &o), Some(90 * SEC));
        let t4 = t3 + 90 * SEC;
        for _ in 0..2 {
            h.failed(t4, &o);
        }
        assert_eq!(h.failed(t4, &o), Some(100 * SEC), "capped at the longest");
        // Healthy for a long while: the next ejection is short again.
        let t5 = t4 + 100 * SEC + 1000 * SEC;
        for _ in 0..2 {
            h.failed(t5, &o);
        }
        assert_eq!(h.failed(t5, &o), Some(30 * SEC));
    }

    #[test]
    fn a_failure_rate_over_a_window_ejects() {
        let h = Health::default();
        let o = Outlier { consecutive: 0, rate_percent: Some(50), ..outlier() };
        let t = 1000 * SEC;
        h.succeeded(t, &o);
        h.succeeded(t, &o);
        assert_eq!(h.failed(t, &o), None, "3 attempts: below minRequests");
        assert_eq!(h.failed(t, &o), Some(30 * SEC), "2 of 4 failed");
        // A new window starts empty.
        let later = t + 40 * SEC;
        h.succeeded(later, &o);
        assert_eq!(h.failed(later, &o), None);
    }

    #[test]
    fn rate_limits_and_probes_take_a_channel_out_without_failures() {
        let (h, o) = (Health::default(), outlier());
        h.rate_limited(SEC, Duration::from_secs(20), &o);
        assert_eq!((h.state(SEC), h.state(21 * SEC)), (State::RateLimited, State::Healthy));
        h.rate_limited(SEC, Duration::from_secs(100_000), &o);
        assert!(h.available(SEC + 100 * SEC), "Retry-After is capped at the longest ejection");
        h.set_probe(Probe::Unhealthy, SEC);
        assert_eq!(h.state(1000 * SEC), State::Unhealthy);
        for _ in 0..3 {
            h.failed(1000 * SEC, &o);
        }
        assert_eq!(h.state(1001 * SEC), State::Unhealthy);
        h.set_probe(Probe::Healthy, 1001 * SEC);
        assert_eq!(h.state(1001 * SEC), State::Healthy, "a healthy probe ends the ejection");
        assert_eq!(h.probe(), Probe::Healthy);
    }

    #[test]
    fn only_one_of_many_concurrent_failures_ejects() {
        let h = std::sync::Arc::new(Health::default());
        let o = Outlier { consecutive: 1, ..outlier() };
        let ejected: usize = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).filter(|_| h.failed(SEC, &o).is_some()).count())
            })
            .map(|t| t.join().unwrap_or_default())
            .sum();
        assert_eq!(ejected, 1);
    }
}
