//! The strategies: each picks one member of a set (a bit mask over the
//! route's members, all of one tier, none empty) in a few passes over it,
//! reading only atomics — no lock, no allocation.

use rand::Rng;
use weaver_crds::routing_policy::Strategy;

use super::{Member, Request, Route};
use crate::limits::Nanos;

/// Multiplying by it steps through [0, 2^64) by the golden ratio: the
/// points of any prefix of the sequence are spread about as evenly as they
/// can be (Weyl's, or Fibonacci hashing).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The members of `set`, lowest index first.
pub(super) fn members(set: u128) -> impl Iterator<Item = usize> {
    let mut rest = set;
    std::iter::from_fn(move || {
        (rest != 0).then(|| {
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            i
        })
    })
}

pub(super) fn choose(route: &Route, set: u128, request: &Request, now: Nanos, rng: &mut impl Rng) -> usize {
    let m = &route.members;
    if set.count_ones() == 1 {
        return set.trailing_zeros() as usize;
    }
    match route.policy.strategy {
        Strategy::Weighted => smooth(route, set),
        Strategy::Random => nth(set, rng.random_range(0..set.count_ones() as usize)),
        Strategy::LowestCost => {
            smooth(route, least(set, |i| m[i].prices.cost(request.input_tokens, 0, request.output_tokens).0))
        }
        Strategy::LowestLatency => two_choices(m, set, now, rng),
        Strategy::LeastBusy => smooth(route, least(set, |i| u64::from(m[i].upstream.in_flight()))),
        Strategy::CacheAware => match request.prefix {
            Some(hash) => rendezvous(m, set, hash, route.policy.load_factor_percent),
            None => smooth(route, set),
        },
    }
}

/// The members of `set` with the least `key`, in one pass.
fn least(set: u128, key: impl Fn(usize) -> u64) -> u128 {
    let mut best = (u64::MAX, 0u128);
    for i in members(set) {
        let k = key(i);
        if k < best.0 {
            best = (k, 1 << i);
        } else if k == best.0 {
            best.1 |= 1 << i;
        }
    }
    best.1
}

fn nth(set: u128, n: usize) -> usize {
    members(set).nth(n).unwrap_or(set.trailing_zeros() as usize)
}

/// Smooth weighted: the route's request counter, stepped by the golden
/// ratio, lands on a point of the members' weights laid end to end. Over
/// any n requests each member's share is within O(log n / n) of its weight
/// (a random draw is only within O(1/sqrt n)), and the members take turns
/// rather than runs. One atomic increment; the counter is the route's, so
/// it starts over at a snapshot swap.
fn smooth(route: &Route, set: u128) -> usize {
    let weight = |i: usize| u64::from(route.members[i].weight);
    let total: u64 = members(set).map(weight).sum();
    let step = route.sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let point = step.wrapping_mul(GOLDEN);
    let mut ticket = ((u128::from(point) * u128::from(total)) >> 64) as u64;
    for i in members(set) {
        if ticket < weight(i) {
            return i;
        }
        ticket -= weight(i);
    }
    set.trailing_zeros() as usize
}

/// Power of two choices over peak-EWMA latency: two members drawn at
/// random, the one with the lower estimate x (requests in flight + 1) wins
/// (ties to the first drawn). Drawing two, not taking the best of all,
/// keeps every replica from stampeding the one fastest channel.
fn two_choices(m: &[Member], set: u128, now: Nanos, rng: &mut impl Rng) -> usize {
    let n = set.count_ones() as usize;
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    let (a, b) = (nth(set, a), nth(set, b));
    let score = |i: usize| {
        let up = &m[i].upstream;
        up.latency.estimate(now) * f64::from(up.in_flight().saturating_add(1))
    };
    if score(b) < score(a) { b } else { a }
}

/// Rendezvous (highest random weight) hashing with bounded load: every
/// member scores the prefix (`-weight / ln(u)`, u uniform from the hash of
/// the prefix and the channel), and the best scorer that is under its bound
/// wins; the bound is `load_factor` % of its weighted share of the requests
/// in flight on the set, plus this one (Mirrokni et al., "Consistent
/// Hashing with Bounded Loads"). A channel joining or leaving moves only the
/// prefixes it wins or won; no ring needs building.
fn rendezvous(m: &[Member], set: u128, prefix: u64, load_factor_percent: u32) -> usize {
    let (mut total_weight, mut in_flight, mut equal) = (0u64, 0u64, true);
    let first_weight = m[set.trailing_zeros() as usize].weight;
    for i in members(set) {
        total_weight += u64::from(m[i].weight);
        in_flight += u64::from(m[i].upstream.in_flight());
        equal &= m[i].weight == first_weight;
    }
    let room = u128::from(load_factor_percent) * u128::from(in_flight + 1);
    let share = 100 * u128::from(total_weight.max(1));
    // The best scorer under its bound, and the best of all (when none is).
    let (mut under, mut any) = ((f64::NEG_INFINITY, None), (f64::NEG_INFINITY, None));
    for i in members(set) {
        let h = mix(prefix ^ m[i].key);
        let score = if equal {
            h as f64
        } else {
            // u in (0, 1): the top 53 bits, never zero.
            let u = ((h >> 11) | 1) as f64 / (1u64 << 53) as f64;
            -f64::from(m[i].weight) / u.ln()
        };
        let bound = (room * u128::from(m[i].weight)).div_ceil(share);
        if score > under.0 && u128::from(m[i].upstream.in_flight()) < bound {
            under = (score, Some(i));
        }
        if score > any.0 {
            any = (score, Some(i));
        }
    }
    under.1.or(any.1).unwrap_or(set.trailing_zeros() as usize)
}

/// A 64-bit finaliser (MurmurHash3's), so that nearby inputs score apart.
pub(super) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
