//! Status: conditions from the compiler's problems, health from the gateways'
//! reports, usage from the usage store (`--store`) or else from the reports.
//! Written by the leader only, with server-side apply under one field manager,
//! and only for objects whose status changed, [`WRITE_CONCURRENCY`] patches at
//! a time; every condition transition also becomes an Event, and budget
//! threshold crossings become alerts (`alerts.rs`).
//!
//! Scale: a pass writes every changed status before the next pass starts; the
//! writer's interval stretches when a pass takes longer, so status then trails
//! usage by one pass rather than by one interval. 10,000 changed ApiKeys (and
//! 1,000 Channels) took 86 s on the loaded 2-core test machine (`bench/scale`,
//! README): far more than one 2 s interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weaver_crds::api_key::{ApiKeyStatus, Budget, BudgetAlertStatus, UsageStatus};
use weaver_crds::budget::period_start;
use weaver_crds::channel::{ChannelStatus, LatencyStatus, ProbeStatus};
use weaver_crds::compiler::{Kind, Problem};
use weaver_crds::money::Usd;
use weaver_crds::namespace_policy::NamespacePolicyStatus;
use weaver_crds::routing_policy::RoutingPolicyStatus;
use weaver_crds::{ApiKey, Channel, NamespacePolicy, RoutingPolicy};

use crate::alerts::{self, Alert, Announced};
use crate::context::{Context, MANAGER};
use crate::keys::{SecretIndex, issued_for, secret_of};
use crate::metrics::{BudgetGauges, ErrorCategory};
use crate::usage::{Health, Id, Totals, namespace_id};
use crate::usage_store::{Counted, StoreTotals};

/// Status patches in flight at once: enough to hide the API server's latency,
/// few enough not to crowd out other clients (the API server's default
/// max-in-flight is 400 mutating requests).
pub const WRITE_CONCURRENCY: usize = 16;

/// Where one pass's usage comes from.
enum UsageSource {
    /// No store: the report book.
    Reports,
    /// What the store answered for this pass.
    Store(StoreTotals),
    /// The store did not answer: status keeps the usage it holds.
    Unavailable,
}

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

