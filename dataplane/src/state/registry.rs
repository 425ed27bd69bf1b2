//! State that outlives a snapshot: per channel and per key, keyed by identity
//! (namespace, name), and per namespace with a budget. A snapshot swap
//! re-links the new runtime to the same entries, so counters, health,
//! rate-limit buckets, requests in flight and budget slices carry over — a
//! configuration change must not hand a key or a namespace a fresh allowance;
//! entries of objects that disappeared are pruned at that swap.
//!
//! The maps are locked only when a snapshot is applied and when a report is
//! built; requests reach their entries through the `Arc`s the runtime holds
//! and touch atomics (and one per-channel lock for its latency sketch).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use weaver_crds::protocol::{LatencySketch, ProbeReport};

use super::budget::BudgetState;
use crate::limits::Buckets;
use crate::metering::Label;
use crate::routing::{RetryBudget, Upstream};

/// A namespaced object: (namespace, name).
pub(crate) type Id = (Label, Label);

/// Cumulative since the process started; reported to the operator, which
/// turns them into deltas (a lost report loses nothing).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub requests: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    /// Nano-dollars.
    pub cost: AtomicU64,
}

impl Totals {
    pub fn add(&self, input: u64, output: u64, cost: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.input_tokens.fetch_add(input, Ordering::Relaxed);
        self.output_tokens.fetch_add(output, Ordering::Relaxed);
        self.cost.fetch_add(cost, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct ChannelState {
    pub id: Id,
    pub totals: Totals,
    /// Attempts that failed in a way that counts against the channel.
    pub failures: AtomicU64,
    /// Time to first byte of answered attempts.
    pub latency: Mutex<LatencySketch>,
    /// The upstream refused `stream_options` by name (learnt once, kept
    /// across snapshots): streams go without it and their usage is unknown.
    pub refuses_stream_options: AtomicBool,
    /// Input tokens of answered attempts that the upstream served from its
    /// prompt cache (part of `totals.input_tokens`).
    pub cached_input_tokens: AtomicU64,
    /// Routing state: in flight, caps, passive health, latency. The probe
    /// verdict in its health is the active health checks' (`probe`).
    pub upstream: Arc<Upstream>,
    /// The latest active health check probe, for the reports (written by
    /// the channel's check task only).
    pub probe: Mutex<Option<ProbeReport>>,
}

#[derive(Debug)]
pub(crate) struct KeyState {
    pub id: Id,
    pub totals: Totals,
    /// Unix seconds of the last request; 0 before the first.
    pub last_used: AtomicI64,
    /// This replica's slice of the key's budget.
    pub budget: BudgetState,
    /// Rate-limit buckets and requests in flight.
    pub limits: Buckets,
}

/// A namespace's shared state: this replica's slice of its budget.
#[derive(Debug)]
pub(crate) struct NamespaceState {
    pub id: Label,
    pub budget: BudgetState,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; keep counting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChannelState {
    pub fn record_latency(&self, ms: f64) {
        lock(&self.latency).record(ms);
    }

    pub fn latency(&self) -> LatencySketch {
        lock(&self.latency).clone()
    }

    pub fn set_probe_report(&self, report: Option<ProbeReport>) {
        *lock(&self.probe) = report;
    }

    pub fn probe_report(&self) -> Option<ProbeReport> {
        lock(&self.probe).clone()
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    channels: Mutex<HashMap<Id, Arc<ChannelState>>>,
    keys: Mutex<HashMap<Id, Arc<KeyState>>>,
    namespaces: Mutex<HashMap<Label, Arc<NamespaceState>>>,
    /// Retry budgets per RoutingPolicy, and per namespace (name "") for the
    /// routes no policy claims.
    budgets: Mutex<HashMap<Id, Arc<RetryBudget>>>,
}

impl Registry {
    /// The entry for a channel, created on first sight.
    pub fn channel(&self, id: &Id) -> Arc<ChannelState> {
        lock(&self.channels)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(ChannelState {
                    id: id.clone(),
                    totals: Totals::default(),
                    failures: AtomicU64::new(0),
                    latency: Mutex::default(),
                    refuses_stream_options: AtomicBool::new(false),
                    cached_input_tokens: AtomicU64::new(0),
                    upstream: Arc::default(),
                    probe: Mutex::default(),
                })
            })
            .clone()
    }

    /// The entry for a channel, if it has one.
    pub fn channel_if_present(&self, id: &Id) -> Option<Arc<ChannelState>> {
        lock(&self.channels).get(id).cloned()
    }

    /// The entry for a key, created on first sight.
    pub fn key(&self, id: &Id) -> Arc<KeyState> {
        lock(&self.keys)
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(KeyState {
                    id: id.clone(),
                    totals: Totals::default(),
                    last_used: AtomicI64::new(0),
                    budget: BudgetState::default(),
                    limits: Buckets::default(),
                })
            })
            .clone()
    }

    /// The entry for a namespace with a budget, created on first sight.
    pub fn namespace(&self, id: &Label) -> Arc<NamespaceState> {
        lock(&self.namespaces)
            .entry(id.clone())
            .or_insert_with(|| Arc::new(NamespaceState { id: id.clone(), budget: BudgetState::default() }))
            .clone()
    }

    /// The retry budget of a policy (namespace, name; name "" for a
    /// namespace's defaults), created on first sight.
    pub fn budget(&self, id: &Id) -> Arc<RetryBudget> {
        lock(&self.budgets).entry(id.clone()).or_default().clone()
    }

    /// Drops the budgets of policies no longer configured.
    pub fn retain_budgets(&self, policies: &HashSet<&Id>) {
        lock(&self.budgets).retain(|id, _| policies.contains(id));
    }

    /// Drops the entries of objects no longer configured. Requests still
    /// running on the old snapshot keep theirs alive until they finish.
    pub fn retain(&self, channels: &HashSet<&Id>, keys: &HashSet<&Id>, namespaces: &HashSet<&Label>) {
        lock(&self.channels).retain(|id, _| channels.contains(id));
        lock(&self.keys).retain(|id, _| keys.contains(id));
        lock(&self.namespaces).retain(|id, _| namespaces.contains(id));
    }

    /// Every entry, for a report (the lock is held only to copy the `Arc`s).
    pub fn entries(&self) -> (Vec<Arc<ChannelState>>, Vec<Arc<KeyState>>) {
        let channels = lock(&self.channels).values().cloned().collect();
        let keys = lock(&self.keys).values().cloned().collect();
        (channels, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, name: &str) -> Id {
        (Label::new(ns), Label::new(name))
    }

    #[test]
    fn entries_survive_until_their_object_disappears() {
        let registry = Registry::default();
        let (a, b) = (id("ns", "a"), id("ns", "b"));
        registry.channel(&a).failures.fetch_add(3, Ordering::Relaxed);
        registry.channel(&b);
        assert_eq!(registry.channel(&a).failures.load(Ordering::Relaxed), 3, "same entry on the next snapshot");
        registry.retain(&HashSet::from([&b]), &HashSet::new(), &HashSet::new());
        assert_eq!(registry.channel(&a).failures.load(Ordering::Relaxed), 0, "pruned, then created anew");
        assert_eq!(registry.entries().0.len(), 2);
    }
}
