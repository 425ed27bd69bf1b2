//! Channels and route tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::policies::compile_policy;
use super::{Kind, ProblemReason, Problems, SecretIndex, matches_any, namespace_of, sorted};
use crate::channel::Channel;
use crate::common::parse_duration;
use crate::money::{Prices, Usd};
use crate::routing_policy::RoutingPolicy;
use crate::snapshot::{
    Candidate, ChannelLimits, ChannelSnapshot, Credential, HealthCheckSnapshot, ModelSnapshot, PolicySnapshot, Route,
    RouteTable, TimeoutsSnapshot,
};

/// A channel that made it into the snapshot, with what routing needs to know.
pub(super) struct UsableChannel<'a> {
    pub snapshot: ChannelSnapshot,
    labels: &'a BTreeMap<String, String>,
    weight: u32,
    priority: i32,
}

pub(super) fn compile_channels<'a>(
    channels: &'a [Channel],
    secrets: &SecretIndex<'_>,
    problems: &mut Problems,
) -> Vec<UsableChannel<'a>> {
    sorted(channels)
        .into_iter()
        .filter(|c| !c.spec.disabled)
        .filter_map(|c| match compile_channel(c, secrets, problems) {
            Ok(snapshot) => {
                Some(UsableChannel { snapshot, labels: c.labels(), weight: c.spec.weight, priority: c.spec.priority })
            }
            Err((reason, message)) => {
                problems.push(Kind::Channel, c, reason, message);
                None
            }
        })
        .collect()
}

