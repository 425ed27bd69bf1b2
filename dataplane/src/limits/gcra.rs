//! GCRA (the generic cell rate algorithm): a token bucket kept as one number,
//! the theoretical arrival time (TAT) — the instant the bucket would be full
//! again. Taking `n` units moves the TAT `n` emission intervals later; a take
//! is refused when the TAT would run further ahead of `now` than the whole
//! burst. One `AtomicU64` per bucket, updated by a compare-and-swap loop: no
//! lock, no background refill, nothing to reset at a window edge.
//!
//! Time is passed in (`now`, nanoseconds on the caller's monotonic clock), so
//! tests drive it by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since the owner's epoch (for the gateway: when it started).
pub type Nanos = u64;

/// A bucket's shape: how much allowance one unit costs and how many units a
/// full bucket holds. Built once per snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds of allowance per unit (the emission interval), rounded up
    /// so the sustained rate never exceeds the limit.
    interval: u64,
    /// Units a full bucket holds (the burst).
    burst: u64,
}

impl Rate {
    /// `limit` units per `period` with a burst of the whole `limit`; `None`
    /// for a limit of zero.
    pub fn per(limit: u64, period: Duration) -> Option<Self> {
        Self::share(limit, period, 1)
    }

    /// One replica's share of `limit` units per `period` across `replicas`:
    /// the rate is `limit / replicas` per period exactly (to the nanosecond
    /// of interval), the burst `limit / replicas` rounded down but at least
    /// one unit. `None` for a limit of zero.
    pub fn share(limit: u64, period: Duration, replicas: u32) -> Option<Self> {
        if limit == 0 {
            return None;
        }
        let replicas = u128::from(replicas.max(1));
        let span = period.as_nanos().saturating_mul(replicas);
        let interval = span.div_ceil(u128::from(limit)).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        let burst = (u128::from(limit) / replicas).max(1);
        Some(Self { interval, burst: u64::try_from(burst).unwrap_or(u64::MAX) })
    }

    /// Units a full bucket holds.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Nanoseconds of allowance per unit.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// How far ahead of `now` the TAT may run: the whole burst, in nanoseconds.
    fn tolerance(&self) -> u64 {
        self.burst.saturating_mul(self.interval)
    }

    fn cost(&self, units: u64) -> u64 {
        units.saturating_mul(self.interval)
    }

    /// The level of a bucket whose TAT is `tat`, at `now`.
    fn level(&self, tat: Nanos, now: Nanos) -> Level {
        let debt = tat.saturating_sub(now);
        Level { remaining: self.tolerance().saturating_sub(debt) / self.interval, reset: debt }
    }
}

/// What a bucket holds at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Whole units that could be taken now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset: Nanos,
}

/// A refused take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Nanoseconds until the same take would succeed (if nothing else is
    /// taken meanwhile); `None` when it never can: it exceeds the burst.
    pub retry_after: Option<Nanos>,
    /// The bucket as the refusal found it.
    pub level: Level,
}

