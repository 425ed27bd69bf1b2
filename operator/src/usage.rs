//! Turning the gateways' cumulative reports into totals and recent health.
//!
//! Each gateway instance reports counters cumulative since it started. The
//! book keeps, per instance, the counters it had when this replica began
//! accounting for it (its baseline) and the latest ones; a key's total is the
//! persisted base plus every live instance's growth since its baseline. An
//! instance that stops reporting has its growth folded into the base. After a
//! leader change the new leader starts its base from what status says, so at
//! most one status interval of usage can be counted late or twice-missed. With
//! a usage store (`--store`) status usage comes from the store instead
//! (`usage_store.rs`), and the book serves only health and the last use.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use weaver_crds::protocol::{GatewayReport, KeyReport, LatencySketch, ProbeReport};

/// How far back Channel health and latency look.
pub const HEALTH_WINDOW: Duration = Duration::from_secs(300);

pub type Id = (String, String);

/// The id under which a namespace's keys are counted together (for its
/// NamespacePolicy's status): the namespace with an empty name, which no
/// ApiKey can have.
pub fn namespace_id(namespace: &str) -> Id {
    (namespace.to_owned(), String::new())
}

/// Adds each namespace's total to `keys` under [`namespace_id`]: the sum of
/// every key of the namespace in it (entries under such ids are skipped,
/// and so are requests without a key).
pub fn add_namespace_totals<T: Clone + Default>(keys: &mut HashMap<Id, T>, add: impl Fn(&mut T, &T)) {
    let mut namespaces: HashMap<Id, T> = HashMap::new();
    for ((ns, name), t) in keys.iter() {
        if !name.is_empty() {
            add(namespaces.entry(namespace_id(ns)).or_default(), t);
        }
    }
    keys.extend(namespaces);
}

/// A channel's cumulative totals, failures and latency, as one instance reported them.
type ChannelCounters = (Totals, u64, LatencySketch);

/// What one instance had counted, per key and per channel.
type Counted = (HashMap<Id, Totals>, HashMap<Id, ChannelCounters>);

/// Usage counters of one key (or channel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Nano-dollars.
    pub cost: u64,
    pub last_used: Option<i64>,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost += other.cost;
        self.last_used = self.last_used.max(other.last_used);
    }

    fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            cost: self.cost.saturating_sub(earlier.cost),
            last_used: (self.requests > earlier.requests).then_some(self.last_used).flatten(),
        }
    }
}

impl From<&KeyReport> for Totals {
    fn from(k: &KeyReport) -> Self {
        Totals {
            requests: k.requests,
            input_tokens: k.input_tokens,
            output_tokens: k.output_tokens,
            cost: k.cost,
            last_used: k.last_used,
        }
    }
}

/// Recent upstream outcomes of one channel.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub requests: u64,
    pub failures: u64,
    pub latency: LatencySketch,
    /// The latest health check probe of each live gateway that probes it.
    pub probes: Vec<ProbeReport>,
}

struct Instance {
    last_seen: Instant,
    applied_version: u64,
    /// Per key: counters when accounting began (and at each period reset).
    key_baseline: HashMap<Id, Totals>,
    keys: HashMap<Id, Totals>,
    channel_baseline: HashMap<Id, Totals>,
    channels: HashMap<Id, ChannelCounters>,
    /// The latest health check probe per channel, from the latest report.
    probes: HashMap<Id, ProbeReport>,
}

/// A key's persisted starting point for the current period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Base {
    pub period_start: i64,
    pub totals: Totals,
}

#[derive(Default)]
pub struct UsageBook {
    /// Unix milliseconds from which this replica accounts for usage.
    epoch_ms: i64,
    instances: HashMap<String, Instance>,
    key_base: HashMap<Id, Base>,
    channel_base: HashMap<Id, Totals>,
    windows: HashMap<Id, VecDeque<(Instant, Health)>>,
    /// What pruned instances had counted, so one that comes back after a long
    /// silence continues from there instead of being counted again.
    retired: HashMap<String, Counted>,
}

/// Retired instances remembered at most (oldest forgotten first is not
/// tracked: the map is cleared when full, as restarts make old names moot).
const RETIRED_LIMIT: usize = 10_000;

