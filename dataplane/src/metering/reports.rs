//! What this instance has served, for the reports to the operator: per channel
//! requests, failures and time to first byte; per key requests, tokens, cost
//! and last use, read from the registry's cumulative counters.

use std::sync::atomic::Ordering;

use weaver_crds::protocol::{ChannelReport, GatewayReport, KeyReport};

use crate::state::Registry;

/// The counters so far, sorted by namespace and name.
pub(crate) fn report(registry: &Registry, instance: &str, started_at: i64, applied_version: u64) -> GatewayReport {
    let (channels, keys) = registry.entries();
    let mut channels: Vec<ChannelReport> = channels
        .iter()
        .map(|s| ChannelReport {
            namespace: s.id.0.as_str().to_owned(),
            name: s.id.1.as_str().to_owned(),
            requests: s.totals.requests.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            latency: s.latency(),
            input_tokens: s.totals.input_tokens.load(Ordering::Relaxed),
            cached_input_tokens: s.cached_input_tokens.load(Ordering::Relaxed),
            output_tokens: s.totals.output_tokens.load(Ordering::Relaxed),
            cost: s.totals.cost.load(Ordering::Relaxed),
            probe: s.probe_report(),
        })
        .collect();
    channels.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut keys: Vec<KeyReport> = keys
        .iter()
        .map(|s| KeyReport {
            namespace: s.id.0.as_str().to_owned(),
            name: s.id.1.as_str().to_owned(),
            requests: s.totals.requests.load(Ordering::Relaxed),
            input_tokens: s.totals.input_tokens.load(Ordering::Relaxed),
            output_tokens: s.totals.output_tokens.load(Ordering::Relaxed),
            cost: s.totals.cost.load(Ordering::Relaxed),
            last_used: Some(s.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0),
        })
        .collect();
    keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    GatewayReport { instance: instance.to_owned(), started_at, applied_version, channels, keys }
}