fn compile_channel(
    c: &Channel,
    secrets: &SecretIndex<'_>,
    problems: &mut Problems,
) -> Result<ChannelSnapshot, (ProblemReason, String)> {
    let spec = &c.spec;
    let namespace = namespace_of(c);
    let invalid = |m: String| (ProblemReason::InvalidField, m);
    if !spec.provider.is_supported() {
        return Err((
            ProblemReason::ProviderNotSupported,
            format!("provider {} is not supported by this gateway version yet", spec.provider.as_str()),
        ));
    }
    let base_url = spec
        .base_url
        .as_deref()
        .or(spec.provider.default_base_url())
        .ok_or_else(|| invalid(format!("baseUrl is required for provider {}", spec.provider.as_str())))?
        .trim_end_matches('/')
        .to_owned();
    let credential = match &spec.credentials {
        Some(creds) => Some(Credential(secrets.value(namespace, &creds.secret_ref)?)),
        None if spec.provider.requires_credentials() => {
            return Err((
                ProblemReason::MissingCredentials,
                format!("provider {} needs credentials.secretRef", spec.provider.as_str()),
            ));
        }
        None => None,
    };
    let timeouts = match &spec.timeouts {
        None => TimeoutsSnapshot::default(),
        Some(t) => {
            let ms = |v: &Option<String>, default: u64, field: &str| match v {
                None => Ok(default),
                Some(text) => parse_duration(text)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .map_err(|e| invalid(format!("timeouts.{field}: {e}"))),
            };
            let d = TimeoutsSnapshot::default();
            TimeoutsSnapshot {
                connect_ms: ms(&t.connect, d.connect_ms, "connect")?,
                first_byte_ms: ms(&t.first_byte, d.first_byte_ms, "firstByte")?,
                total_ms: ms(&t.total, d.total_ms, "total")?,
            }
        }
    };
    let limits = ChannelLimits {
        max_concurrency: spec.max_concurrency.filter(|n| *n > 0),
        requests_per_minute: spec.requests_per_minute.filter(|n| *n > 0),
        queue_timeout_ms: match &spec.queue_timeout {
            Some(d) => d.millis().map_err(|e| invalid(format!("queueTimeout: {e}")))?,
            None => ChannelLimits::default().queue_timeout_ms,
        },
    };
    for (name, value) in &spec.headers {
        if !is_header_name(name) || value.chars().any(|ch| ch.is_control()) {
            return Err(invalid(format!("headers: {name:?} is not a valid HTTP header")));
        }
    }
    let mut models: Vec<ModelSnapshot> = Vec::with_capacity(spec.models.len());
    for m in &spec.models {
        if models.iter().any(|seen| seen.name == m.name) {
            problems.push(
                Kind::Channel,
                c,
                ProblemReason::DuplicateModel,
                format!("model {:?} is listed more than once; the first entry is used", m.name),
            );
            continue;
        }
        let price = |v: &Option<String>, field: &str| -> Result<Option<u64>, (ProblemReason, String)> {
            v.as_deref()
                .map(|text| text.parse::<Usd>().map(|u| u.0))
                .transpose()
                .map_err(|e| invalid(format!("models[{}].pricing.{field}: {e}", m.name)))
        };
        let pricing = m.pricing.clone().unwrap_or_default();
        let input = price(&pricing.input_per_million, "inputPerMillion")?.unwrap_or(0);
        let prices = Prices {
            input,
            output: price(&pricing.output_per_million, "outputPerMillion")?.unwrap_or(0),
            cached_input: price(&pricing.cached_input_per_million, "cachedInputPerMillion")?.unwrap_or(input),
            cache_write_input: price(&pricing.cache_write_input_per_million, "cacheWriteInputPerMillion")?,
        };
        models.push(ModelSnapshot {
            name: m.name.clone(),
            upstream: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
            prices,
        });
    }
    let health_check = match &spec.health_check {
        None => None,
        Some(h) => {
            let ms = |d: &Option<crate::common::DurationString>, default: u64, field: &str| match d {
                None => Ok(default),
                Some(d) => match d.millis() {
                    Ok(0) => Err(invalid(format!("healthCheck.{field} must be longer than zero"))),
                    Ok(ms) => Ok(ms),
                    Err(e) => Err(invalid(format!("healthCheck.{field}: {e}"))),
                },
            };
            let model = match &h.model {
                None => 0,
                Some(name) => models
                    .iter()
                    .position(|m| &m.name == name)
                    .ok_or_else(|| invalid(format!("healthCheck.model {name:?} is not one of the channel's models")))?,
            };
            if models.is_empty() {
                return Err(invalid("healthCheck needs a model to probe".to_owned()));
            }
            Some(HealthCheckSnapshot {
                interval_ms: ms(&h.interval, HealthCheckSnapshot::DEFAULT_INTERVAL_MS, "interval")?,
                timeout_ms: ms(&h.timeout, HealthCheckSnapshot::DEFAULT_TIMEOUT_MS, "timeout")?,
                model: u32::try_from(model).unwrap_or(0),
                prompt: h.prompt.clone().unwrap_or_else(|| HealthCheckSnapshot::DEFAULT_PROMPT.to_owned()),
                max_tokens: h.max_tokens.unwrap_or(HealthCheckSnapshot::DEFAULT_MAX_TOKENS).max(1),
                unhealthy_threshold: h
                    .unhealthy_threshold
                    .unwrap_or(HealthCheckSnapshot::DEFAULT_UNHEALTHY_THRESHOLD)
                    .max(1),
                healthy_threshold: h.healthy_threshold.unwrap_or(HealthCheckSnapshot::DEFAULT_HEALTHY_THRESHOLD).max(1),
            })
        }
    };
    Ok(ChannelSnapshot {
        namespace: namespace.to_owned(),
        name: c.name_any(),
        provider: spec.provider,
        base_url,
        credential,
        headers: spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        models,
        timeouts,
        azure_api_version: spec.azure.as_ref().and_then(|a| a.api_version.clone()),
        stream_usage: spec.stream_usage.unwrap_or(true),
        limits,
        health_check,
    })
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

type Routes = BTreeMap<String, Route>;

/// Route tables: one per namespace for keys without a policy, and one per
/// (namespace, policy) that some key names.
pub(super) struct RouteTables {
    tables: Vec<RouteTable>,
    index: HashMap<(String, Option<String>), u32>,
    /// Each namespace's default routes.
    defaults: BTreeMap<String, Routes>,
    /// Each policy's own routes, by (namespace, name).
    policies: BTreeMap<(String, String), Routes>,
    /// Each policy's model globs.
    globs: BTreeMap<(String, String), Vec<String>>,
    /// Each policy's index into `settings`.
    policy_index: BTreeMap<(String, String), u32>,
    /// The snapshot's policies: every RoutingPolicy, then each namespace's defaults.
    settings: Vec<PolicySnapshot>,
    /// Each policy's fallback models, by index into `settings`.
    fallbacks: Vec<Vec<String>>,
}

/// The candidates a policy gives a model it matches: its own channels only,
/// and none when none of them can serve it right now. Falling back to other
/// channels of the namespace would silently break what the policy is for (a
/// region, a price); the gateway answers 503 instead.
fn claimed(policy: &Routes, model: &str, index: u32) -> Route {
    policy.get(model).cloned().unwrap_or(Route { candidates: Vec::new(), policy: index })
}

fn index_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl RouteTables {
    pub(super) fn new(channels: &[UsableChannel<'_>], policies: &[RoutingPolicy], problems: &mut Problems) -> Self {
        let mut settings = Vec::new();
        let mut fallbacks = Vec::new();
        let mut by_namespace: BTreeMap<&str, BTreeMap<String, Vec<Candidate>>> = BTreeMap::new();
        for (idx, ch) in channels.iter().enumerate() {
            let routes = by_namespace.entry(ch.snapshot.namespace.as_str()).or_default();
            for (midx, m) in ch.snapshot.models.iter().enumerate() {
                routes.entry(m.name.clone()).or_default().push(candidate(idx, midx, ch.weight, ch.priority));
            }
        }
        let mut policy_routes = BTreeMap::new();
        let mut globs = BTreeMap::new();
        let mut policy_index = BTreeMap::new();
        for p in sorted(policies) {
            let id = (namespace_of(p).to_owned(), p.name_any());
            let index = index_of(settings.len());
            settings.push(compile_policy(p, problems));
            let served = by_namespace.get(id.0.as_str());
            let mut own = Vec::new();
            for f in &p.spec.fallback {
                if !served.is_some_and(|routes| routes.contains_key(&f.model)) {
                    problems.push(
                        Kind::RoutingPolicy,
                        p,
                        ProblemReason::NoChannelForModel,
                        format!("fallback model {:?} is served by no channel of the namespace", f.model),
                    );
                }
                if !own.contains(&f.model) {
                    own.push(f.model.clone());
                }
            }
            fallbacks.push(own);
            let routes = policy_candidates(p, channels, problems)
                .into_iter()
                .map(|(model, candidates)| (model, Route { candidates, policy: index }))
                .collect();
            policy_routes.insert(id.clone(), routes);
            policy_index.insert(id.clone(), index);
            globs.insert(id, p.spec.models.clone());
        }
        // A namespace's policies (in name order, first match wins) take over the
        // models they match; other models go to every channel serving them.
        let mut defaults: BTreeMap<String, Routes> = BTreeMap::new();
        for (ns, routes) in by_namespace {
            let index = index_of(settings.len());
            settings.push(PolicySnapshot::defaults(ns));
            fallbacks.push(Vec::new());
            let mut table = Routes::new();
            for (model, candidates) in routes {
                let owner = globs.iter().find(|((pns, _), g)| pns == ns && matches_any(g, &model));
                let route = match owner {
                    Some((id, _)) => claimed(&policy_routes[id], &model, policy_index[id]),
                    None => Route { candidates, policy: index },
                };
                table.insert(model, route);
            }
            defaults.insert(ns.to_owned(), table);
        }
        Self {
            tables: Vec::new(),
            index: HashMap::new(),
            defaults,
            policies: policy_routes,
            globs,
            policy_index,
            settings,
            fallbacks,
        }
    }

    /// Whether the namespace has a policy of that name.
    pub(super) fn has_policy(&self, namespace: &str, name: &str) -> bool {
        self.policies.contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// The table for keys of `namespace` that name `policy` (or none).
    pub(super) fn table_for(&mut self, namespace: &str, policy: Option<&str>) -> u32 {
        let id = (namespace.to_owned(), policy.map(str::to_owned));
        if let Some(idx) = self.index.get(&id) {
            return *idx;
        }
        let mut routes = self.defaults.get(namespace).cloned().unwrap_or_default();
        if let Some(p) = policy {
            let id = (namespace.to_owned(), p.to_owned());
            if let (Some(own), Some(globs), Some(&index)) =
                (self.policies.get(&id), self.globs.get(&id), self.policy_index.get(&id))
            {
                for (model, route) in routes.iter_mut() {
                    if matches_any(globs, model) {
                        *route = claimed(own, model, index);
                    }
                }
                for (model, route) in own {
                    routes.entry(model.clone()).or_insert_with(|| route.clone());
                }
            }
        }
        let routes = self.with_fallbacks(routes);
        let idx = index_of(self.tables.len());
        self.tables.push(RouteTable { policy: policy.map(|p| format!("{namespace}/{p}")), routes });
        self.index.insert(id, idx);
        idx
    }

    /// Each route in tier order: its own candidates by priority, then those
    /// of its policy's fallback models (what this table routes them to, not
    /// their own fallbacks), each by priority.
    fn with_fallbacks(&self, primary: Routes) -> Routes {
        let mut out = primary.clone();
        for (model, route) in out.iter_mut() {
            let fallbacks = self.fallbacks.get(route.policy as usize).map(Vec::as_slice).unwrap_or_default();
            for (n, other) in fallbacks.iter().enumerate().filter(|(_, m)| *m != model) {
                let Some(theirs) = primary.get(other) else { continue };
                let level = u8::try_from(n + 1).unwrap_or(u8::MAX);
                route.candidates.extend(theirs.candidates.iter().map(|c| Candidate { fallback: level, ..*c }));
            }
            route.candidates.sort_by_key(|c| (c.fallback, c.priority));
        }
        out
    }

    /// The channel names each policy routes to.
    pub(super) fn resolved_policies(&self, channels: &[UsableChannel<'_>]) -> BTreeMap<(String, String), Vec<String>> {
        self.policies
            .iter()
            .map(|(id, routes)| {
                let names: BTreeSet<String> = routes
                    .values()
                    .flat_map(|r| &r.candidates)
                    .filter_map(|c| channels.get(c.channel as usize))
                    .map(|c| c.snapshot.name.clone())
                    .collect();
                (id.clone(), names.into_iter().collect())
            })
            .collect()
    }

    /// The route tables and the policies they point into.
    pub(super) fn into_parts(self) -> (Vec<RouteTable>, Vec<PolicySnapshot>) {
        (self.tables, self.settings)
    }
}

fn candidate(channel: usize, model: usize, weight: u32, priority: i32) -> Candidate {
    Candidate { channel: index_of(channel), model: index_of(model), weight, priority, fallback: 0 }
}

/// The models a policy routes and, for each, the channels it resolves to.
fn policy_candidates(
    p: &RoutingPolicy,
    channels: &[UsableChannel<'_>],
    problems: &mut Problems,
) -> BTreeMap<String, Vec<Candidate>> {
    let ns = namespace_of(p);
    let in_ns = || channels.iter().enumerate().filter(|(_, c)| c.snapshot.namespace == ns);
    // channel index -> the entry's weight and priority overrides
    let mut chosen: BTreeMap<usize, (Option<u32>, Option<i32>)> = BTreeMap::new();
    for r in &p.spec.channels {
        match (&r.name, &r.selector) {
            (Some(name), _) => match in_ns().find(|(_, c)| &c.snapshot.name == name) {
                Some((idx, _)) => {
                    chosen.insert(idx, (r.weight, r.priority));
                }
                None => problems.push(
                    Kind::RoutingPolicy,
                    p,
                    ProblemReason::ChannelNotFound,
                    format!("channel {ns}/{name} does not exist or is not usable"),
                ),
            },
            (None, Some(selector)) => match Selector::try_from(selector.clone()) {
                Ok(sel) => {
                    for (idx, _) in in_ns().filter(|(_, c)| sel.matches(c.labels)) {
                        chosen.entry(idx).or_insert((r.weight, r.priority));
                    }
                }
                Err(e) => {
                    problems.push(Kind::RoutingPolicy, p, ProblemReason::InvalidSelector, format!("selector: {e}"))
                }
            },
            (None, None) => problems.push(
                Kind::RoutingPolicy,
                p,
                ProblemReason::InvalidField,
                "a channel entry needs a name or a selector".to_owned(),
            ),
        }
    }
    let mut routes = BTreeMap::<String, Vec<Candidate>>::new();
    for (&idx, &(weight, priority)) in &chosen {
        let ch = &channels[idx];
        for (midx, m) in ch.snapshot.models.iter().enumerate() {
            if matches_any(&p.spec.models, &m.name) {
                routes.entry(m.name.clone()).or_default().push(candidate(
                    idx,
                    midx,
                    weight.unwrap_or(ch.weight),
                    priority.unwrap_or(ch.priority),
                ));
            }
        }
    }
    let served: BTreeSet<&str> = routes.keys().map(String::as_str).collect();
    for glob in &p.spec.models {
        if !served.iter().any(|m| wildmatch::WildMatch::new(glob).matches(m)) {
            problems.push(
                Kind::RoutingPolicy,
                p,
                ProblemReason::NoChannelForModel,
                format!("no channel of this policy serves a model matching {glob:?}"),
            );
        }
    }
    routes
}