fn usage_status(t: &Totals, errors: Option<u64>, since: Option<i64>) -> UsageStatus {
    UsageStatus {
        requests: t.requests,
        errors,
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

fn desired_channel(ctx: &Context, source: &UsageSource, c: &Channel, problems: &[&Problem]) -> ChannelStatus {
    let previous = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = c.meta().generation;
    let id: Id = (c.namespace().unwrap_or_default(), c.name_any());
    let (health, usage) = {
        let mut book = ctx.usage();
        let usage = match source {
            UsageSource::Reports => {
                if !book.has_channel_base(&id) {
                    let persisted = c.status.as_ref().and_then(|s| s.usage.as_ref()).map(totals_of).unwrap_or_default();
                    book.set_channel_base(&id, persisted);
                }
                let totals = book.channel_totals(&id);
                (totals.requests > 0).then(|| usage_status(&totals, None, None))
            }
            UsageSource::Store(store) => {
                let Counted { totals, errors } = store.channel(&id);
                (totals.requests > 0).then(|| usage_status(&totals, Some(errors), None))
            }
            UsageSource::Unavailable => c.status.as_ref().and_then(|s| s.usage.clone()),
        };
        (book.health(&id), usage)
    };
    let mut conditions = vec![if c.spec.disabled {
        condition(previous, "Ready", false, "Disabled", "The channel is disabled.".to_owned(), generation)
    } else {
        ready(previous, problems, generation)
    }];
    let rate = (health.requests > 0).then(|| 1.0 - health.failures as f64 / health.requests as f64);
    conditions.push(healthy(previous, &health, rate, generation));
    let q = |p| health.latency.quantile(p).map(duration_text);
    ChannelStatus {
        conditions,
        observed_generation: generation,
        latency: (health.latency.count() > 0).then(|| LatencyStatus { p50: q(0.5), p95: q(0.95), p99: q(0.99) }),
        success_rate: rate.map(|r| format!("{:.1}%", r * 100.0)),
        usage,
        last_probe: last_probe(c.status.as_ref().and_then(|s| s.last_probe.as_ref()), &health),
    }
}

/// `Healthy`: the active health checks when most gateways' verdict is
/// unhealthy (they keep the channel out of routing); else the success rate
/// of the last five minutes' traffic; else the checks passing; else unknown.
fn healthy(previous: &[Condition], health: &Health, rate: Option<f64>, generation: Option<i64>) -> Condition {
    let probing = health.probes.len();
    let failing = health.probes.iter().filter(|p| !p.healthy).count();
    if probing > 0 && failing * 2 > probing {
        let why = health
            .probes
            .iter()
            .filter(|p| !p.healthy)
            .max_by_key(|p| p.at)
            .and_then(|p| p.message.clone())
            .unwrap_or_default();
        return condition(
            previous,
            "Healthy",
            false,
            "ProbeFailing",
            format!(
                "The health check fails on {failing} of {probing} gateways (latest: {why}); they send the channel no traffic."
            ),
            generation,
        );
    }
    match rate {
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
        None if probing > 0 => condition(
            previous,
            "Healthy",
            true,
            "ProbeSucceeding",
            format!("The health check passes on {} of {probing} gateways.", probing - failing),
            generation,
        ),
        None => unknown(
            previous,
            "Healthy",
            "NoTraffic",
            "No upstream requests in the last 5 minutes.".to_owned(),
            generation,
        ),
    }
}

/// The latest probe any gateway reported, with how many gateways pass; or
/// `previous` while it still tells the same: as many gateways pass and some
/// gateway's latest probe has its result and message. Every probe has a new
/// time and latency, and gateways that disagree take turns being the latest,
/// so taking the latest each pass would rewrite every probed Channel's
/// status every pass for nothing a user acts on.
fn last_probe(previous: Option<&ProbeStatus>, health: &Health) -> Option<ProbeStatus> {
    let latest = health.probes.iter().max_by_key(|p| p.at)?;
    let passing = health.probes.iter().filter(|p| p.healthy).count();
    let gateways_healthy = Some(format!("{passing}/{}", health.probes.len()));
    if let Some(previous) = previous
        && previous.gateways_healthy == gateways_healthy
        && health.probes.iter().any(|p| p.succeeded == previous.succeeded && p.message == previous.message)
    {
        return Some(previous.clone());
    }
    Some(ProbeStatus {
        time: Time(Timestamp::from_millisecond(latest.at).unwrap_or(Timestamp::UNIX_EPOCH)),
        succeeded: latest.succeeded,
        latency: Some(duration_text(latest.latency_ms as f64)),
        message: latest.message.clone(),
        gateways_healthy,
    })
}

/// Usage of a key (or of a namespace, under its [`namespace_id`]) in the
/// period starting at `start`, continuing from `previous` (what status holds)
/// where the source needs it.
fn period_usage(
    ctx: &Context,
    source: &UsageSource,
    id: &Id,
    start: i64,
    previous: Option<&UsageStatus>,
) -> Option<UsageStatus> {
    match source {
        UsageSource::Reports => {
            let mut book = ctx.usage();
            if !book.has_base(id, start) {
                // Continue from status for this period (after a restart or a
                // leader change), or start the new period from zero.
                let persisted =
                    previous.filter(|u| u.since.as_ref().map(|t| t.0.as_second()) == Some(start)).map(totals_of);
                book.set_base(id, start, persisted.unwrap_or_default());
            }
            Some(usage_status(&book.key_totals(id), None, Some(start)))
        }
        UsageSource::Store(store) => {
            let Counted { mut totals, errors } = store.key(id, start);
            // Rollups keep no instants: the last use comes from the reports,
            // and status keeps it across restarts.
            let kept = previous.and_then(|u| u.last_used.as_ref()).map(|t| t.0.as_second());
            totals.last_used = kept.max(ctx.usage().key_last_used(id));
            Some(usage_status(&totals, Some(errors), Some(start)))
        }
        UsageSource::Unavailable => previous.cloned(),
    }
}

/// The last threshold announced for an object: the later of what its status
/// `recorded` and what this replica announced (status may lag in the cache).
fn last_announced(ctx: &Context, alert_id: &(Kind, Id), recorded: Option<&BudgetAlertStatus>) -> Option<Announced> {
    let recorded = recorded.map(|a| (a.threshold, a.period_start.0.as_second()));
    alerts::latest(recorded, ctx.alerts().get(alert_id).copied())
}

/// An announcement as status records it.
fn alert_status((threshold, start): Announced) -> BudgetAlertStatus {
    BudgetAlertStatus { threshold, period_start: time(start) }
}

/// What a budget adds to an object's status.
struct BudgetView {
    /// `BudgetExceeded`.
    condition: Condition,
    /// Thresholds newly crossed, to announce once status records them.
    fire: Vec<Alert>,
    /// The announcement status records (the latest of this period).
    alert: Option<BudgetAlertStatus>,
}

/// The budget part of a status: the `BudgetExceeded` condition and the
/// threshold crossings of `spent` nano-dollars in the period starting at
/// `start`, given the last announcement (`recorded` in status, or known to
/// this replica under `alert_id`).
#[allow(clippy::too_many_arguments, reason = "one call per kind; a struct would only rename them")]
fn budget_view(
    ctx: &Context,
    source: &UsageSource,
    alert_id: &(Kind, Id),
    budget: &Budget,
    spent: u64,
    start: i64,
    previous: &[Condition],
    recorded: Option<&BudgetAlertStatus>,
    generation: Option<i64>,
) -> BudgetView {
    let announced = last_announced(ctx, alert_id, recorded);
    let mut alert = announced.filter(|(_, s)| *s == start);
    let limit = budget.amount.parse::<Usd>().unwrap_or_default();
    let message = format!("Spent {} of {limit} this period.", Usd(spent));
    let condition = if spent >= limit.0 && limit.0 > 0 {
        condition(previous, "BudgetExceeded", true, "OverBudget", message, generation)
    } else {
        condition(previous, "BudgetExceeded", false, "WithinBudget", message, generation)
    };
    let mut fire = Vec::new();
    // Unknown usage (the store away) crosses nothing.
    if !matches!(source, UsageSource::Unavailable) {
        fire = alerts::crossed(&budget.thresholds(), spent, limit.0, start, announced)
            .into_iter()
            .map(|threshold| Alert { threshold, spent, budget: limit.0, period: budget.period, period_start: start })
            .collect();
        if let Some(top) = fire.last() {
            alert = Some((top.threshold, start));
        }
    }
    BudgetView { condition, fire, alert: alert.map(alert_status) }
}

/// A key's desired status and the budget alerts to announce once it is written.
fn desired_key(
    ctx: &Context,
    source: &UsageSource,
    secrets: &SecretIndex,
    k: &ApiKey,
    problems: &[&Problem],
    now: i64,
) -> (ApiKeyStatus, Vec<Alert>) {
    let previous_status = k.status.clone().unwrap_or_default();
    let previous = previous_status.conditions.as_slice();
    let generation = k.meta().generation;
    let id: Id = (k.namespace().unwrap_or_default(), k.name_any());
    let start = period_start(k.spec.budget.as_ref().map(|b| b.period), now);
    let usage = period_usage(ctx, source, &id, start, previous_status.usage.as_ref());
    let spent = usage.as_ref().map_or(0, |u| totals_of(u).cost);
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
    let alert_id = (Kind::ApiKey, id);
    let recorded = previous_status.budget_alert.as_ref();
    let (fire, budget_alert) = match &k.spec.budget {
        Some(budget) => {
            let view = budget_view(ctx, source, &alert_id, budget, spent, start, previous, recorded, generation);
            conditions.push(view.condition);
            (view.fire, view.alert)
        }
        // Without a budget, status keeps this period's announcement, if any.
        None => (Vec::new(), last_announced(ctx, &alert_id, recorded).filter(|(_, s)| *s == start).map(alert_status)),
    };
    let status = ApiKeyStatus {
        conditions,
        observed_generation: generation,
        key_prefix: key_prefix(secrets, k),
        usage,
        budget_alert,
    };
    (status, fire)
}

/// A NamespacePolicy's desired status (its namespace's usage in the budget
/// period, what is left, `BudgetExceeded`) and the alerts to announce.
fn desired_namespace_policy(
    ctx: &Context,
    source: &UsageSource,
    p: &NamespacePolicy,
    problems: &[&Problem],
    now: i64,
) -> (NamespacePolicyStatus, Vec<Alert>) {
    let previous_status = p.status.clone().unwrap_or_default();
    let previous = previous_status.conditions.as_slice();
    let generation = p.meta().generation;
    let namespace = p.namespace().unwrap_or_default();
    let start = period_start(p.spec.budget.as_ref().map(|b| b.period), now);
    let usage = period_usage(ctx, source, &namespace_id(&namespace), start, previous_status.usage.as_ref());
    let spent = usage.as_ref().map_or(0, |u| totals_of(u).cost);
    let mut conditions = vec![ready(previous, problems, generation)];
    let mut status = NamespacePolicyStatus { observed_generation: generation, usage, ..Default::default() };
    let mut fire = Vec::new();
    if let Some(budget) = &p.spec.budget {
        let alert_id = (Kind::NamespacePolicy, (namespace, p.name_any()));
        let recorded = previous_status.budget_alert.as_ref();
        let view = budget_view(ctx, source, &alert_id, budget, spent, start, previous, recorded, generation);
        conditions.push(view.condition);
        let limit = budget.amount.parse::<Usd>().unwrap_or_default();
        status.remaining = Some(Usd(limit.0.saturating_sub(spent)).to_string());
        status.budget_alert = view.alert;
        fire = view.fire;
    }
    status.conditions = conditions;
    (status, fire)
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

/// Writes `desired` when it differs from `current`, and announces
/// transitions. Returns whether status now holds `desired`.
async fn apply_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    desired: S,
    conditions: impl Fn(&S) -> &[Condition],
) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(&desired) {
        return true;
    }
    let (Some(ns), name) = (obj.namespace(), obj.name_any()) else { return false };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    ctx.metrics.status_writes.inc();
    if let Err(e) = api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await {
        ctx.metrics.error(ErrorCategory::status_write);
        tracing::warn!(kind = %K::kind(&()), namespace = %ns, name = %name, error = %e, "status write failed");
        return false;
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
    true
}

/// Announces `fire` once status records it (`written`, with `announced` the
/// announcement it holds): a failed write retries next pass instead of
/// announcing twice.
async fn announce_written<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    kind: Kind,
    obj: &K,
    written: bool,
    announced: Option<Announced>,
    fire: &[Alert],
) {
    if !written || fire.is_empty() {
        return;
    }
    if let Some(a) = announced {
        let id = (obj.meta().namespace.clone().unwrap_or_default(), obj.meta().name.clone().unwrap_or_default());
        ctx.alerts().insert((kind, id), a);
    }
    alerts::announce(ctx, obj, fire).await;
}

/// The usage source of one pass: the store's totals for every period start
/// the keys need, or the reports when there is no store.
async fn usage_source(
    ctx: &Context,
    keys: &[Arc<ApiKey>],
    namespaces: &[Arc<NamespacePolicy>],
    now: i64,
) -> UsageSource {
    let Some(reader) = &ctx.store else { return UsageSource::Reports };
    let periods = keys
        .iter()
        .map(|k| k.spec.budget.as_ref())
        .chain(namespaces.iter().map(|p| p.spec.budget.as_ref()))
        .map(|b| b.map(|b| b.period));
    let starts: BTreeSet<i64> = periods.map(|p| period_start(p, now)).collect();
    match reader.read(&starts, now).await {
        Ok(totals) => UsageSource::Store(totals),
        Err(e) => {
            ctx.metrics.error(ErrorCategory::store);
            tracing::warn!(error = %e, "usage store unavailable; status keeps its last usage");
            UsageSource::Unavailable
        }
    }
}

/// Brings every object's status up to date (leader only).
pub async fn write_all(ctx: &Arc<Context>, secrets: &SecretIndex) {
    let published = ctx.published.borrow().clone();
    let live = ctx.usage().prune(Instant::now(), ctx.gateway_timeout);
    // No gateway counts as one, as in the snapshot: a pass before the first
    // report (or after the last gateway left) then compiles nothing.
    let live_u32 = u32::try_from(live).unwrap_or(u32::MAX).max(1);
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
    let started = Instant::now();
    let keys = ctx.stores.api_keys.state();
    let namespaces = ctx.stores.namespace_policies.state();
    let source = usage_source(ctx, &keys, &namespaces, now).await;
    // Desired states first (no awaits, the book's lock held briefly per
    // object), then only the changed ones are written, concurrently.
    let channels: Vec<_> = ctx
        .stores
        .channels
        .state()
        .into_iter()
        .map(|c| {
            let desired = desired_channel(ctx, &source, &c, &problems_of(Kind::Channel, c.meta()));
            (c, desired)
        })
        .filter(|(c, desired)| c.status.as_ref() != Some(desired))
        .collect();
    futures_util::stream::iter(channels)
        .map(|(c, desired)| async move {
            apply_status(ctx, c.as_ref(), c.status.as_ref(), desired, |s: &ChannelStatus| s.conditions.as_slice()).await
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .for_each(|_| async {})
        .await;
    let mut gauges = BudgetGauges::default();
    let keys: Vec<_> = keys
        .into_iter()
        .map(|k| {
            let (desired, fire) = desired_key(ctx, &source, secrets, &k, &problems_of(Kind::ApiKey, k.meta()), now);
            if let Some(budget) = &k.spec.budget {
                let spent = desired.usage.as_ref().map_or(0, |u| totals_of(u).cost);
                gauges.key(&k.namespace().unwrap_or_default(), usd_nanos(&budget.amount), spent);
            }
            (k, desired, fire)
        })
        .filter(|(k, desired, _)| k.status.as_ref() != Some(desired))
        .collect();
    futures_util::stream::iter(keys)
        .map(|(k, desired, fire)| async move {
            let announced = desired.budget_alert.as_ref().map(|a| (a.threshold, a.period_start.0.as_second()));
            let written =
                apply_status(ctx, k.as_ref(), k.status.as_ref(), desired, |s: &ApiKeyStatus| s.conditions.as_slice())
                    .await;
            announce_written(ctx, Kind::ApiKey, k.as_ref(), written, announced, &fire).await;
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .for_each(|_| async {})
        .await;
    for p in namespaces {
        let (desired, fire) =
            desired_namespace_policy(ctx, &source, &p, &problems_of(Kind::NamespacePolicy, p.meta()), now);
        if let Some(budget) = &p.spec.budget {
            let spent = desired.usage.as_ref().map_or(0, |u| totals_of(u).cost);
            gauges.namespace(&p.namespace().unwrap_or_default(), usd_nanos(&budget.amount), spent);
        }
        let announced = desired.budget_alert.as_ref().map(|a| (a.threshold, a.period_start.0.as_second()));
        let written = apply_status(ctx, p.as_ref(), p.status.as_ref(), desired, |s: &NamespacePolicyStatus| {
            s.conditions.as_slice()
        })
        .await;
        announce_written(ctx, Kind::NamespacePolicy, p.as_ref(), written, announced, &fire).await;
    }
    for p in ctx.stores.policies.state() {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        let resolved = published.resolved.get(&key).cloned().unwrap_or_default();
        let desired = desired_policy(&p, &problems_of(Kind::RoutingPolicy, p.meta()), resolved);
        apply_status(ctx, p.as_ref(), p.status.as_ref(), desired, |s: &RoutingPolicyStatus| s.conditions.as_slice())
            .await;
    }
    gauges.publish(&ctx.metrics);
    ctx.metrics.status_pass_seconds.observe(started.elapsed().as_secs_f64());
}

/// A budget's amount in nano-dollars (0 when it does not parse: the schema
/// rejects that before it gets here).
fn usd_nanos(amount: &str) -> u64 {
    amount.parse::<Usd>().unwrap_or_default().0
}

#[cfg(test)]
mod tests {
    use weaver_crds::protocol::ProbeReport;

    use super::*;

    fn probe(at: i64, healthy: bool) -> ProbeReport {
        ProbeReport {
            at,
            succeeded: healthy,
            healthy,
            latency_ms: 12,
            message: (!healthy).then(|| "500 upstream_error".to_owned()),
        }
    }

    fn reason(health: &Health) -> (String, String) {
        let rate = (health.requests > 0).then(|| 1.0 - health.failures as f64 / health.requests as f64);
        let c = healthy(&[], health, rate, None);
        (c.status, c.reason)
    }

    #[test]
    fn health_checks_failing_on_most_gateways_make_the_channel_unhealthy() {
        let traffic = Health { requests: 100, failures: 0, ..Health::default() };
        assert_eq!(reason(&traffic), ("True".into(), "UpstreamAnswering".into()));
        let failing = Health { probes: vec![probe(1, false), probe(2, false), probe(3, true)], ..traffic.clone() };
        assert_eq!(reason(&failing), ("False".into(), "ProbeFailing".into()), "the checks win over old traffic");
        let one_of_three =
            Health { probes: vec![probe(1, false), probe(2, true), probe(3, true)], ..Health::default() };
        assert_eq!(reason(&one_of_three), ("True".into(), "ProbeSucceeding".into()));
        assert_eq!(reason(&Health::default()), ("Unknown".into(), "NoTraffic".into()));
        let last = last_probe(None, &failing);
        assert_eq!(last.as_ref().and_then(|p| p.gateways_healthy.as_deref()), Some("1/3"));
        assert_eq!(last.map(|p| (p.succeeded, p.latency)), Some((true, Some("12ms".to_owned()))));
    }

    #[test]
    fn last_probe_changes_only_when_its_result_does() {
        let health = |probes| Health { probes, ..Health::default() };
        let first = last_probe(None, &health(vec![probe(1_000, true), probe(1_500, true)]));
        let shown = first.as_ref().map(|p| p.time.clone());
        // Later passing probes (new times, new latencies): the same status.
        let mut later = vec![probe(9_000, true), probe(9_500, true)];
        later[1].latency_ms = 340;
        assert_eq!(last_probe(first.as_ref(), &health(later)), first, "a steady probe rewrote lastProbe");
        // Gateways that disagree take turns being the latest: no flapping.
        let split = last_probe(first.as_ref(), &health(vec![probe(10_000, false), probe(10_500, true)]));
        assert_eq!(split.as_ref().and_then(|p| p.gateways_healthy.as_deref()), Some("1/2"));
        let turned = last_probe(split.as_ref(), &health(vec![probe(11_000, false), probe(10_500, true)]));
        assert_eq!(turned, split, "the other gateway's turn rewrote lastProbe");
        // A new result is shown with its own time.
        let failing = last_probe(turned.as_ref(), &health(vec![probe(12_000, false), probe(12_500, false)]));
        assert_eq!(
            failing.as_ref().map(|p| (p.succeeded, p.message.as_deref())),
            Some((false, Some("500 upstream_error")))
        );
        assert_ne!(failing.map(|p| p.time), shown);
    }
}
