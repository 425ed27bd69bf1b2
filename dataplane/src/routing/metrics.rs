//! Routing's Prometheus metrics (`weaver_gateway_*`), under the label policy
//! of `metering::metrics`: namespaces, channels and models from the
//! configuration, and low-cardinality reasons — never policy or key names.
//! A channel's health state is read from the registry at each scrape.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::State;
use crate::limits::Nanos;
use crate::metering::Label;
use crate::state::Registry as StateRegistry;

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub namespace: Label,
    pub channel: Label,
    /// `ok`, or the failure's category (`upstream_error`, `upstream_timeout`...).
    pub result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub namespace: Label,
    /// The category of the failure that was retried.
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct NamespaceLabels {
    pub namespace: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub namespace: Label,
    /// The model the client asked for.
    pub model: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ChannelLabels {
    pub namespace: Label,
    pub channel: Label,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub namespace: Label,
    pub channel: Label,
    pub state: &'static str,
}

/// Every routing metric.
pub(crate) struct RoutingMetrics {
    pub attempts: Family<AttemptLabels, Counter>,
    pub retries: Family<ReasonLabels, Counter>,
    pub retry_budget_exhausted: Family<NamespaceLabels, Counter>,
    pub fallbacks: Family<ModelLabels, Counter>,
    pub saturated: Family<NamespaceLabels, Counter>,
    pub ejections: Family<ChannelLabels, Counter>,
    pub channel_state: Family<StateLabels, Gauge>,
    pub channel_in_flight: Family<ChannelLabels, Gauge>,
    /// Active health check probes (not in `upstream_attempts`).
    pub health_checks: Family<AttemptLabels, Counter>,
}

impl RoutingMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            attempts: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            fallbacks: Family::default(),
            saturated: Family::default(),
            ejections: Family::default(),
            channel_state: Family::default(),
            channel_in_flight: Family::default(),
            health_checks: Family::default(),
        };
        registry.register(
            "upstream_attempts",
            "Upstream attempts, by namespace, channel and result (ok, or the failure's category)",
            m.attempts.clone(),
        );
        registry.register(
            "retries",
            "Attempts made after a failed one, by namespace and the failure's category",
            m.retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the policy's retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "fallbacks",
            "Attempts on a lower priority tier or a fallback model than the route's first, by requested model",
            m.fallbacks.clone(),
        );
        registry.register(
            "upstream_saturated",
            "Requests answered 503 because every channel stayed at its caps for the queue timeout",
            m.saturated.clone(),
        );
        registry.register(
            "channel_ejections",
            "Times a channel was ejected from routing for failing",
            m.ejections.clone(),
        );
        registry.register(
            "channel_state",
            "1 for a channel's routing state on this gateway (healthy, ejected, rate_limited, unhealthy), 0 for the others",
            m.channel_state.clone(),
        );
        registry.register(
            "channel_in_flight",
            "Upstream attempts in flight per channel on this gateway",
            m.channel_in_flight.clone(),
        );
        registry.register(
            "health_checks",
            "Active health check probes, by namespace, channel and result (ok, or the failure's category)",
            m.health_checks.clone(),
        );
        m
    }

    /// Sets the per-channel gauges from the registry at `now` (at scrape).
    /// Channels no longer configured are dropped from them.
    pub fn observe(&self, registry: &StateRegistry, now: Nanos) {
        let (channels, _) = registry.entries();
        self.channel_state.clear();
        self.channel_in_flight.clear();
        for channel in channels {
            let (namespace, name) = &channel.id;
            let state = channel.upstream.health.state(now);
            for s in State::ALL {
                let labels = StateLabels { namespace: namespace.clone(), channel: name.clone(), state: s.as_str() };
                self.channel_state.get_or_create(&labels).set(i64::from(s == state));
            }
            let labels = ChannelLabels { namespace: namespace.clone(), channel: name.clone() };
            self.channel_in_flight.get_or_create(&labels).set(i64::from(channel.upstream.in_flight()));
        }
    }
}
