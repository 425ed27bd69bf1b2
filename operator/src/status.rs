//! Status: conditions from the compiler's problems, health and usage from the
//! gateways' reports. Written by the leader only, with server-side apply under
//! one field manager, and only when something changed; every condition
//! transition also becomes an Event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weaver_crds::api_key::{ApiKeyStatus, UsageStatus};
use weaver_crds::budget::period_start;
use weaver_crds::channel::{ChannelStatus, LatencyStatus};
use weaver_crds::compiler::{Kind, Problem};
use weaver_crds::money::Usd;
use weaver_crds::routing_policy::RoutingPolicyStatus;
use weaver_crds::{ApiKey, Channel, RoutingPolicy};

use crate::context::{Context, MANAGER};
use crate::keys::{SecretIndex, issued_for, secret_of};
use crate::metrics::ErrorCategory;
use crate::usage::{Id, Totals};

fn time(unix: i64) -> Time {
    Time(Timestamp::from_second(unix).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A condition (`status` is "True", "False" or "Unknown"), keeping the
/// previous transition time when the status holds.
fn with_status(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| Time(Timestamp::now()), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    with_status(previous, type_, if status { "True" } else { "False" }, reason, message, generation)
}

fn unknown(previous: &[Condition], type_: &str, reason: &str, message: String, generation: Option<i64>) -> Condition {
    with_status(previous, type_, "Unknown", reason, message, generation)
}

/// `Ready` from the problems about one object.
fn ready(previous: &[Condition], problems: &[&Problem], generation: Option<i64>) -> Condition {
    match problems.first() {
        None => {
            condition(previous, "Ready", true, "Compiled", "Serving in the current snapshot.".to_owned(), generation)
        }
        Some(first) => {
            let message = problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; ");
            condition(previous, "Ready", false, first.reason.as_str(), message, generation)
        }
    }
}

fn usage_status(t: &Totals, since: Option<i64>) -> UsageStatus {
    UsageStatus {
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cost: Usd(t.cost).to_string(),
        since: since.map(time),
        last_used: t.last_used.map(time),
    }
}

/// The totals a usage status holds.
fn totals_of(u: &UsageStatus) -> Totals {
    Totals {
        requests: u.requests,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cost: u.cost.parse::<Usd>().unwrap_or_default().0,
        last_used: u.last_used.as_ref().map(|t| t.0.as_second()),
    }
}

fn duration_text(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2}s", ms / 1000.0) } else { format!("{ms:.0}ms") }
}

fn desired_channel(ctx: &Context, c: &Channel, problems: &[&Problem]) -> ChannelStatus {
    let previous = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = c.meta().generation;
    let id: Id = (c.namespace().unwrap_or_default(), c.name_any());
    let (health, totals) = {
        let mut book = ctx.usage();
        if !book.has_channel_base(&id) {
            let persisted = c.status.as_ref().and_then(|s| s.usage.as_ref()).map(totals_of).unwrap_or_default();
            book.set_channel_base(&id, persisted);
        }
        (book.health(&id), book.channel_totals(&id))
    };
    let mut conditions = vec![if c.spec.disabled {
        condition(previous, "Ready", false, "Disabled", "The channel is disabled.".to_owned(), generation)
    } else {
        ready(previous, problems, generation)
    }];
    let rate = (health.requests > 0).then(|| 1.0 - health.failures as f64 / health.requests as f64);
    conditions.push(match rate {
        None => unknown(
            previous,
            "Healthy",
            "NoTraffic",
            "No upstream requests in the last 5 minutes.".to_owned(),
            generation,
        ),
        Some(r) if r >= 0.5 => condition(
            previous,
            "Healthy",
            true,
            "UpstreamAnswering",
            format!(
                "{} of {} upstream requests in the last 5 minutes succeeded.",
                health.requests - health.failures,
                health.requests
            ),
            generation,
        ),
        Some(_) => condition(
            previous,
            "Healthy",
            false,
            "UpstreamFailing",
            format!("{} of {} upstream requests in the last 5 minutes failed.", health.failures, health.requests),
            generation,
        ),
    });
    let q = |p| health.latency.quantile(p).map(duration_text);
    ChannelStatus {
        conditions,
        observed_generation: generation,
        latency: (health.latency.count() > 0).then(|| LatencyStatus { p50: q(0.5), p95: q(0.95), p99: q(0.99) }),
        success_rate: rate.map(|r| format!("{:.1}%", r * 100.0)),
        usage: (totals.requests > 0).then(|| usage_status(&totals, None)),
    }
}

fn desired_key(ctx: &Context, secrets: &SecretIndex, k: &ApiKey, problems: &[&Problem], now: i64) -> ApiKeyStatus {
    let previous_status = k.status.clone().unwrap_or_default();
    let previous = previous_status.conditions.as_slice();
    let generation = k.meta().generation;
    let id: Id = (k.namespace().unwrap_or_default(), k.name_any());
    let period = k.spec.budget.as_ref().map(|b| b.period);
    let start = period_start(period, now);
    let totals = {
        let mut book = ctx.usage();
        if !book.has_base(&id, start) {
            // Continue from what status holds for this period (after a restart
            // or a leader change), or start the new period from zero.
            let persisted = previous_status
                .usage
                .as_ref()
                .filter(|u| u.since.as_ref().map(|t| t.0.as_second()) == Some(start))
                .map(totals_of)
                .unwrap_or_default();
            book.set_base(&id, start, persisted);
        }
        book.key_totals(&id)
    };
    let mut conditions = vec![if k.spec.disabled {
        condition(previous, "Ready", false, "Disabled", "The key is disabled.".to_owned(), generation)
    } else {
        ready(previous, problems, generation)
    }];
    let expired = k.spec.expires_at.as_ref().is_some_and(|t| t.0.as_second() <= now);
    conditions.push(if expired {
        condition(previous, "Expired", true, "PastExpiry", "The key's expiresAt has passed.".to_owned(), generation)
    } else {
        condition(previous, "Expired", false, "Valid", "The key has not expired.".to_owned(), generation)
    });
    if let Some(budget) = &k.spec.budget {
        let limit = budget.amount.parse::<Usd>().unwrap_or_default();
        let spent = Usd(totals.cost);
        conditions.push(if spent >= limit && limit.0 > 0 {
            condition(
                previous,
                "BudgetExceeded",
                true,
                "OverBudget",
                format!("Spent {spent} of {limit} this period."),
                generation,
            )
        } else {
            condition(
                previous,
                "BudgetExceeded",
                false,
                "WithinBudget",
                format!("Spent {spent} of {limit} this period."),
                generation,
            )
        });
    }
    ApiKeyStatus {
        conditions,
        observed_generation: generation,
        key_prefix: key_prefix(secrets, k),
        usage: Some(usage_status(&totals, Some(start))),
    }
}

/// `lw-` and four characters of an operator-issued key: enough to tell keys
/// apart, far too little to guess one. Keys users bring get no prefix: they
/// may be short, and a prefix of an arbitrary Secret must never be readable
/// through status.
fn key_prefix(secrets: &SecretIndex, k: &ApiKey) -> Option<String> {
    let (secret, _, field) = secret_of(secrets, k);
    let secret = secret.filter(|s| issued_for(s, k))?;
    let value = secret.data.as_ref()?.get(&field)?;
    let text = std::str::from_utf8(&value.0).ok()?;
    text.starts_with("lw-").then(|| text.chars().take(7).collect())
}

fn desired_policy(p: &RoutingPolicy, problems: &[&Problem], resolved: Vec<String>) -> RoutingPolicyStatus {
    let previous = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = p.meta().generation;
    RoutingPolicyStatus {
        conditions: vec![ready(previous, problems, generation)],
        observed_generation: generation,
        resolved_channels: resolved,
    }
}

/// Writes `desired` when it differs from `current`, and announces transitions.
async fn apply_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    desired: S,
    conditions: impl Fn(&S) -> &[Condition],
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(&desired) {
        return;
    }
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else { return };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    if let Err(e) = api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
        ctx.metrics.error(ErrorCategory::status_write);
        tracing::warn!(kind = %K::kind(&()), namespace = %ns, name = %name, error = %e, "status write failed");
        return;
    }
    let before = current.map(&conditions).unwrap_or_default();
    for c in conditions(&desired) {
        let changed =
            before.iter().find(|b| b.type_ == c.type_).is_none_or(|b| b.status != c.status || b.reason != c.reason);
        if !changed {
            continue;
        }
        let good = match c.type_.as_str() {
            "Ready" | "Healthy" => c.status == "True",
            _ => c.status != "True",
        };
        let event = Event {
            type_: if good { EventType::Normal } else { EventType::Warning },
            reason: c.reason.clone(),
            note: Some(format!("{} is {}: {}", c.type_, c.status, c.message).chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            ctx.metrics.error(ErrorCategory::event);
            tracing::debug!(error = %e, "event not recorded");
        }
    }
}

