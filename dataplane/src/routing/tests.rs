use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use weaver_crds::routing_policy::Strategy;
use weaver_crds::snapshot::PolicySnapshot;

use super::*;

const SEC: Nanos = 1_000_000_000;
const NOW: Nanos = 1000 * SEC;

fn member(channel: u32, weight: u32, priority: i32) -> Member {
    Member {
        channel,
        model: 0,
        weight,
        priority,
        fallback: 0,
        tier: 0,
        prices: Prices::default(),
        key: channel_key("ns", &format!("c{channel}")),
        caps: Caps::default(),
        upstream: Arc::default(),
    }
}

fn route(strategy: Strategy, members: Vec<Member>) -> Route {
    Route::new(members, Arc::new(Policy::with_strategy(strategy)))
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// The channel of each of `n` first-attempt picks.
fn picks(r: &Route, request: &Request, n: usize) -> Vec<u32> {
    let mut rng = rng();
    (0..n)
        .map(|_| match r.pick(request, 0, true, NOW, &mut rng) {
            Pick::Member(i) => r.members()[i].channel,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn share(picks: &[u32], channel: u32) -> f64 {
    picks.iter().filter(|c| **c == channel).count() as f64 / picks.len() as f64
}

fn eject(m: &Member) {
    let outlier = Outlier { consecutive: 1, ..Outlier::default() };
    m.upstream.health.failed(NOW, &outlier);
}

#[test]
fn lower_priority_values_are_preferred_and_zero_weight_drains() {
    let r = route(Strategy::Weighted, vec![member(0, 100, 1), member(1, 0, 0), member(2, 5, 0)]);
    assert!(picks(&r, &Request::default(), 100).iter().all(|c| *c == 2));
    let only_zero = route(Strategy::Weighted, vec![member(0, 0, 0)]);
    assert_eq!(only_zero.pick(&Request::default(), 0, true, NOW, &mut rng()), Pick::Exhausted);
    // Sorted: channels 1 and 2 (priority 0), then 0; skipping channel 2 leaves the next tier.
    assert_eq!(
        r.pick(&Request::default(), 0b10, false, NOW, &mut rng()),
        Pick::Member(2),
        "the next tier once the best is tried"
    );
}

#[test]
fn an_unavailable_tier_passes_to_the_next_and_fallback_models_come_last() {
    let mut fallback = member(3, 100, -5);
    fallback.fallback = 1;
    let r = route(Strategy::Weighted, vec![fallback, member(1, 100, 0), member(2, 100, 1)]);
    assert_eq!(r.members().iter().map(|m| (m.channel, m.tier)).collect::<Vec<_>>(), [(1, 0), (2, 1), (3, 2)]);
    assert!(picks(&r, &Request::default(), 20).iter().all(|c| *c == 1));
    eject(&r.members()[0]);
    assert!(picks(&r, &Request::default(), 20).iter().all(|c| *c == 2));
    r.members()[1].upstream.health.rate_limited(NOW, Duration::from_secs(60), &Outlier::default());
    assert!(picks(&r, &Request::default(), 20).iter().all(|c| *c == 3), "the fallback model serves last");
}

#[test]
fn with_every_member_out_a_first_attempt_panics_and_a_retry_does_not() {
    let r = route(Strategy::Weighted, vec![member(0, 1, 0), member(1, 1, 0)]);
    for m in r.members() {
        eject(m);
    }
    assert!(matches!(r.pick(&Request::default(), 0, true, NOW, &mut rng()), Pick::Member(_)));
    assert_eq!(r.pick(&Request::default(), 0, false, NOW, &mut rng()), Pick::Exhausted);
    // A panic threshold of 60%: one healthy of two is not enough.
    let mut p = PolicySnapshot::defaults("ns");
    p.outlier.panic_threshold_percent = 60;
    let r = Route::new(vec![member(0, 1, 0), member(1, 1, 0)], Arc::new(Policy::new(&p, Arc::default())));
    eject(&r.members()[0]);
    let got = picks(&r, &Request::default(), 100);
    assert!(share(&got, 0) > 0.3, "in panic the ejected member serves too: {}", share(&got, 0));
}

#[test]
fn a_full_member_is_passed_over_and_named_when_all_are_full() {
    let mut capped = member(0, 100, 0);
    capped.caps = Caps { concurrency: Some(1), ..Caps::default() };
    let r = route(Strategy::Weighted, vec![capped, member(1, 1, 1)]);
    let lease = r.members()[0].upstream.acquire(&r.members()[0].caps, Outlier::default(), NOW);
    assert!(lease.is_some());
    assert!(picks(&r, &Request::default(), 10).iter().all(|c| *c == 1), "a full channel sends to the next");
    assert_eq!(r.pick(&Request::default(), 0b10, true, NOW, &mut rng()), Pick::Full(0));
    drop(lease);
    assert_eq!(r.pick(&Request::default(), 0b10, true, NOW, &mut rng()), Pick::Member(0));
}

#[test]
fn weighted_turns_are_smooth_and_exact() {
    let r = route(Strategy::Weighted, vec![member(0, 1, 0), member(1, 3, 0)]);
    let got = picks(&r, &Request::default(), 4000);
    assert!((share(&got, 1) - 0.75).abs() < 0.005, "{}", share(&got, 1));
    // Turns, not runs: the rare channel never waits long.
    let longest_run = got.split(|c| *c == 0).map(<[u32]>::len).max().unwrap_or(0);
    assert!(longest_run <= 5, "{longest_run}");
}

proptest! {
    #[test]
    fn a_weighted_split_converges(a in 1u32..1000, b in 1u32..1000, c in 1u32..1000) {
        let r = route(Strategy::Weighted, vec![member(0, a, 0), member(1, b, 0), member(2, c, 0)]);
        let got = picks(&r, &Request::default(), 5000);
        let total = f64::from(a + b + c);
        for (channel, w) in [(0, a), (1, b), (2, c)] {
            let expected = f64::from(w) / total;
            prop_assert!((share(&got, channel) - expected).abs() < 0.01, "{channel}: {expected} vs {}", share(&got, channel));
        }
    }
}

#[test]
fn random_spreads_evenly_whatever_the_weights() {
    let r = route(Strategy::Random, vec![member(0, 1, 0), member(1, 1000, 0)]);
    let got = picks(&r, &Request::default(), 4000);
    assert!((share(&got, 0) - 0.5).abs() < 0.05, "{}", share(&got, 0));
}

#[test]
fn lowest_cost_takes_the_cheapest_for_the_token_mix_ties_by_weight() {
    let priced = |channel, weight, input, output| {
        let mut m = member(channel, weight, 0);
        m.prices = Prices { input, output, cached_input: input, cache_write_input: None };
        m
    };
    // Cheap input, dear output vs the reverse: the token mix decides.
    let r =
        route(Strategy::LowestCost, vec![priced(0, 1, 100, 1000), priced(1, 1, 1000, 100), priced(2, 3, 1000, 100)]);
    let prompt_heavy = Request { input_tokens: 10_000, output_tokens: 10, ..Request::default() };
    assert!(picks(&r, &prompt_heavy, 50).iter().all(|c| *c == 0));
    let output_heavy = Request { input_tokens: 10, output_tokens: 10_000, ..Request::default() };
    let got = picks(&r, &output_heavy, 400);
    assert!((share(&got, 2) - 0.75).abs() < 0.02, "ties by weight: {}", share(&got, 2));
    eject(&r.members()[0]);
    assert!(picks(&r, &prompt_heavy, 50).iter().all(|c| *c != 0), "the cheapest out: the next cheapest");
}

#[test]
fn least_busy_takes_the_fewest_in_flight() {
    let r = route(Strategy::LeastBusy, vec![member(0, 1, 0), member(1, 1, 0), member(2, 1, 0)]);
    let hold = |i: usize| r.members()[i].upstream.acquire(&Caps::default(), Outlier::default(), NOW);
    let _held = [hold(0), hold(0), hold(1)];
    assert!(picks(&r, &Request::default(), 20).iter().all(|c| *c == 2));
}

#[test]
fn lowest_latency_prefers_the_fast_channel_and_follows_a_change() {
    let r = route(Strategy::LowestLatency, vec![member(0, 1, 0), member(1, 1, 0)]);
    let ms = |n: f64| n * 1e6;
    r.members()[0].upstream.latency.observe(ms(20.0), NOW);
    r.members()[1].upstream.latency.observe(ms(200.0), NOW);
    let got = picks(&r, &Request::default(), 100);
    assert!(share(&got, 0) > 0.95, "{}", share(&got, 0));
    r.members()[0].upstream.latency.observe(ms(400.0), NOW);
    let got = picks(&r, &Request::default(), 100);
    assert!(share(&got, 1) > 0.95, "{}", share(&got, 1));
}

#[test]
fn cache_aware_keeps_a_prefix_on_one_channel_within_its_load_bound() {
    let r = route(Strategy::CacheAware, (0..4).map(|c| member(c, 1, 0)).collect());
    let same = Request { prefix: Some(42), ..Request::default() };
    let got = picks(&r, &same, 50);
    assert!(got.iter().all(|c| *c == got[0]));
    let spread: std::collections::HashSet<u32> =
        (0..64u64).flat_map(|p| picks(&r, &Request { prefix: Some(p), ..Request::default() }, 1)).collect();
    assert_eq!(spread.len(), 4, "different prefixes use every channel");
    // The prefix's channel holds more than its bound: the next one takes it.
    let home = r.members().iter().position(|m| m.channel == got[0]).unwrap_or(0);
    let _held: Vec<_> =
        (0..3).map(|_| r.members()[home].upstream.acquire(&Caps::default(), Outlier::default(), NOW)).collect();
    let spilled = picks(&r, &same, 10);
    assert!(spilled.iter().all(|c| *c != got[0] && *c == spilled[0]), "{spilled:?}");
    // Weighted rendezvous: shares follow the weights.
    let weighted = route(Strategy::CacheAware, vec![member(0, 1, 0), member(1, 3, 0)]);
    let got: Vec<u32> =
        (0..4000u64).flat_map(|p| picks(&weighted, &Request { prefix: Some(p), ..Request::default() }, 1)).collect();
    assert!((share(&got, 1) - 0.75).abs() < 0.03, "{}", share(&got, 1));
}
