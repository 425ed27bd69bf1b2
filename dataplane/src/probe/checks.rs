//! Active health checks: each gateway probes every channel whose spec has a
//! `healthCheck`, one task per channel, and the verdict drives routing (the
//! probe flag in the channel's passive health, see `routing::health`) and
//! the channel's report to the operator (its `Healthy` condition).
//!
//! A supervisor follows the snapshots: it starts a channel's task when the
//! check appears, restarts it when its settings change, and stops it when
//! the check or the channel goes away (the verdict then returns to
//! `Unknown`, so a check that is switched off cannot keep a channel out).
//! Probes go through [`super::exchange`]: they are not client requests, so
//! they make no usage record, touch no key's budget or limits and are not
//! in the request and token metrics; they count in
//! `weaver_gateway_health_checks_total` only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weaver_crds::protocol::ProbeReport;
use weaver_crds::snapshot::HealthCheckSnapshot;

use super::exchange::{Outcome, exchange};
use crate::clock::unix_millis;
use crate::routing::Probe;
use crate::routing::metrics::AttemptLabels;
use crate::state::{Gateway, Id};

/// The probe tasks, stopped when dropped (so aborting the supervisor stops
/// them all).
#[derive(Default)]
struct Running(HashMap<Id, (HealthCheckSnapshot, JoinHandle<()>)>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.values().for_each(|(_, task)| task.abort());
    }
}

/// Runs until aborted (at shutdown).
pub(crate) async fn run(gw: Arc<Gateway>) {
    let mut applied = gw.applied();
    let mut running = Running::default();
    let stop = |task: &JoinHandle<()>| task.abort();
    loop {
        let wanted: HashMap<Id, HealthCheckSnapshot> = {
            let live = gw.live();
            live.channels
                .iter()
                .zip(&live.snapshot.channels)
                .filter_map(|(rt, ch)| Some((rt.state.id.clone(), ch.health_check.clone()?)))
                .collect()
        };
        running.0.retain(|id, (check, task)| {
            let keep = wanted.get(id) == Some(check);
            if !keep {
                stop(task);
                if !wanted.contains_key(id) {
                    // The check is off (or the channel gone): its verdict
                    // must not keep the channel out.
                    let state = gw.registry.channel_if_present(id);
                    if let Some(state) = state {
                        state.upstream.health.set_probe(Probe::Unknown, gw.nanos(Instant::now()));
                        state.set_probe_report(None);
                    }
                }
            }
            keep
        });
        for (id, check) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.0.entry(id) {
                let task = tokio::spawn(probe_channel(gw.clone(), slot.key().clone(), check.clone()));
                slot.insert((check, task));
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// `interval`, give or take a tenth at random, so gateways and channels do
/// not probe in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// Probes one channel until its task is stopped or the channel leaves the
/// snapshot.
async fn probe_channel(gw: Arc<Gateway>, id: Id, check: HealthCheckSnapshot) {
    let interval = Duration::from_millis(check.interval_ms);
    let timeout = Duration::from_millis(check.timeout_ms);
    // The first probe at a random point of the first interval: a gateway
    // that starts with many channels spreads their probes out.
    let first = interval.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(first).await;
    let (mut passed, mut failed) = (0u32, 0u32);
    loop {
        let live = gw.live();
        let Some(channel) = live.channels.iter().find(|c| c.state.id == id) else { return };
        let Some(model) = channel.models.get(check.model as usize) else { return };
        let outcome = exchange(channel, model, &check.prompt, check.max_tokens, timeout).await;
        let result = outcome.result.as_ref().err().map_or("ok", |e| e.category());
        let labels = AttemptLabels { namespace: channel.namespace.clone(), channel: channel.label.clone(), result };
        gw.metrics.routing.health_checks.get_or_create(&labels).inc();
        let health = &channel.state.upstream.health;
        let before = health.probe();
        match &outcome.result {
            Ok(_) => {
                (passed, failed) = (passed.saturating_add(1), 0);
                if passed >= check.healthy_threshold {
                    health.set_probe(Probe::Healthy, gw.nanos(Instant::now()));
                }
            }
            // The upstream is up, only busy: the verdict stands.
            Err(e) if e.rate_limited() => {}
            Err(_) => {
                (passed, failed) = (0, failed.saturating_add(1));
                if failed >= check.unhealthy_threshold {
                    health.set_probe(Probe::Unhealthy, gw.nanos(Instant::now()));
                }
            }
        }
        let after = health.probe();
        if before != after {
            match (&outcome.result, after) {
                (Err(e), Probe::Unhealthy) => tracing::warn!(
                    channel = channel.label.as_str(), namespace = channel.namespace.as_str(), error = %e,
                    "health check failed; the channel gets no traffic until a probe succeeds"
                ),
                _ => tracing::info!(
                    channel = channel.label.as_str(),
                    namespace = channel.namespace.as_str(),
                    "health check passed; the channel serves"
                ),
            }
        }
        channel.state.set_probe_report(Some(report(&outcome, after)));
        // Not holding the snapshot while waiting: it may be long replaced.
        drop(live);
        let next = jittered(interval);
        tokio::time::sleep(next).await;
    }
}

/// The probe as the operator gets it: the error's status and category, and
/// the verdict.
fn report(outcome: &Outcome, verdict: Probe) -> ProbeReport {
    ProbeReport {
        at: unix_millis(),
        succeeded: outcome.result.is_ok(),
        healthy: verdict != Probe::Unhealthy,
        latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
        message: outcome.result.as_ref().err().map(|e| format!("{} {}", outcome.status(), e.category())),
    }
}
