//! Prometheus metrics (`weaver_gateway_*`). Labels are bounded by
//! configuration (namespaces, models, channels) and by the few HTTP statuses,
//! never by traffic: no request ids, no raw paths, no client-sent model names
//! that match nothing. ApiKey names stay out unless `--metrics-per-key` asks
//! for them; per-key usage belongs to the reports and the usage store.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::gen_ai::{GenAiMetrics, GenAiSeries};
use crate::routing::metrics::RoutingMetrics;
use crate::state::KeyRuntime;

/// A label value shared by reference, so recording a request allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Label(Arc<str>);

impl Label {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value for requests that never got as far as this label (e.g. no key).
    pub fn none() -> Self {
        static NONE: OnceLock<Label> = OnceLock::new();
        NONE.get_or_init(|| Label::new("")).clone()
    }
}

/// The same text in a usage record, shared rather than copied.
impl From<&Label> for weaver_store::Name {
    fn from(label: &Label) -> Self {
        label.0.clone().into()
    }
}

fn label(encoder: &mut LabelSetEncoder<'_>, key: &'static str, value: &str) -> Result<(), std::fmt::Error> {
    (key, value).encode(encoder.encode_label())
}

/// Where a series belongs: `namespace, [key,] model, channel` (the key only
/// when per-key series are on).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub namespace: Label,
    pub key: Option<Label>,
    pub model: Label,
    pub channel: Label,
}

impl EncodeLabelSet for Scope {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        label(encoder, "namespace", self.namespace.as_str())?;
        if let Some(key) = &self.key {
            label(encoder, "key", key.as_str())?;
        }
        label(encoder, "model", self.model.as_str())?;
        label(encoder, "channel", self.channel.as_str())
    }
}

/// A [`Scope`] and the HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestLabels {
    pub scope: Scope,
    pub code: u16,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelSet::encode(&self.scope, encoder)?;
        ("code", self.code).encode(encoder.encode_label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RouteLabels {
    pub model: Label,
    pub channel: Label,
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        label(encoder, "model", self.model.as_str())?;
        label(encoder, "channel", self.channel.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are written in snake_case")]
pub(crate) enum Direction {
    input,
    cached_input,
    cache_write,
    output,
    reasoning,
}

/// A [`Scope`] and the token direction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenLabels {
    pub scope: Scope,
    pub direction: Direction,
}

impl EncodeLabelSet for TokenLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelSet::encode(&self.scope, encoder)?;
        ("direction", self.direction).encode(encoder.encode_label())
    }
}

/// Why `admit` refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are written in snake_case")]
pub(crate) enum RefusalReason {
    metering_unavailable,
    model_not_allowed,
    concurrency,
    rate_limit_requests,
    rate_limit_tokens,
    /// The key's own budget cannot cover the request.
    budget_exceeded,
    /// The key's namespace's budget (its NamespacePolicy) cannot cover it.
    namespace_budget_exceeded,
    /// A budget's local slice ran short and its ledger could not be asked.
    budget_unavailable,
}

/// A refusal's namespace and reason (never the key: it is in the log line
/// and the usage record).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RefusalLabels {
    pub namespace: Label,
    pub reason: RefusalReason,
}

impl EncodeLabelSet for RefusalLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        label(encoder, "namespace", self.namespace.as_str())?;
        ("reason", self.reason).encode(encoder.encode_label())
    }
}

/// The series one route (a channel's model) updates on every request,
/// looked up in their families on first use and kept with the runtime, so a
/// request updates counters and histograms without hashing a label set or
/// taking a family's lock. Kept only for label sets that are the same on every
/// request of the route: the `Scope` ones (`requests_total{code="200"}`,
/// `tokens_total`, `cost_usd_total`) for keys of the channel's own namespace
/// and without per-key series; the others always. Looked up lazily, so a
/// series still appears in the exposition only once something is recorded
/// in it.
#[derive(Default)]
pub(crate) struct RouteSeries {
    /// `requests_total{code="200"}`.
    pub(super) answered: OnceLock<Counter>,
    pub(super) duration: OnceLock<Histogram>,
    pub(super) first_token: OnceLock<Histogram>,
    /// `tokens_total`, by [`Direction`] (its discriminant).
    pub(super) tokens: [OnceLock<Counter>; 5],
    pub(super) cost: OnceLock<Counter<f64, AtomicU64>>,
    /// The GenAI series of chat (`[0]`) and embeddings (`[1]`) requests.
    pub(super) gen_ai: [GenAiSeries; 2],
}

/// Runs `f` on the series of `labels()` in `family`: the one kept in `kept`
/// (looked up there on first use), or, with no place to keep it, the one
/// looked up now. `labels` is only called for a lookup.
pub(super) fn with_series<S, M, C>(
    family: &Family<S, M, C>,
    kept: Option<&OnceLock<M>>,
    labels: impl FnOnce() -> S,
    f: impl FnOnce(&M),
) where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    match kept {
        Some(kept) => f(kept.get_or_init(|| family.get_or_create_owned(&labels()))),
        None => f(&family.get_or_create(&labels())),
    }
}

