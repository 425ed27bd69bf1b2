//! Operator metrics (`weaver_operator_*`).

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
        Self {
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

    pub fn budget_alert(&self, namespace: &str, threshold: u32) {
        self.budget_alerts.get_or_create(&AlertLabels { namespace: namespace.to_owned(), threshold }).inc();
    }

    /// The OpenMetrics text exposition, encoded the way every binary does it.
    pub fn encode(&self) -> String {
        weaver_telemetry::encode_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
