//! What this instance has served, for the reports to the operator: per channel
//! requests, failures and time to first byte; per key requests, tokens, cost
//! and last use. Counters are cumulative since the process started, so a lost
//! report loses nothing (the operator turns them into deltas).
//!
//! Recording holds one of two mutexes for a hash lookup and a few additions.
//! Entries are keyed by the shared labels the runtime already holds, so once a
//! key or channel has been seen, recording clones and allocates nothing. Entries
//! outlive the snapshot that named them (the counters are per instance), which
//! bounds the maps by configuration churn, not by traffic.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use weaver_crds::money::Prices;
use weaver_crds::protocol::{ChannelReport, GatewayReport, KeyReport, LatencySketch};

use crate::clock::{unix_millis, unix_seconds};
use crate::metrics::Label;
use crate::usage::Usage;

/// A namespaced object: (namespace, name).
pub type Id = (Label, Label);

/// Where a request was routed.
#[derive(Clone, Debug)]
pub struct Route {
    /// The model as the client named it (configuration, so bounded).
    pub model: Label,
    pub channel: Id,
    /// The model's prices on that channel.
    pub prices: Prices,
}

/// One finished request, as the meter saw it.
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    pub key: Option<&'a Id>,
    pub route: Option<&'a Route>,
    pub status: u16,
    /// From the start of the request to the first byte of the answer.
    pub first_byte: Option<Duration>,
    pub usage: Option<Usage>,
}

#[derive(Clone, Default)]
struct ChannelStats {
    requests: u64,
    failures: u64,
    latency: LatencySketch,
    tokens: Tokens,
}

/// Tokens and their cost, in nano-dollars.
#[derive(Clone, Copy, Default)]
struct Tokens {
    input: u64,
    output: u64,
    cost: u64,
}

impl Tokens {
    fn add(&mut self, other: Tokens) {
        // Token counts come from upstreams; never let one overflow a counter.
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cost = self.cost.saturating_add(other.cost);
    }
}

#[derive(Clone, Copy, Default)]
struct KeyStats {
    requests: u64,
    tokens: Tokens,
    last_used: Option<i64>,
}

pub struct Stats {
    /// Unix milliseconds when counting began (the process start, near enough).
    started_at: i64,
    channels: Mutex<HashMap<Id, ChannelStats>>,
    keys: Mutex<HashMap<Id, KeyStats>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self { started_at: unix_millis(), channels: Mutex::default(), keys: Mutex::default() }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; keep counting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the entry for `id`, creating it on first use. Looking up by
/// reference first avoids cloning the id on every request, as `entry()` would.
fn update<V: Default>(map: &mut HashMap<Id, V>, id: &Id, f: impl FnOnce(&mut V)) {
    match map.get_mut(id) {
        Some(v) => f(v),
        None => f(map.entry(id.clone()).or_default()),
    }
}

impl Stats {
    /// Unix milliseconds when this instance began counting.
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    pub fn record(&self, o: &Outcome<'_>) {
        let tokens = match (o.usage, o.route) {
            (Some(u), Some(r)) => Tokens {
                input: u.prompt_tokens,
                output: u.completion_tokens,
                cost: r.prices.cost(u.prompt_tokens, u.cached_tokens(), u.completion_tokens).0,
            },
            _ => Tokens::default(),
        };
        if let Some(route) = o.route {
            // 499 (the client left) is not the channel's fault; 5xx covers
            // unreachable, timed out, refused credentials and upstream errors.
            let failed = o.status >= 500;
            let ms = o.first_byte.map(|d| d.as_secs_f64() * 1000.0);
            update(&mut lock(&self.channels), &route.channel, |s| {
                s.requests += 1;
                s.failures += u64::from(failed);
                if let Some(ms) = ms {
                    s.latency.record(ms);
                }
                s.tokens.add(tokens);
            });
        }
        if let Some(key) = o.key {
            let now = unix_seconds();
            update(&mut lock(&self.keys), key, |s| {
                s.requests += 1;
                s.tokens.add(tokens);
                s.last_used = Some(now);
            });
        }
    }