/// Every gateway metric.
pub(crate) struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub first_token: Family<RouteLabels, Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    /// Requests `admit` refused, by namespace and reason.
    pub admissions_refused: Family<RefusalLabels, Counter>,
    pub in_flight: Gauge,
    pub snapshot_version: Gauge,
    pub snapshot_load_errors: Counter,
    /// Usage records that could not be queued for the store.
    pub usage_records_lost: Counter,
    /// Usage records waiting in memory, and bytes in the spool (set at scrape).
    pub usage_queue_depth: Gauge,
    pub usage_spool_bytes: Gauge,
    /// Records the store acknowledged, and records written to the spool
    /// (brought up to the writer's counts at scrape).
    pub usage_records_stored: Counter,
    pub usage_records_spooled: Counter,
    /// Attempts, retries, fallbacks, ejections, channel states.
    pub routing: RoutingMetrics,
    /// The OpenTelemetry GenAI semantic-convention histograms.
    pub gen_ai: GenAiMetrics,
    /// US dollars metered, by namespace, model and channel (`weaver_gateway_cost_usd_total`).
    pub cost: Family<Scope, Counter<f64, AtomicU64>>,
    /// Put the ApiKey name into request and token series.
    pub per_key: bool,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new(per_key: bool) -> Self {
        // Ours under `weaver_gateway_`, the GenAI conventions' names as they are.
        let mut root = Registry::default();
        let gen_ai = GenAiMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("weaver_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by namespace, model, channel and HTTP status",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the answer",
            duration.clone(),
        );
        let first_token =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first byte of the upstream's answer",
            first_token.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens metered, by direction", tokens.clone());
        let admissions_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "admissions_refused",
            "Requests refused before any upstream call, by namespace and reason (rate limits, concurrency, model access, metering)",
            admissions_refused.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Requests being served", in_flight.clone());
        let snapshot_version = Gauge::default();
        registry.register("snapshot_version", "Version of the configuration snapshot in use", snapshot_version.clone());
        let snapshot_load_errors = Counter::default();
        registry.register(
            "snapshot_load_errors",
            "Configuration loads rejected (the previous snapshot stays in use)",
            snapshot_load_errors.clone(),
        );
        let usage_records_lost = Counter::default();
        registry.register(
            "usage_records_lost",
            "Usage records that could not be queued for the usage store (never expected: check the store)",
            usage_records_lost.clone(),
        );
        let usage_queue_depth = Gauge::default();
        registry.register(
            "usage_queue_depth",
            "Usage records waiting in memory for the store",
            usage_queue_depth.clone(),
        );
        let usage_spool_bytes = Gauge::default();
        registry.register(
            "usage_spool_bytes",
            "Bytes of usage records spooled on disk while the store is unavailable",
            usage_spool_bytes.clone(),
        );
        let usage_records_stored = Counter::default();
        registry.register(
            "usage_records_stored",
            "Usage records the usage store acknowledged",
            usage_records_stored.clone(),
        );
        let usage_records_spooled = Counter::default();
        registry.register(
            "usage_records_spooled",
            "Usage records written to the local spool because the store did not answer (replayed later)",
            usage_records_spooled.clone(),
        );
        let cost = Family::<Scope, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "Cost of the tokens metered, in US dollars at the Channel's prices",
            cost.clone(),
        );
        let routing = RoutingMetrics::register(registry);
        Self {
            routing,
            gen_ai,
            cost,
            requests,
            duration,
            first_token,
            tokens,
            admissions_refused,
            in_flight,
            snapshot_version,
            snapshot_load_errors,
            usage_records_lost,
            usage_queue_depth,
            usage_spool_bytes,
            usage_records_stored,
            usage_records_spooled,
            per_key,
            registry: root,
        }
    }

    /// Counts a request `admit` refused for `key`.
    pub fn refused(&self, key: &KeyRuntime, reason: RefusalReason) {
        self.admissions_refused.get_or_create(&RefusalLabels { namespace: key.namespace.clone(), reason }).inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RouteLabels {
        RouteLabels { model: Label::new("gpt-4o"), channel: Label::new("primary") }
    }

    #[test]
    fn a_kept_series_is_looked_up_once_and_is_the_familys_own() {
        let family = Family::<RouteLabels, Counter>::default();
        let kept = OnceLock::new();
        let mut lookups = 0;
        for _ in 0..3 {
            let labels = || {
                lookups += 1;
                labels()
            };
            with_series(&family, Some(&kept), labels, |c| {
                c.inc();
            });
        }
        with_series(&family, None, labels, |c| {
            c.inc();
        });
        assert_eq!(lookups, 1);
        assert_eq!(family.get_or_create(&labels()).get(), 4);
    }

    #[test]
    fn a_series_appears_only_once_something_is_recorded() -> Result<(), std::fmt::Error> {
        let metrics = Metrics::new(false);
        let series = RouteSeries::default();
        let exposition = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, metrics.registry()).map(|()| out)
        };
        assert!(!exposition()?.contains("weaver_gateway_request_duration_seconds_count{"));
        with_series(&metrics.duration, Some(&series.duration), labels, |h| h.observe(0.25));
        let out = exposition()?;
        assert!(
            out.contains(r#"weaver_gateway_request_duration_seconds_count{model="gpt-4o",channel="primary"} 1"#),
            "{out}"
        );
        Ok(())
    }
}