/// Brings every object's status up to date (leader only).
pub async fn write_all(ctx: &Arc<Context>, secrets: &SecretIndex) {
    let published = ctx.published.borrow().clone();
    let live = ctx.usage().prune(Instant::now(), ctx.gateway_timeout);
    let live_u32 = u32::try_from(live).unwrap_or(u32::MAX);
    ctx.replicas.send_if_modified(|r| std::mem::replace(r, live_u32) != live_u32);
    ctx.metrics.live_gateways.set(i64::try_from(live).unwrap_or(i64::MAX));
    let current = published.snapshot.version;
    let at_current = ctx.usage().applied_versions().iter().filter(|v| **v == current).count();
    ctx.metrics.gateways_current.set(i64::try_from(at_current).unwrap_or(i64::MAX));
    if published.line.is_empty() {
        return;
    }
    let mut by_object: BTreeMap<(Kind, &str, &str), Vec<&Problem>> = BTreeMap::new();
    for p in &published.problems {
        by_object.entry((p.kind, p.namespace.as_str(), p.name.as_str())).or_default().push(p);
    }
    let problems_of = |kind, meta: &ObjectMeta| {
        let id = (kind, meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
        by_object.get(&id).cloned().unwrap_or_default()
    };
    let now = Timestamp::now().as_second();
    for c in ctx.stores.channels.state() {
        let desired = desired_channel(ctx, &c, &problems_of(Kind::Channel, c.meta()));
        apply_status(ctx, c.as_ref(), c.status.as_ref(), desired, |s: &ChannelStatus| s.conditions.as_slice()).await;
    }
    for k in ctx.stores.api_keys.state() {
        let desired = desired_key(ctx, secrets, &k, &problems_of(Kind::ApiKey, k.meta()), now);
        apply_status(ctx, k.as_ref(), k.status.as_ref(), desired, |s: &ApiKeyStatus| s.conditions.as_slice()).await;
    }
    for p in ctx.stores.policies.state() {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let resolved = published.resolved.get(&key).cloned().unwrap_or_default();
        let desired = desired_policy(&p, &problems_of(Kind::RoutingPolicy, p.meta()), resolved);
        apply_status(ctx, p.as_ref(), p.status.as_ref(), desired, |s: &RoutingPolicyStatus| s.conditions.as_slice())
            .await;
    }
}