/// One bucket's state: its TAT. A TAT at or before `now` is a full bucket,
/// so a new bucket (TAT 0) starts full.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Takes `units` at `now`, or refuses and takes nothing.
    pub fn take(&self, rate: Rate, units: u64, now: Nanos) -> Result<Level, Refused> {
        let cost = rate.cost(units);
        let tolerance = rate.tolerance();
        // Relaxed is enough: the TAT publishes no other memory, and a
        // read-modify-write always sees the latest value of its own atomic.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            if cost > tolerance {
                return Err(Refused { retry_after: None, level: rate.level(tat, now) });
            }
            let new = tat.max(now).saturating_add(cost);
            let ahead = new - now;
            if ahead > tolerance {
                return Err(Refused { retry_after: Some(ahead - tolerance), level: rate.level(tat, now) });
            }
            match self.tat.compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(rate.level(new, now)),
                Err(current) => tat = current,
            }
        }
    }

    /// Gives back `units` taken earlier (a refund), never beyond full.
    pub fn give_back(&self, rate: Rate, units: u64, now: Nanos) {
        let refund = rate.cost(units);
        let _ = self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            // At or before `now` the bucket is full already.
            (tat > now && refund > 0).then(|| tat.saturating_sub(refund).max(now))
        });
    }

    /// Takes `units` whatever the level (a charge for use found after the
    /// fact): the bucket may go below empty and then refuses until it refills.
    pub fn charge(&self, rate: Rate, units: u64, now: Nanos) {
        let cost = rate.cost(units);
        if cost == 0 {
            return;
        }
        let _ =
            self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| Some(tat.max(now).saturating_add(cost)));
    }

    /// The level at `now`, taking nothing.
    pub fn level(&self, rate: Rate, now: Nanos) -> Level {
        rate.level(self.tat.load(Ordering::Relaxed), now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const SEC: u64 = 1_000_000_000;

    fn rate(limit: u64) -> Rate {
        Rate::per(limit, MINUTE).unwrap_or_else(|| panic!("a positive limit"))
    }

    #[test]
    fn a_new_bucket_admits_the_whole_allowance_at_once_then_refills_at_the_rate() {
        let (bucket, r) = (Gcra::default(), rate(60));
        let now = 5 * SEC;
        for i in 0..60 {
            let level = bucket.take(r, 1, now).unwrap_or_else(|e| panic!("take {i} refused: {e:?}"));
            assert_eq!(level.remaining, 59 - i);
        }
        let refused = bucket.take(r, 1, now).err().unwrap_or_else(|| panic!("61st admitted"));
        assert_eq!(refused.retry_after, Some(SEC), "one request a second comes back");
        assert_eq!(refused.level, Level { remaining: 0, reset: 60 * SEC });
        assert!(bucket.take(r, 1, now + SEC - 1).is_err());
        assert!(bucket.take(r, 1, now + SEC).is_ok());
        assert_eq!(bucket.level(r, now + 61 * SEC), Level { remaining: 60, reset: 0 }, "full again");
    }

    #[test]
    fn bursts_are_exact_even_when_the_interval_rounds() {
        // 60 s / 7 is not a whole number of nanoseconds.
        let (bucket, r) = (Gcra::default(), rate(7));
        assert_eq!((0..10).filter(|_| bucket.take(r, 1, 0).is_ok()).count(), 7);
    }

    #[test]
    fn a_take_larger_than_the_burst_never_fits() {
        let (bucket, r) = (Gcra::default(), rate(1000));
        let refused = bucket.take(r, 1001, 0).err().unwrap_or_else(|| panic!("admitted"));
        assert_eq!(refused.retry_after, None);
        assert_eq!(bucket.level(r, 0).remaining, 1000, "nothing taken");
        assert!(bucket.take(r, 1000, 0).is_ok());
    }

    #[test]
    fn refunds_and_charges_correct_a_reservation() {
        let (bucket, r) = (Gcra::default(), rate(1000));
        assert!(bucket.take(r, 800, 0).is_ok());
        assert!(bucket.take(r, 300, 0).is_err());
        bucket.give_back(r, 700, 0); // used 100 of 800
        assert_eq!(bucket.level(r, 0).remaining, 900);
        bucket.give_back(r, 5000, 0);
        assert_eq!(bucket.level(r, 0).remaining, 1000, "never beyond full");
        bucket.charge(r, 1500, 0); // used more than reserved
        assert_eq!(bucket.level(r, 0).remaining, 0);
        assert!(bucket.take(r, 1, 0).is_err(), "in debt");
        assert!(bucket.take(r, 1, 31 * SEC).is_ok(), "the debt drains at the rate");
    }

    #[test]
    fn replicas_share_rate_and_burst() -> Result<(), String> {
        let r = Rate::share(10, MINUTE, 3).ok_or("rate")?;
        assert_eq!((r.burst(), r.interval()), (3, 18 * SEC), "10 a minute over 3 replicas");
        let r = Rate::share(1, MINUTE, 4).ok_or("rate")?;
        assert_eq!((r.burst(), r.interval()), (1, 240 * SEC), "at least one, at a quarter of the rate");
        assert_eq!(Rate::per(0, MINUTE), None);
        let huge = Rate::per(u64::MAX, MINUTE).ok_or("rate")?;
        assert_eq!(huge.interval(), 1);
        assert!(Gcra::default().take(huge, u64::MAX, u64::MAX - 1).is_ok(), "no overflow");
        Ok(())
    }

    proptest! {
        /// Over any arrivals (sizes and gaps), units admitted in any window of
        /// length W never exceed W / interval + burst (rate x W + burst).
        #[test]
        fn admissions_in_any_window_stay_within_rate_times_window_plus_burst(
            limit in 1u64..200,
            arrivals in proptest::collection::vec((0u64..5 * SEC, 1u64..20), 1..300),
        ) {
            let (bucket, r) = (Gcra::default(), rate(limit));
            let mut now = 0;
            let mut admitted: Vec<(Nanos, u64)> = Vec::new();
            for (gap, units) in arrivals {
                now += gap;
                if bucket.take(r, units, now).is_ok() {
                    admitted.push((now, units));
                }
            }
            for (i, &(start, _)) in admitted.iter().enumerate() {
                let mut units = 0u128;
                for &(t, n) in &admitted[i..] {
                    units += u128::from(n);
                    let window = u128::from(t - start);
                    let bound = window / u128::from(r.interval()) + u128::from(r.burst());
                    prop_assert!(units <= bound, "{units} units in {window} ns; bound {bound}");
                }
            }
        }

        /// A full bucket admits its whole burst (nothing is lost to rounding)
        /// and, after any idle time, what refilled.
        #[test]
        fn refill_gives_back_the_rate(limit in 1u64..10_000, idle in 0u64..120 * SEC) {
            let (bucket, r) = (Gcra::default(), rate(limit));
            prop_assert!(bucket.take(r, limit, 0).is_ok());
            let refilled = (idle / r.interval()).min(limit);
            prop_assert_eq!(bucket.level(r, idle).remaining, refilled);
            if refilled > 0 {
                prop_assert!(bucket.take(r, refilled, idle).is_ok());
            }
            prop_assert!(bucket.take(r, 1, idle).is_err());
        }
    }

    #[test]
    fn threads_racing_on_one_bucket_never_over_admit() {
        let r = rate(10_000);
        let bucket = Arc::new(Gcra::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let bucket = bucket.clone();
                // The same instant for every thread: nothing refills, so
                // exactly the burst may pass.
                std::thread::spawn(move || (0..5_000).filter(|_| bucket.take(r, 1, 42).is_ok()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap_or_else(|_| panic!("thread"))).sum();
        assert_eq!(admitted, 10_000);
    }
}
