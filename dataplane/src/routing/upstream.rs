//! One channel's routing state on this replica, kept in the registry (so it
//! outlives snapshots): attempts in flight, the requests-per-minute bucket,
//! passive health and peak-EWMA latency. All atomics; the caps reuse the
//! key limits' counters ([`InFlight`], [`Gcra`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use weaver_crds::snapshot::ChannelLimits;

use super::health::{Health, Outlier};
use super::latency::PeakEwma;
use crate::limits::{Gcra, InFlight, Nanos, Rate};

const MINUTE: Duration = Duration::from_secs(60);

/// The state.
#[derive(Debug, Default)]
pub struct Upstream {
    /// Attempts in flight (all of them: `least-busy` and `cache-aware`
    /// read it; `maxConcurrency` caps it).
    in_flight: InFlight,
    /// `requestsPerMinute`.
    requests: Gcra,
    pub health: Health,
    pub latency: PeakEwma,
    /// Woken when a slot of a capped channel comes back.
    released: Notify,
}

/// A channel's caps as this replica enforces them (its share), built per
/// snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
    /// How long a request waits when every candidate is full.
    pub queue_timeout: Duration,
}

impl Caps {
    /// This replica's share of `limits` across `replicas` (at least one
    /// request each), as the key limits split theirs.
    pub fn share(limits: &ChannelLimits, replicas: u32) -> Self {
        Self {
            concurrency: limits.max_concurrency.map(|n| (n / replicas.max(1)).max(1)),
            rate: limits.requests_per_minute.and_then(|n| Rate::share(u64::from(n), MINUTE, replicas)),
            queue_timeout: Duration::from_millis(limits.queue_timeout_ms),
        }
    }
}

impl Upstream {
    /// Attempts in flight on this replica.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.current()
    }

    /// Whether the caps leave no room at `now`.
    pub fn full(&self, caps: &Caps, now: Nanos) -> bool {
        caps.concurrency.is_some_and(|limit| self.in_flight.current() >= limit)
            || caps.rate.is_some_and(|rate| self.requests.level(rate, now).remaining == 0)
    }

    /// Until the requests bucket holds one request again (zero when it
    /// does, or the channel has no such cap).
    pub fn rate_wait(&self, caps: &Caps, now: Nanos) -> Duration {
        let Some(rate) = caps.rate else { return Duration::ZERO };
        let level = self.requests.level(rate, now);
        if level.remaining > 0 {
            return Duration::ZERO;
        }
        // A full bucket is `burst` units; one unit is back `interval` after
        // the debt drops below the rest.
        let rest = rate.burst().saturating_sub(1).saturating_mul(rate.interval());
        Duration::from_nanos(level.reset.saturating_sub(rest))
    }

    /// Takes a slot (and a request from the bucket) for one attempt; `None`
    /// when the caps leave no room.
    pub fn acquire(self: &Arc<Self>, caps: &Caps, outlier: Outlier, now: Nanos) -> Option<Lease> {
        if !self.in_flight.try_acquire(caps.concurrency.unwrap_or(u32::MAX)) {
            return None;
        }
        let lease = Lease { upstream: self.clone(), capped: caps.concurrency.is_some(), outlier };
        if let Some(rate) = caps.rate {
            // The slot comes back with the lease.
            self.requests.take(rate, 1, now).ok()?;
        }
        Some(lease)
    }

    /// Resolves when a capped channel gives a slot back. Enable it (or poll
    /// it once) before checking whether the channel is still full, so a slot
    /// that comes back in between is not missed.
    pub fn released(&self) -> Notified<'_> {
        self.released.notified()
    }
}

/// An attempt's slot on a channel, given back when dropped (for a stream:
/// when the relay ends). It carries the policy's ejection settings, so a
/// stream that breaks later is counted against the channel the same way.
#[derive(Debug)]
pub struct Lease {
    upstream: Arc<Upstream>,
    capped: bool,
    outlier: Outlier,
}

impl Lease {
    /// The channel's state.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The ejection settings of the request's policy.
    pub fn outlier(&self) -> &Outlier {
        &self.outlier
    }

    /// Counts a failure after the answer began (a broken stream); the
    /// ejection period when it ejected the channel.
    pub fn failed(&self, now: Nanos) -> Option<Nanos> {
        self.upstream.health.failed(now, &self.outlier)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.in_flight.release();
        if self.capped {
            self.upstream.released.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    #[test]
    fn caps_are_shared_and_slots_come_back() {
        let limits = ChannelLimits { max_concurrency: Some(3), requests_per_minute: Some(120), queue_timeout_ms: 0 };
        let caps = Caps::share(&limits, 2);
        assert_eq!(caps.concurrency, Some(1));
        let up = Arc::new(Upstream::default());
        let lease = up.acquire(&caps, Outlier::default(), SEC);
        assert!(lease.is_some() && up.full(&caps, SEC) && up.acquire(&caps, Outlier::default(), SEC).is_none());
        drop(lease);
        assert_eq!(up.in_flight(), 0);
        // 60 a minute on this replica (one went to the first lease): the
        // burst is spent, then one a second.
        let uncapped = Caps { concurrency: None, ..caps };
        let taken = (0..100).filter_map(|_| up.acquire(&uncapped, Outlier::default(), SEC)).count();
        assert_eq!(taken, 59);
        assert!(up.full(&uncapped, SEC));
        assert_eq!(up.rate_wait(&uncapped, SEC), Duration::from_secs(1));
        assert!(!up.full(&uncapped, 2 * SEC));
        assert_eq!(up.in_flight(), 0, "a refused bucket gives the slot back");
    }
}