impl UsageBook {
    /// A book that accounts for usage from `epoch_ms` on: counters of
    /// instances started earlier were (or will be) accounted by someone else.
    pub fn new(epoch_ms: i64) -> Self {
        Self { epoch_ms, ..Self::default() }
    }

    pub fn ingest(&mut self, report: &GatewayReport, now: Instant) {
        let fresh = !self.instances.contains_key(&report.instance);
        let returning = if fresh { self.retired.remove(&report.instance) } else { None };
        // An instance that started after we began accounting has no history
        // anyone else counted; otherwise its counters so far are not ours.
        let from_zero = fresh && returning.is_none() && report.started_at >= self.epoch_ms && report.started_at > 0;
        let inst = self.instances.entry(report.instance.clone()).or_insert_with(|| Instance {
            last_seen: now,
            applied_version: 0,
            key_baseline: HashMap::new(),
            keys: HashMap::new(),
            channel_baseline: HashMap::new(),
            channels: HashMap::new(),
            probes: HashMap::new(),
        });
        // A returning instance: what it had counted is already in the base.
        let fresh = if let Some((keys, channels)) = returning {
            inst.key_baseline = keys.clone();
            inst.keys = keys;
            inst.channel_baseline = channels.iter().map(|(id, (t, _, _))| (id.clone(), *t)).collect();
            inst.channels = channels;
            false
        } else {
            fresh
        };
        inst.last_seen = now;
        inst.applied_version = report.applied_version;
        let mut keys: HashMap<Id, Totals> =
            report.keys.iter().map(|k| ((k.namespace.clone(), k.name.clone()), Totals::from(k))).collect();
        // Namespaces count every key the instance ever reported: a key deleted
        // since (gone from its reports) keeps its share.
        for (id, totals) in &inst.keys {
            if !id.1.is_empty() {
                keys.entry(id.clone()).or_insert(*totals);
            }
        }
        add_namespace_totals(&mut keys, Totals::add);
        for (id, totals) in keys {
            inst.key_baseline.entry(id.clone()).or_insert(if from_zero || !fresh { Totals::default() } else { totals });
            inst.keys.insert(id, totals);
        }
        inst.probes = report
            .channels
            .iter()
            .filter_map(|c| Some(((c.namespace.clone(), c.name.clone()), c.probe.clone()?)))
            .collect();
        for c in &report.channels {
            let id = (c.namespace.clone(), c.name.clone());
            let totals = Totals {
                requests: c.requests,
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                cost: c.cost,
                last_used: None,
            };
            inst.channel_baseline.entry(id.clone()).or_insert(if from_zero || !fresh {
                Totals::default()
            } else {
                totals
            });
            let previous = inst.channels.insert(id.clone(), (totals, c.failures, c.latency.clone()));
            let (prev_totals, prev_failures, prev_latency) = previous.unwrap_or_else(|| {
                if from_zero || !fresh {
                    (Totals::default(), 0, LatencySketch::default())
                } else {
                    (totals, c.failures, c.latency.clone())
                }
            });
            let delta = Health {
                requests: totals.requests.saturating_sub(prev_totals.requests),
                failures: c.failures.saturating_sub(prev_failures),
                latency: c.latency.since(&prev_latency),
                probes: Vec::new(),
            };
            if delta.requests > 0 {
                self.windows.entry(id).or_default().push_back((now, delta));
            }
        }
    }

