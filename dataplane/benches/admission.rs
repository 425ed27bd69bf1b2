//! CPU of the rate-limit admission check per request, with every limit on
//! (requests and tokens per minute, max concurrent): `cargo bench -p
//! weaver-gateway --bench admission`. Limits are high enough that nothing is
//! refused, and the clock moves 1 ms per request, as under steady load.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use weaver_crds::api_key::RateLimit;
use weaver_gateway::limits::{Buckets, Demand, KeyLimits};

fn admission(c: &mut Criterion) {
    let spec = RateLimit {
        requests_per_minute: Some(1_000_000),
        tokens_per_minute: Some(1_000_000_000),
        max_concurrent: Some(1_000),
    };
    let Some(limits) = KeyLimits::new(&spec, 2) else { return };
    let buckets = Buckets::default();
    let mut now = 0u64;
    let mut next = || {
        now += 1_000_000;
        now
    };

    c.bench_function("admit + settle", |b| {
        b.iter(|| {
            let t = next();
            let held = limits.admit(&buckets, black_box(Demand::chat(450, Some(64), 1)), t);
            if let Ok(held) = held {
                limits.settle(&buckets, held, black_box(Some(120)), t);
            }
        })
    });

    // What a request pays in all: admission, the six headers on its answer
    // (a map sized for them, as `respond` has), and settling.
    c.bench_function("admit + headers + settle", |b| {
        b.iter(|| {
            let t = next();
            let mut headers = HeaderMap::with_capacity(8);
            if let Ok(held) = limits.admit(&buckets, black_box(Demand::chat(450, Some(64), 1)), t) {
                limits.write_headers(&held.levels, &mut headers);
                limits.settle(&buckets, held, black_box(Some(120)), t);
            }
            black_box(headers)
        })
    });
}

criterion_group!(benches, admission);
criterion_main!(benches);