    /// The counters so far, sorted by namespace and name.
    pub fn report(&self, instance: &str, applied_version: u64) -> GatewayReport {
        // Copy under the lock, build strings after it, so requests wait only for the copy.
        let channels: Vec<(Id, ChannelStats)> =
            lock(&self.channels).iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        let keys: Vec<(Id, KeyStats)> = lock(&self.keys).iter().map(|(id, s)| (id.clone(), *s)).collect();
        let mut channels: Vec<ChannelReport> = channels
            .into_iter()
            .map(|((namespace, name), s)| ChannelReport {
                namespace: namespace.as_str().to_owned(),
                name: name.as_str().to_owned(),
                requests: s.requests,
                failures: s.failures,
                latency: s.latency,
                input_tokens: s.tokens.input,
                output_tokens: s.tokens.output,
                cost: s.tokens.cost,
            })
            .collect();
        channels.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut keys: Vec<KeyReport> = keys
            .into_iter()
            .map(|((namespace, name), s)| KeyReport {
                namespace: namespace.as_str().to_owned(),
                name: name.as_str().to_owned(),
                requests: s.requests,
                input_tokens: s.tokens.input,
                output_tokens: s.tokens.output,
                cost: s.tokens.cost,
                last_used: s.last_used,
            })
            .collect();
        keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        GatewayReport { instance: instance.to_owned(), started_at: self.started_at, applied_version, channels, keys }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::PromptDetails;

    fn id(ns: &str, name: &str) -> Id {
        (Label::new(ns), Label::new(name))
    }

    #[test]
    fn counts_accumulate_per_key_and_channel() {
        let stats = Stats::default();
        let key = id("team-a", "checkout");
        let prices = Prices { input: 150_000_000, output: 600_000_000, cached_input: 75_000_000 };
        let route = Route { model: Label::new("gpt"), channel: id("team-a", "primary"), prices };
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            prompt_tokens_details: Some(PromptDetails { cached_tokens: 400 }),
        };
        let ok = Outcome {
            key: Some(&key),
            route: Some(&route),
            status: 200,
            first_byte: Some(Duration::from_millis(120)),
            usage: Some(usage),
        };
        stats.record(&ok);
        stats.record(&ok);
        stats.record(&Outcome { status: 502, usage: None, ..ok });
        stats.record(&Outcome { status: 499, first_byte: None, usage: None, ..ok });
        // Refused before routing: the key counts, no channel does.
        stats.record(&Outcome { route: None, status: 403, first_byte: None, usage: None, ..ok });
        // No key at all: nothing to attribute.
        stats.record(&Outcome { key: None, route: None, status: 401, first_byte: None, usage: None });

        let report = stats.report("gw-1", 7);
        assert_eq!(report.instance, "gw-1");
        assert_eq!(report.applied_version, 7);
        assert_eq!(report.channels.len(), 1);
        let ch = &report.channels[0];
        assert_eq!((ch.namespace.as_str(), ch.name.as_str()), ("team-a", "primary"));
        assert_eq!((ch.requests, ch.failures, ch.latency.count()), (4, 1, 3));
        assert_eq!((ch.input_tokens, ch.output_tokens, ch.cost), (2000, 1000, 2 * prices.cost(1000, 400, 500).0));
        assert!(report.started_at > 0);
        assert_eq!(report.keys.len(), 1);
        let k = &report.keys[0];
        assert_eq!((k.requests, k.input_tokens, k.output_tokens), (5, 2000, 1000));
        assert_eq!(k.cost, 2 * prices.cost(1000, 400, 500).0);
        assert!(k.last_used.is_some());
    }

    #[test]
    fn reports_are_sorted_and_cumulative() {
        let stats = Stats::default();
        let (b, a) = (id("ns", "b"), id("ns", "a"));
        for key in [&b, &a, &b] {
            stats.record(&Outcome { key: Some(key), route: None, status: 401, first_byte: None, usage: None });
        }
        let first = stats.report("i", 1);
        let names: Vec<_> = first.keys.iter().map(|k| (k.name.as_str(), k.requests)).collect();
        assert_eq!(names, [("a", 1), ("b", 2)]);
        stats.record(&Outcome { key: Some(&a), route: None, status: 200, first_byte: None, usage: None });
        assert_eq!(stats.report("i", 1).keys[0].requests, 2);
    }
}
