//! The retry budget (Linkerd's): a retry is allowed when, over the last
//! [`WINDOW_SECS`] seconds, a policy's retries on this replica (this one
//! included) number at most `percent` % of its requests plus `minPerSecond`
//! x [`WINDOW_SECS`]. Hence the bound: the retries of any 10 seconds are at
//! most `percent` % of the requests of those 10 seconds and the 10 before
//! them, plus 10 x `minPerSecond` — in steady traffic, an outage costs the
//! upstreams at most (1 + percent/100) x the request rate plus the floor,
//! however many attempts the policy allows per request.
//!
//! Lock-free: one atomic per second of the window, each holding that
//! second's number and its request and retry counts. A retry is counted
//! first and then checked against the window, and taken back when it does
//! not fit, so concurrent retries can only be refused too often, never let
//! through beyond the bound. The window is whole seconds (between 9 and 10
//! seconds long); state lives in the registry, per policy.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::Nanos;

/// The window's length, in seconds.
pub const WINDOW_SECS: u64 = 10;

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const SECOND_MASK: u64 = (1 << 24) - 1;

/// One policy's budget on this replica.
#[derive(Debug, Default)]
pub struct RetryBudget {
    /// Per second of the window: the second (24 bits), requests (20), retries (20).
    slots: [AtomicU64; WINDOW_SECS as usize],
}

/// The budget's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRule {
    /// Retries as a percentage of requests.
    pub percent: u32,
    /// Retries always allowed per second.
    pub min_per_second: u32,
}

fn unpack(slot: u64) -> (u64, u64, u64) {
    (slot >> (2 * COUNT_BITS), (slot >> COUNT_BITS) & COUNT_MAX, slot & COUNT_MAX)
}

fn pack(second: u64, requests: u64, retries: u64) -> u64 {
    (second << (2 * COUNT_BITS)) | (requests.min(COUNT_MAX) << COUNT_BITS) | retries.min(COUNT_MAX)
}

impl RetryBudget {
    /// Counts a request (its first attempt).
    pub fn deposit(&self, now: Nanos) {
        self.update(now, |requests, retries| Some((requests + 1, retries)));
    }

    /// Takes one retry if it fits the budget at `now`.
    pub fn try_withdraw(&self, now: Nanos, rule: BudgetRule) -> bool {
        if !self.update(now, |requests, retries| Some((requests, retries + 1))) {
            return false;
        }
        let (requests, retries) = self.window(now);
        let allowed = requests * u64::from(rule.percent) / 100 + u64::from(rule.min_per_second) * WINDOW_SECS;
        if retries <= allowed {
            return true;
        }
        // Over: give it back (unless the second turned meanwhile; then the
        // slot already belongs to the next second and the count is gone).
        self.update(now, |requests, retries| Some((requests, retries.checked_sub(1)?)));
        false
    }

    /// Requests and retries over the window ending at `now`.
    fn window(&self, now: Nanos) -> (u64, u64) {
        let current = now / 1_000_000_000;
        self.slots.iter().fold((0, 0), |(requests, retries), slot| {
            let (second, q, r) = unpack(slot.load(Ordering::Relaxed));
            let age = current.wrapping_sub(second) & SECOND_MASK;
            if age < WINDOW_SECS { (requests + q, retries + r) } else { (requests, retries) }
        })
    }

    /// Applies `change` to the current second's counts (a slot left from an
    /// older second starts at zero); false when `change` declines.
    fn update(&self, now: Nanos, change: impl Fn(u64, u64) -> Option<(u64, u64)>) -> bool {
        let current = now / 1_000_000_000;
        let second = current & SECOND_MASK;
        let slot = &self.slots[(current % WINDOW_SECS) as usize];
        slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (s, requests, retries) = unpack(packed);
            let (requests, retries) = if s == second { (requests, retries) } else { (0, 0) };
            let (requests, retries) = change(requests, retries)?;
            Some(pack(second, requests, retries))
        })
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Nanos = 1_000_000_000;
    const RULE: BudgetRule = BudgetRule { percent: 20, min_per_second: 1 };

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::default();
        let t = 100 * SEC;
        for _ in 0..100 {
            b.deposit(t);
        }
        let allowed = (0..1000).filter(|_| b.try_withdraw(t, RULE)).count();
        assert_eq!(allowed, 20 + 10);
        // Ten seconds later the window has moved on: only the floor is left.
        let later = t + 10 * SEC;
        assert_eq!((0..1000).filter(|_| b.try_withdraw(later, RULE)).count(), 10);
    }

    proptest! {
        /// Whatever the order of requests and retries over time, no ten
        /// seconds hold more retries than the stated bound allows.
        #[test]
        fn no_window_exceeds_the_bound(events in proptest::collection::vec((0u64..30_000, any::<bool>()), 1..2000)) {
            let mut events = events;
            events.sort_unstable();
            let b = RetryBudget::default();
            let mut granted: Vec<(u64, bool)> = Vec::new();
            for (ms, retry) in events {
                let now = ms * 1_000_000;
                if retry {
                    if b.try_withdraw(now, RULE) {
                        granted.push((ms / 1000, true));
                    }
                } else {
                    b.deposit(now);
                    granted.push((ms / 1000, false));
                }
            }
            for end in 0..30u64 {
                let within = |s: u64, secs: u64| s <= end && end - s < secs;
                let requests = granted.iter().filter(|(s, r)| !r && within(*s, 2 * WINDOW_SECS)).count() as u64;
                let retries = granted.iter().filter(|(s, r)| *r && within(*s, WINDOW_SECS)).count() as u64;
                prop_assert!(retries <= requests * 20 / 100 + 10, "window ending {end}: {retries} retries, {requests} requests");
            }
        }
    }

    #[test]
    fn concurrent_retries_never_pass_the_bound() {
        let b = std::sync::Arc::new(RetryBudget::default());
        for _ in 0..1000 {
            b.deposit(SEC);
        }
        let granted: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| b.try_withdraw(SEC, RULE)).count())
            })
            .map(|t| t.join().unwrap_or_default())
            .sum();
        assert!(granted <= 200 + 10, "{granted}");
        assert!(granted >= 150, "refused far too often: {granted}");
    }
}