    /// Drops instances silent for longer than `timeout`, keeping what they
    /// counted; returns how many are live.
    pub fn prune(&mut self, now: Instant, timeout: Duration) -> usize {
        let stale: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, i)| now.duration_since(i.last_seen) > timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for name in stale {
            if let Some(inst) = self.instances.remove(&name) {
                tracing::info!(instance = %name, "gateway stopped reporting");
                for (id, latest) in &inst.keys {
                    let grown = latest.since(inst.key_baseline.get(id).unwrap_or(&Totals::default()));
                    self.key_base.entry(id.clone()).or_default().totals.add(&grown);
                }
                for (id, (latest, _, _)) in &inst.channels {
                    let grown = latest.since(inst.channel_baseline.get(id).unwrap_or(&Totals::default()));
                    if let Some(base) = self.channel_base.get_mut(id) {
                        base.add(&grown);
                    }
                }
                if self.retired.len() >= RETIRED_LIMIT {
                    self.retired.clear();
                }
                self.retired.insert(name, (inst.keys, inst.channels));
            }
        }
        for window in self.windows.values_mut() {
            while window.front().is_some_and(|(t, _)| now.duration_since(*t) > HEALTH_WINDOW) {
                window.pop_front();
            }
        }
        self.windows.retain(|_, w| !w.is_empty());
        self.instances.len()
    }

    /// Live instances and the version each applied.
    pub fn applied_versions(&self) -> Vec<u64> {
        self.instances.values().map(|i| i.applied_version).collect()
    }

    /// Whether a key's base has been set up for the period starting at `period_start`.
    pub fn has_base(&self, id: &Id, period_start: i64) -> bool {
        self.key_base.get(id).is_some_and(|b| b.period_start == period_start)
    }

    /// Starts a key's period: `persisted` is what status already holds for
    /// this period (zero for a new period); growth before now is not recounted.
    pub fn set_base(&mut self, id: &Id, period_start: i64, persisted: Totals) {
        self.key_base.insert(id.clone(), Base { period_start, totals: persisted });
        for inst in self.instances.values_mut() {
            if let Some(latest) = inst.keys.get(id) {
                inst.key_baseline.insert(id.clone(), *latest);
            }
        }
    }

    /// Whether a channel's totals have been started from its status.
    pub fn has_channel_base(&self, id: &Id) -> bool {
        self.channel_base.contains_key(id)
    }

    /// Continues a channel's totals from what status holds (after a restart or
    /// a leader change); growth before now is not recounted.
    pub fn set_channel_base(&mut self, id: &Id, persisted: Totals) {
        self.channel_base.insert(id.clone(), persisted);
        for inst in self.instances.values_mut() {
            if let Some((latest, _, _)) = inst.channels.get(id) {
                inst.channel_baseline.insert(id.clone(), *latest);
            }
        }
    }

    pub fn key_totals(&self, id: &Id) -> Totals {
        let mut t = self.key_base.get(id).map(|b| b.totals).unwrap_or_default();
        for inst in self.instances.values() {
            if let Some(latest) = inst.keys.get(id) {
                t.add(&latest.since(inst.key_baseline.get(id).unwrap_or(&Totals::default())));
            }
        }
        t
    }

    /// The latest use of a key any live instance reported (unix seconds).
    pub fn key_last_used(&self, id: &Id) -> Option<i64> {
        self.instances.values().filter_map(|i| i.keys.get(id)?.last_used).max()
    }

    pub fn channel_totals(&self, id: &Id) -> Totals {
        let mut t = self.channel_base.get(id).copied().unwrap_or_default();
        for inst in self.instances.values() {
            if let Some((latest, _, _)) = inst.channels.get(id) {
                t.add(&latest.since(inst.channel_baseline.get(id).unwrap_or(&Totals::default())));
            }
        }
        t
    }

    /// Outcomes over the health window, merged across instances.
    pub fn health(&self, id: &Id) -> Health {
        let mut h = Health::default();
        for (_, d) in self.windows.get(id).into_iter().flatten() {
            h.requests += d.requests;
            h.failures += d.failures;
            h.latency.merge(&d.latency);
        }
        h.probes = self.instances.values().filter_map(|i| i.probes.get(id).cloned()).collect();
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weaver_crds::protocol::ChannelReport;

    fn report(instance: &str, started_at: i64, requests: u64, cost: u64) -> GatewayReport {
        GatewayReport {
            instance: instance.into(),
            started_at,
            applied_version: 7,
            channels: vec![ChannelReport {
                namespace: "ns".into(),
                name: "c".into(),
                requests,
                failures: requests / 10,
                latency: LatencySketch::default(),
                input_tokens: 0,
                cached_input_tokens: 0,
                output_tokens: 0,
                cost,
                probe: None,
            }],
            keys: vec![KeyReport {
                namespace: "ns".into(),
                name: "k".into(),
                requests,
                input_tokens: requests * 10,
                output_tokens: requests * 5,
                cost,
                last_used: Some(100),
            }],
        }
    }

    fn id() -> Id {
        ("ns".into(), "k".into())
    }

    #[test]
    fn totals_sum_instances_and_survive_lost_reports_and_restarts() {
        let t0 = Instant::now();
        let mut book = UsageBook::new(1_000);
        book.set_base(&id(), 0, Totals { requests: 50, cost: 500, ..Totals::default() });
        // Two gateways started after accounting began: all their counts are ours.
        book.ingest(&report("a", 2_000, 10, 100), t0);
        book.ingest(&report("b", 2_000, 5, 50), t0);
        // A lost report changes nothing: counters are cumulative.
        book.ingest(&report("a", 2_000, 30, 300), t0);
        assert_eq!(book.key_totals(&id()).requests, 50 + 30 + 5);
        assert_eq!(book.key_totals(&id()).cost, 500 + 300 + 50);
        // `a` restarts as a new instance; the old one goes silent and is folded in.
        book.ingest(&report("a2", 3_000, 4, 40), t0 + Duration::from_secs(40));
        book.ingest(&report("b", 2_000, 6, 60), t0 + Duration::from_secs(40));
        assert_eq!(book.prune(t0 + Duration::from_secs(40), Duration::from_secs(30)), 2);
        assert_eq!(book.key_totals(&id()).requests, 50 + 30 + 6 + 4);
    }

    #[test]
    fn an_instance_back_from_a_long_silence_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut book = UsageBook::new(1_000);
        book.ingest(&report("a", 2_000, 10, 100), t0);
        book.prune(t0 + Duration::from_secs(60), Duration::from_secs(30));
        assert_eq!(book.key_totals(&id()).requests, 10);
        book.ingest(&report("a", 2_000, 12, 120), t0 + Duration::from_secs(61));
        assert_eq!(book.key_totals(&id()).requests, 12);
    }

    #[test]
    fn instances_older_than_the_accounting_epoch_count_only_their_growth() {
        let mut book = UsageBook::new(5_000);
        let now = Instant::now();
        book.ingest(&report("old", 1_000, 100, 1_000), now);
        book.ingest(&report("old", 1_000, 103, 1_030), now);
        assert_eq!(book.key_totals(&id()).requests, 3);
    }

    #[test]
    fn a_new_period_starts_from_zero() {
        let mut book = UsageBook::new(0);
        let now = Instant::now();
        book.ingest(&report("a", 10, 10, 100), now);
        book.set_base(&id(), 86_400, Totals::default());
        book.ingest(&report("a", 10, 12, 120), now);
        assert_eq!(book.key_totals(&id()).requests, 2);
    }

    #[test]
    fn a_namespace_counts_its_keys_together_even_once_one_is_deleted() {
        let mut book = UsageBook::new(0);
        let now = Instant::now();
        let mut both = report("a", 10, 10, 100);
        both.keys.push(KeyReport { name: "k2".into(), requests: 5, cost: 50, ..both.keys[0].clone() });
        book.ingest(&both, now);
        let ns = namespace_id("ns");
        assert_eq!((book.key_totals(&ns).requests, book.key_totals(&ns).cost), (15, 150));
        // `k2` was deleted: the gateway reports it no more, its share stays.
        book.ingest(&report("a", 10, 12, 120), now);
        assert_eq!(book.key_totals(&ns).requests, 17);
        // The namespace's budget period starts anew.
        book.set_base(&ns, 86_400, Totals::default());
        book.ingest(&report("a", 10, 13, 130), now);
        assert_eq!(book.key_totals(&ns).requests, 1);
        assert_eq!(book.key_totals(&id()).requests, 13, "the key's own period is its own");
    }

    #[test]
    fn a_channel_first_seen_in_a_later_report_counts_in_full() {
        let mut book = UsageBook::new(0);
        let now = Instant::now();
        let mut empty = report("a", 10, 0, 0);
        empty.channels.clear();
        book.ingest(&empty, now);
        book.ingest(&report("a", 10, 7, 0), now);
        assert_eq!(book.health(&("ns".into(), "c".into())).requests, 7);
    }

    #[test]
    fn health_merges_recent_deltas_across_instances() {
        let mut book = UsageBook::new(0);
        let now = Instant::now();
        book.ingest(&report("a", 10, 20, 0), now);
        book.ingest(&report("b", 10, 10, 0), now);
        let h = book.health(&("ns".into(), "c".into()));
        assert_eq!((h.requests, h.failures), (30, 3));
        book.prune(now + HEALTH_WINDOW + Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(book.health(&("ns".into(), "c".into())).requests, 0);
    }
}
