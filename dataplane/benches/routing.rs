//! CPU of one routing pick among 100 candidates, per strategy: `cargo bench
//! -p weaver-gateway --bench routing`. The candidates are in four priority
//! tiers of 25 (the best tier serves), with prices, latencies and requests in
//! flight set, two channels ejected and one at its concurrency cap, so each
//! pick reads every candidate's health and caps as on a busy gateway.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use weaver_crds::money::Prices;
use weaver_crds::routing_policy::Strategy;
use weaver_gateway::routing::{Caps, Member, Outlier, Pick, Policy, Request, Route, Upstream, channel_key};

const CANDIDATES: u32 = 100;
const NOW: u64 = 1_000_000_000_000;

fn route(strategy: Strategy) -> (Route, Vec<weaver_gateway::routing::Lease>) {
    let members = (0..CANDIDATES)
        .map(|i| Member {
            channel: i,
            model: 0,
            weight: 1 + i % 7,
            priority: (i % 4) as i32,
            fallback: 0,
            tier: 0,
            prices: Prices {
                input: 100 + u64::from(i % 13),
                output: 400 + u64::from(i % 5),
                cached_input: 50,
                cache_write_input: None,
            },
            key: channel_key("bench", &format!("channel-{i}")),
            caps: if i == 8 { Caps { concurrency: Some(1), ..Caps::default() } } else { Caps::default() },
            upstream: Arc::new(Upstream::default()),
        })
        .collect();
    let route = Route::new(members, Arc::new(Policy::with_strategy(strategy)));
    let eject = Outlier { consecutive: 1, ..Outlier::default() };
    let mut held = Vec::new();
    for (i, m) in route.members().iter().enumerate() {
        m.upstream.latency.observe(1e6 * (20.0 + (i % 11) as f64), NOW);
        if i % 3 == 0 {
            held.extend(m.upstream.acquire(&m.caps, Outlier::default(), NOW));
        }
        if i == 4 || i == 12 {
            m.upstream.health.failed(NOW, &eject);
        }
    }
    (route, held)
}

fn selection(c: &mut Criterion) {
    let request = Request { prefix: Some(0x1234_5678_9abc_def0), input_tokens: 800, output_tokens: 256 };
    let mut rng = StdRng::seed_from_u64(1);
    for strategy in [
        Strategy::Weighted,
        Strategy::Random,
        Strategy::LowestCost,
        Strategy::LowestLatency,
        Strategy::LeastBusy,
        Strategy::CacheAware,
    ] {
        let (route, _held) = route(strategy);
        let name = format!("pick of {CANDIDATES}: {strategy:?}");
        c.bench_function(&name, |b| {
            b.iter(|| {
                let pick = route.pick(black_box(&request), 0, true, NOW, &mut rng);
                assert!(matches!(pick, Pick::Member(_)));
                black_box(pick)
            })
        });
    }
}

criterion_group!(benches, selection);
criterion_main!(benches);
