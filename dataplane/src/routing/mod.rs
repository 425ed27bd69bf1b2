//! Picking a channel for one attempt among a model's candidates.
//!
//! A [`Route`] (built per snapshot) holds a model's candidates as
//! [`Member`]s in tier order: the requested model's channels by priority
//! (lower first), then each fallback model's, by priority. A pick takes the
//! first tier that has an *available* member — healthy (not ejected, not
//! rate limited, not failed by an active probe), below its caps, weight
//! above zero, not yet tried by this request — and lets the policy's
//! [`strategy`] choose within it. So a lower tier serves only when no better
//! member can.
//!
//! When no member is healthy (or fewer than the policy's panic threshold),
//! a first attempt ignores health and picks among all members below their
//! caps: ejection never turns into a total outage (Envoy's panic mode).
//! Retries never do; they only go where the channel is known to be fine.
//! When the only members left are at their caps, the pick names the best of
//! them so the caller can wait for it, boundedly.
//!
//! Per-channel state ([`Upstream`]: in flight, caps, health, latency) lives
//! in the registry; a pick reads atomics only. Routes use at most
//! [`MAX_MEMBERS`] candidates per model.

mod budget;
mod health;
mod latency;
pub(crate) mod metrics;
mod policy;
pub(crate) mod prefix;
mod strategy;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rand::Rng;
use weaver_crds::money::Prices;

pub use budget::{BudgetRule, RetryBudget, WINDOW_SECS};
pub use health::{DEFAULT_RATE_LIMITED, Health, Outlier, Probe, State};
pub use latency::PeakEwma;
pub use policy::{Policy, Retry};
pub use upstream::{Caps, Lease, Upstream};

use crate::limits::Nanos;

/// Candidates a route uses per model; the rest are never picked.
pub const MAX_MEMBERS: usize = 128;

/// One candidate of a route: a channel serving a model, with what picking
/// needs at hand.
#[derive(Debug)]
pub struct Member {
    /// Index into the runtime's channels, and into that channel's models.
    pub channel: u32,
    pub model: u32,
    pub weight: u32,
    /// Lower is preferred.
    pub priority: i32,
    /// 0: the requested model; n: the policy's n-th fallback model.
    pub fallback: u8,
    /// The tier's number, 0 first (set by [`Route::new`] from `fallback`
    /// and `priority`).
    pub tier: u16,
    /// The model's prices on this channel (`lowest-cost`).
    pub prices: Prices,
    /// The channel's identity hash (`cache-aware`), the same on every replica.
    pub key: u64,
    pub caps: Caps,
    pub upstream: Arc<Upstream>,
}

/// What the strategies may know about a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The prompt prefix's hash (`cache-aware` only).
    pub prefix: Option<u64>,
    /// Estimated input tokens and the output allowance (`lowest-cost` only).
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A pick's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// This member.
    Member(usize),
    /// Every member that could serve is at its caps; this is the best one
    /// to wait for.
    Full(usize),
    /// No member can serve.
    Exhausted,
}

/// A model's candidates under one policy, for one snapshot.
#[derive(Debug)]
pub struct Route {
    members: Box<[Member]>,
    /// Per tier, the mask of its members.
    tiers: Box<[u128]>,
    pub policy: Arc<Policy>,
    /// Requests picked by `weighted`, for its sequence.
    sequence: AtomicU64,
}

impl Route {
    /// A route of `members`, put in tier order (fallback level, then
    /// priority; stable otherwise), their `tier` numbered from 0; only the
    /// first [`MAX_MEMBERS`] are kept.
    pub fn new(mut members: Vec<Member>, policy: Arc<Policy>) -> Self {
        let tier_key = |m: &Member| (m.fallback, m.priority);
        members.sort_by_key(tier_key);
        members.truncate(MAX_MEMBERS);
        let mut tiers: Vec<u128> = Vec::new();
        let mut previous = None;
        for (i, m) in members.iter_mut().enumerate() {
            let key = tier_key(m);
            if previous != Some(key) {
                tiers.push(0);
                previous = Some(key);
            }
            m.tier = u16::try_from(tiers.len() - 1).unwrap_or(u16::MAX);
            if let Some(mask) = tiers.last_mut() {
                *mask |= 1 << i;
            }
        }
        Self {
            members: members.into_boxed_slice(),
            tiers: tiers.into_boxed_slice(),
            policy,
            sequence: AtomicU64::new(0),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Picks a member at `now`, passing over those in `skip` (bit i: member
    /// i). `panic`: when too few members are healthy, ignore health (first
    /// attempts; never retries).
    pub fn pick(&self, request: &Request, skip: u128, panic: bool, now: Nanos, rng: &mut impl Rng) -> Pick {
        let mut healthy_count = 0u32;
        let mut usable_count = 0u32;
        // Not skipped and below their caps: the healthy ones, and all of them.
        let (mut available, mut open) = (0u128, 0u128);
        // Not skipped but at their caps.
        let (mut full_healthy, mut full_any) = (0u128, 0u128);
        for (i, m) in self.members.iter().enumerate() {
            if m.weight == 0 {
                continue;
            }
            usable_count += 1;
            let healthy = m.upstream.health.available(now);
            healthy_count += u32::from(healthy);
            let bit = 1u128 << i;
            if skip & bit != 0 {
                continue;
            }
            let full = (m.caps.concurrency.is_some() || m.caps.rate.is_some()) && m.upstream.full(&m.caps, now);
            match (full, healthy) {
                (false, true) => {
                    available |= bit;
                    open |= bit;
                }
                (false, false) => open |= bit,
                (true, true) => {
                    full_healthy |= bit;
                    full_any |= bit;
                }
                (true, false) => full_any |= bit,
            }
        }
        let panicking = panic
            && usable_count > 0
            && (healthy_count == 0 || healthy_count * 100 < self.policy.outlier.panic_percent * usable_count);
        let (set, full) = if panicking { (open, full_any) } else { (available, full_healthy) };
        for tier in self.tiers.iter() {
            let candidates = set & tier;
            if candidates != 0 {
                return Pick::Member(strategy::choose(self, candidates, request, now, rng));
            }
        }
        match full {
            0 => Pick::Exhausted,
            full => Pick::Full(full.trailing_zeros() as usize),
        }
    }
}

/// A channel's identity hash, for `cache-aware` (from its namespace and
/// name, so that every replica, and every snapshot, agrees).
pub fn channel_key(namespace: &str, name: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
