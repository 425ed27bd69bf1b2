//! Operator metrics (`weaver_operator_*`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Low-cardinality error categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are written in snake_case")]
pub enum ErrorCategory {
    status_write,
    secret_write,
    event,
    report,
    stream,
    /// The usage store did not answer a status pass's queries.
    store,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: ErrorCategory,
}

/// Budget alerts: the namespace (never the key's name) and the threshold in percent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AlertLabels {
    pub namespace: String,
    pub threshold: u32,
}

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// ApiKeys of a namespace whose spend reached `threshold` percent of their budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeysAtLabels {
    pub namespace: String,
    pub threshold: u32,
}

/// The percentages `weaver_operator_api_keys_budget_used` counts keys at.
pub const KEY_BUDGET_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// Which certificate: the operator's CA or its serving certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

pub struct Metrics {
    pub compiles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub compile_seconds: Histogram,
    pub snapshot_bytes: Gauge,
    pub snapshot_version: Gauge,
    pub connected_gateways: Gauge,
    pub live_gateways: Gauge,
    pub gateways_current: Gauge,
    pub problems: Gauge,
    pub budget_alerts: Family<AlertLabels, Counter>,
    pub status_pass_seconds: Histogram,
    pub status_writes: Counter,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// When the CA and the serving certificate expire (unix seconds).
    pub certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Budget (USD) and spend in its current period of each namespace with a
    /// NamespacePolicy budget, and the sums over the namespace's ApiKeys that
    /// have a budget (leader only; rebuilt every status pass).
    pub namespace_budget: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    pub namespace_spend: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    pub key_budgets: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    pub key_spend: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    /// ApiKeys with a budget, and those at 50, 80 and 100 % of it, per namespace.
    pub keys_with_budget: Family<NamespaceLabels, Gauge>,
    pub keys_at: Family<KeysAtLabels, Gauge>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("weaver_operator");
        let compiles = Counter::default();
        r.register("compiles", "Snapshot compilations", compiles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        r.register("errors", "Errors by category", errors.clone());
        let compile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        r.register("compile_seconds", "Time to compile a snapshot", compile_seconds.clone());
        let snapshot_bytes = Gauge::default();
        r.register("snapshot_bytes", "Size of the current snapshot as sent", snapshot_bytes.clone());
        let snapshot_version = Gauge::default();
        r.register("snapshot_version", "Version of the current snapshot", snapshot_version.clone());
        let connected_gateways = Gauge::default();
        r.register("connected_gateways", "Snapshot streams open on this replica", connected_gateways.clone());
        let live_gateways = Gauge::default();
        r.register("live_gateways", "Gateway instances that reported recently", live_gateways.clone());
        let gateways_current = Gauge::default();
        r.register(
            "gateways_at_current_version",
            "Live gateway instances that acknowledged the current snapshot version",
            gateways_current.clone(),
        );
        let problems = Gauge::default();
        r.register("problems", "Problems the last compilation reported", problems.clone());
        let budget_alerts = Family::<AlertLabels, Counter>::default();
        r.register("budget_alerts", "Budget thresholds crossed (each once per key and period)", budget_alerts.clone());
        let status_pass_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        r.register(
            "status_pass_seconds",
            "Time to read usage and write every changed status once",
            status_pass_seconds.clone(),
        );
        let status_writes = Counter::default();
        r.register("status_writes", "Status patches sent", status_writes.clone());
        let leader = Gauge::default();
        r.register(
            "leader",
            "1 while this replica holds the leader Lease (writes status, counts gateways)",
            leader.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the snapshot stream's certificates expire (certificate=ca|serving), unix seconds",
            certificate_expiry.clone(),
        );
        let namespace_budget = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "namespace_budget_usd",
            "A namespace's NamespacePolicy budget per period, US dollars (leader only)",
            namespace_budget.clone(),
        );
        let namespace_spend = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "namespace_spend_usd",
            "A namespace's spend in its NamespacePolicy budget's current period, US dollars (leader only)",
            namespace_spend.clone(),
        );
        let key_budgets = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "api_key_budgets_usd",
            "Sum of the budgets of a namespace's ApiKeys that have one, US dollars (leader only)",
            key_budgets.clone(),
        );
        let key_spend = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "api_key_spend_usd",
            "Sum of the current-period spend of a namespace's ApiKeys that have a budget, US dollars (leader only)",
            key_spend.clone(),
        );
        let keys_with_budget = Family::<NamespaceLabels, Gauge>::default();
        r.register(
            "api_keys_with_budget",
            "ApiKeys with a budget, per namespace (leader only)",
            keys_with_budget.clone(),
        );
        let keys_at = Family::<KeysAtLabels, Gauge>::default();
        r.register(
            "api_keys_budget_used",
            "ApiKeys whose current-period spend reached threshold percent (50, 80, 100) of their budget (leader only)",
            keys_at.clone(),
        );
        Self {
            leader,
            certificate_expiry,
            namespace_budget,
            namespace_spend,
            key_budgets,
            key_spend,
            keys_with_budget,
            keys_at,
            compiles,
            errors,
            compile_seconds,
            snapshot_bytes,
            snapshot_version,
            connected_gateways,
            live_gateways,
            gateways_current,
            problems,
            budget_alerts,
            status_pass_seconds,
            status_writes,
            registry: r,
        }
    }

    pub fn error(&self, category: ErrorCategory) {
        self.errors.get_or_create(&ErrorLabels { category }).inc();
    }

    /// Records when the serving certificate and the CA in use expire.
    pub fn certificates(&self, material: &crate::tls::TlsMaterial) {
        for (certificate, not_after) in [("serving", material.not_after), ("ca", material.ca_not_after)] {
            if let Some(t) = not_after {
                let labels = CertificateLabels { certificate };
                self.certificate_expiry.get_or_create(&labels).set(i64::try_from(t).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn budget_alert(&self, namespace: &str, threshold: u32) {
        self.budget_alerts.get_or_create(&AlertLabels { namespace: namespace.to_owned(), threshold }).inc();
    }

    /// The OpenMetrics text exposition, encoded the way every binary does it.
    pub fn encode(&self) -> String {
        weaver_telemetry::encode_metrics(&self.registry)
    }
}

/// One status pass's budget figures, published into the budget gauges at
/// its end (so namespaces and keys that went away drop out).
#[derive(Default)]
pub struct BudgetGauges {
    /// Per namespace: NamespacePolicy budget and spend (nano-dollars).
    namespaces: BTreeMap<String, (u64, u64)>,
    /// Per namespace: keys with a budget, the sums of their budgets and
    /// spend (nano-dollars), and the keys at each of [`KEY_BUDGET_THRESHOLDS`].
    keys: BTreeMap<String, KeyBudgets>,
}

#[derive(Default)]
struct KeyBudgets {
    count: i64,
    budget: u64,
    spent: u64,
    at: [i64; KEY_BUDGET_THRESHOLDS.len()],
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

impl BudgetGauges {
    /// An ApiKey with a budget of `budget` nano-dollars that spent `spent` this period.
    pub fn key(&mut self, namespace: &str, budget: u64, spent: u64) {
        let k = self.keys.entry(namespace.to_owned()).or_default();
        k.count += 1;
        k.budget = k.budget.saturating_add(budget);
        k.spent = k.spent.saturating_add(spent);
        for (at, threshold) in k.at.iter_mut().zip(KEY_BUDGET_THRESHOLDS) {
            // spent / budget >= threshold %, in integers.
            if budget > 0 && u128::from(spent) * 100 >= u128::from(budget) * u128::from(threshold) {
                *at += 1;
            }
        }
    }

    /// A NamespacePolicy's budget and its namespace's spend this period.
    pub fn namespace(&mut self, namespace: &str, budget: u64, spent: u64) {
        self.namespaces.insert(namespace.to_owned(), (budget, spent));
    }

    /// Replaces the gauges' series with this pass's.
    pub fn publish(self, m: &Metrics) {
        Self::default().clear(m);
        for (namespace, (budget, spent)) in self.namespaces {
            let labels = NamespaceLabels { namespace };
            m.namespace_budget.get_or_create(&labels).set(usd(budget));
            m.namespace_spend.get_or_create(&labels).set(usd(spent));
        }
        for (namespace, k) in self.keys {
            for (at, threshold) in k.at.into_iter().zip(KEY_BUDGET_THRESHOLDS) {
                m.keys_at.get_or_create(&KeysAtLabels { namespace: namespace.clone(), threshold }).set(at);
            }
            let labels = NamespaceLabels { namespace };
            m.keys_with_budget.get_or_create(&labels).set(k.count);
            m.key_budgets.get_or_create(&labels).set(usd(k.budget));
            m.key_spend.get_or_create(&labels).set(usd(k.spent));
        }
    }

    /// Drops every budget series (a replica that stops leading).
    pub fn clear(self, m: &Metrics) {
        m.namespace_budget.clear();
        m.namespace_spend.clear();
        m.key_budgets.clear();
        m.key_spend.clear();
        m.keys_with_budget.clear();
        m.keys_at.clear();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_at_each_threshold_they_reached() {
        let m = Metrics::new();
        let mut g = BudgetGauges::default();
        g.key("a", 100, 79);
        g.key("a", 100, 80);
        g.key("a", 100, 100);
        g.key("a", 0, 5);
        g.namespace("a", 1_000_000_000, 500_000_000);
        g.publish(&m);
        let at = |threshold| m.keys_at.get_or_create(&KeysAtLabels { namespace: "a".into(), threshold }).get();
        assert_eq!((at(50), at(80), at(100)), (3, 2, 1));
        let ns = NamespaceLabels { namespace: "a".into() };
        assert_eq!(m.keys_with_budget.get_or_create(&ns).get(), 4);
        assert!((m.namespace_spend.get_or_create(&ns).get() - 0.5).abs() < 1e-12);
        // The next pass without the namespace drops its series.
        BudgetGauges::default().publish(&m);
        assert!(!m.encode().contains("namespace=\"a\""));
    }
}
