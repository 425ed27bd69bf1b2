//! The hot state: a snapshot plus everything derived from it that requests
//! need (digest map, compiled globs, provider adapters with their URIs and
//! headers, metric labels, links to the registry). Built once per snapshot,
//! swapped atomically, loaded once per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use prometheus_client::metrics::counter::Counter;
use weaver_crds::money::Prices;
use weaver_crds::snapshot::{BudgetSnapshot, Candidate, KeySnapshot, Snapshot};
use wildmatch::WildMatch;

use super::ClientPool;
use super::budget::BudgetRef;
use super::registry::{ChannelState, Id, KeyState, NamespaceState, Registry};
use crate::limits::{DEFAULT_OUTPUT_TOKENS, KeyLimits};
use crate::metering::{Label, Metrics, RouteSeries};
use crate::providers::openai::ModelRename;
use crate::providers::{Adapter, Operation};
use crate::routing::metrics::AttemptLabels;
use crate::routing::{Caps, Member, Policy, Route, channel_key};

/// SHA-256 of a presented key.
pub(crate) type Digest = [u8; 32];

/// Hashes a [`Digest`] by its first eight bytes. A SHA-256 is uniform
/// already, and the map's entries are fixed when the snapshot is built,
/// so what a client presents cannot crowd a bucket; SipHash over the 32
/// bytes cost ~270 instructions a request (callgrind).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// Takes the first eight bytes of each write: the array's length, then
    /// its bytes.
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_ne_bytes(word);
    }
}

pub(crate) struct Runtime {
    pub snapshot: Snapshot,
    /// Digest -> (key index, unix second the digest stops working).
    by_digest: HashMap<Digest, (u32, Option<i64>), std::hash::BuildHasherDefault<DigestHasher>>,
    pub keys: Vec<KeyRuntime>,
    pub channels: Vec<ChannelRuntime>,
    /// Namespaces with a budget.
    pub namespaces: Vec<NamespaceRuntime>,
    /// Per route table of the snapshot: model -> route.
    routes: Vec<BTreeMap<String, Route>>,
    /// The identities of the snapshot's policies (namespace, name; name ""
    /// for a namespace's defaults), whose retry budgets are in the registry.
    pub policy_ids: Vec<Id>,
}

pub(crate) struct KeyRuntime {
    allowed: Vec<WildMatch>,
    /// This replica's share of the key's rate limits; `None` without any.
    pub limits: Option<KeyLimits>,
    pub namespace: Label,
    pub name: Label,
    pub state: Arc<KeyState>,
    pub budget: Option<BudgetSnapshot>,
    /// Index into the runtime's `namespaces` when the key's namespace has a budget.
    pub namespace_budget: Option<u32>,
    /// Output tokens a budget reserves for a request without an output limit:
    /// the key's budget's `reserveOutputTokens`, else its namespace's, else
    /// [`DEFAULT_OUTPUT_TOKENS`].
    pub reserve_output_tokens: u64,
}

impl KeyRuntime {
    /// The key's own budget.
    pub fn own_budget(&self) -> Option<BudgetRef<'_>> {
        let budget = self.budget.as_ref()?;
        Some(BudgetRef { state: &self.state.budget, budget, namespace: &self.namespace, key: Some(&self.name) })
    }
}

/// A namespace whose keys share a budget (its NamespacePolicy's).
pub(crate) struct NamespaceRuntime {
    pub budget: BudgetSnapshot,
    pub state: Arc<NamespaceState>,
}

impl NamespaceRuntime {
    pub fn budget_ref(&self) -> BudgetRef<'_> {
        BudgetRef { state: &self.state.budget, budget: &self.budget, namespace: &self.state.id, key: None }
    }
}

pub(crate) struct ChannelRuntime {
    /// The channel's name.
    pub label: Label,
    pub namespace: Label,
    /// The name as the `x-weaver-channel` header's value.
    pub header: HeaderValue,
    /// `weaver_gateway_upstream_attempts_total{result="ok"}` of this channel,
    /// looked up once per snapshot.
    pub attempts_ok: Counter,
    /// This replica's share of the channel's caps.
    pub caps: Caps,
    pub adapter: Adapter,
    /// `gen_ai_provider_name` of the channel's provider.
    pub gen_ai_provider: &'static str,
    pub models: Vec<ModelRuntime>,
    pub first_byte: Duration,
    pub total: Duration,
    /// Ask for stream usage (unless the upstream refused it, see `state`).
    pub stream_usage: bool,
    pub state: Arc<ChannelState>,
}

pub(crate) struct ModelRuntime {
    /// The public name.
    pub label: Label,
    /// The name sent upstream.
    pub upstream: Label,
    pub prices: Prices,
    /// Set when answers must be renamed from the upstream name to the public one.
    pub rename: Option<Arc<ModelRename>>,
    /// The upstream name as a JSON string, for a request that falls back
    /// from another model to this one.
    pub upstream_json: Bytes,
    /// Chat completions and Messages (one URL for both in either format).
    chat: Option<Uri>,
    /// Streamed chat (and Messages and Responses translated to it), where it
    /// has its own URL (Gemini).
    chat_stream: Option<Uri>,
    embeddings: Option<Uri>,
    count_tokens: Option<Uri>,
    /// The Responses API, or chat completions where it is translated.
    responses: Option<Uri>,
    /// This route's metric series, kept for the runtime's life.
    pub series: RouteSeries,
}

impl ModelRuntime {
    /// The URL of an operation, streamed or not.
    pub fn uri_for(&self, operation: Operation, stream: bool) -> Option<&Uri> {
        match (stream, &self.chat_stream) {
            (true, Some(uri)) if operation.streams() => Some(uri),
            _ => self.uri(operation),
        }
    }

    pub fn uri(&self, operation: Operation) -> Option<&Uri> {
        match operation {
            Operation::Chat | Operation::Messages => self.chat.as_ref(),
            Operation::Embeddings => self.embeddings.as_ref(),
            Operation::CountTokens => self.count_tokens.as_ref(),
            Operation::Responses => self.responses.as_ref(),
        }
    }
}

impl Runtime {
    /// Derives the runtime; problems that only show here (a base URL that is
    /// not a valid URI) are returned as messages and the model is not routed to.
    pub fn build(snapshot: Snapshot, pool: &ClientPool, registry: &Registry, metrics: &Metrics) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let namespaces: Vec<NamespaceRuntime> = snapshot
            .namespaces
            .iter()
            .filter_map(|n| {
                Some(NamespaceRuntime { budget: n.budget?, state: registry.namespace(&Label::new(&n.namespace)) })
            })
            .collect();
        let namespace_index: HashMap<&str, u32> = namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| (n.state.id.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let mut by_digest = HashMap::with_capacity_and_hasher(snapshot.keys.len(), Default::default());
        let mut keys = Vec::with_capacity(snapshot.keys.len());
        for (idx, k) in snapshot.keys.iter().enumerate() {
            let idx = u32::try_from(idx).unwrap_or(u32::MAX);
            for d in &k.digests {
                match hex::decode(&d.sha256).ok().and_then(|v| Digest::try_from(v).ok()) {
                    Some(digest) => {
                        by_digest.insert(digest, (idx, d.expires_at));
                    }
                    None => warnings.push(format!("ApiKey {}/{}: malformed key digest", k.namespace, k.name)),
                }
            }
            let id = (Label::new(&k.namespace), Label::new(&k.name));
            let namespace_budget = namespace_index.get(k.namespace.as_str()).copied();
            let shared = namespace_budget.map(|i| &namespaces[i as usize].budget);
            let reserve_output_tokens = [k.budget.as_ref(), shared]
                .into_iter()
                .flatten()
                .find_map(|b| b.reserve_output_tokens)
                .map_or(DEFAULT_OUTPUT_TOKENS, u64::from);
            keys.push(KeyRuntime {
                allowed: k.allowed_models.iter().map(|g| WildMatch::new(g)).collect(),
                limits: k.rate_limit.as_ref().and_then(|l| KeyLimits::new(l, snapshot.gateway_replicas)),
                state: registry.key(&id),
                namespace: id.0,
                name: id.1,
                budget: k.budget,
                namespace_budget,
                reserve_output_tokens,
            });
        }
        let channels = snapshot
            .channels
            .iter()
            .map(|ch| {
                let adapter = Adapter::build(ch, pool);
                let mut uri = |m, op: Option<Operation>| -> Option<Uri> {
                    let text = match op {
                        Some(op) => adapter.url(ch, m, op)?,
                        None => adapter.stream_url(ch, m)?,
                    };
                    text.parse::<Uri>()
                        .inspect_err(|err| {
                            warnings.push(format!(
                                "Channel {}/{}: {text:?} is not a valid URL: {err}",
                                ch.namespace, ch.name
                            ));
                        })
                        .ok()
                };
                let models = ch
                    .models
                    .iter()
                    .map(|m| ModelRuntime {
                        label: Label::new(&m.name),
                        upstream: Label::new(&m.upstream),
                        prices: m.prices,
                        rename: ModelRename::new(&m.name, &m.upstream),
                        upstream_json: Bytes::from(serde_json::to_vec(&m.upstream).unwrap_or_default()),
                        chat: uri(m, Some(Operation::Chat)),
                        chat_stream: uri(m, None),
                        embeddings: uri(m, Some(Operation::Embeddings)),
                        count_tokens: uri(m, Some(Operation::CountTokens)),
                        responses: uri(m, Some(Operation::Responses)),
                        series: RouteSeries::default(),
                    })
                    .collect();
                let id = (Label::new(&ch.namespace), Label::new(&ch.name));
                let ok = AttemptLabels { namespace: id.0.clone(), channel: id.1.clone(), result: "ok" };
                ChannelRuntime {
                    state: registry.channel(&id),
                    header: HeaderValue::from_str(&ch.name).unwrap_or(HeaderValue::from_static("")),
                    attempts_ok: metrics.routing.attempts.get_or_create(&ok).clone(),
                    caps: Caps::share(&ch.limits, snapshot.gateway_replicas),
                    namespace: id.0,
                    label: id.1,
                    adapter,
                    gen_ai_provider: crate::metering::gen_ai_provider_name(ch.provider),
                    models,
                    first_byte: Duration::from_millis(ch.timeouts.first_byte_ms),
                    total: Duration::from_millis(ch.timeouts.total_ms),
                    stream_usage: ch.stream_usage,
                }
            })
            .collect::<Vec<_>>();
        let policy_ids: Vec<Id> = snapshot
            .policies
            .iter()
            .map(|p| (Label::new(&p.namespace), Label::new(p.name.as_deref().unwrap_or(""))))
            .collect();
        let policies: Vec<Arc<Policy>> = snapshot
            .policies
            .iter()
            .zip(&policy_ids)
            .map(|(p, id)| Arc::new(Policy::new(p, registry.budget(id))))
            .collect();
        let keys_of: Vec<u64> = snapshot.channels.iter().map(|c| channel_key(&c.namespace, &c.name)).collect();
        let routes = snapshot
            .route_tables
            .iter()
            .map(|table| {
                table
                    .routes
                    .iter()
                    .filter_map(|(model, route)| {
                        let Some(policy) = policies.get(route.policy as usize) else {
                            warnings.push(format!("route {model:?} names a policy the snapshot lacks"));
                            return None;
                        };
                        let members = route.candidates.iter().filter_map(|c| member(c, &channels, &keys_of)).collect();
                        Some((model.clone(), Route::new(members, policy.clone())))
                    })
                    .collect()
            })
            .collect();
        (Self { snapshot, by_digest, keys, channels, namespaces, routes, policy_ids }, warnings)
    }

    /// The budget the key's namespace shares among its keys, if it has one.
    pub fn namespace_budget(&self, key: &KeyRuntime) -> Option<BudgetRef<'_>> {
        key.namespace_budget.and_then(|i| self.namespaces.get(i as usize)).map(NamespaceRuntime::budget_ref)
    }

    /// Every budget of this runtime: the keys' own, then the namespaces'.
    pub fn budgets(&self) -> impl Iterator<Item = BudgetRef<'_>> {
        self.keys
            .iter()
            .filter_map(KeyRuntime::own_budget)
            .chain(self.namespaces.iter().map(NamespaceRuntime::budget_ref))
    }

    /// The key a digest belongs to, and when that digest stops working.
    pub fn key_by_digest(&self, digest: &Digest) -> Option<(u32, &KeySnapshot, Option<i64>)> {
        let (idx, until) = *self.by_digest.get(digest)?;
        Some((idx, self.snapshot.keys.get(idx as usize)?, until))
    }

    /// Whether a key may use a model.
    pub fn model_allowed(&self, key: u32, model: &str) -> bool {
        let allowed = &self.keys[key as usize].allowed;
        allowed.is_empty() || allowed.iter().any(|g| g.matches(model))
    }

    /// The members of `route` (bit i: member i) that serve a fallback model
    /// key `key` may not use: a key held to some models (`allowedModels`) is
    /// not served another through a policy's fallback. 0 without an
    /// allowlist, or without fallback members.
    pub fn barred_fallbacks(&self, key: u32, route: &Route) -> u128 {
        if self.keys[key as usize].allowed.is_empty() {
            return 0;
        }
        let mut barred = 0;
        for (i, member) in route.members().iter().enumerate().take(128).filter(|(_, m)| m.fallback > 0) {
            let model = self.channels.get(member.channel as usize).and_then(|c| c.models.get(member.model as usize));
            if !model.is_some_and(|m| self.model_allowed(key, m.label.as_str())) {
                barred |= 1 << i;
            }
        }
        barred
    }

    /// The route of a model under a key: `None` when nothing routes the
    /// model (404); without members when its channels are all unusable (503).
    pub fn route(&self, key: u32, model: &str) -> Option<&Route> {
        let k = self.snapshot.keys.get(key as usize)?;
        self.routes.get(k.route_table as usize)?.get(model)
    }

    /// The models a key may use, sorted.
    pub fn models_for(&self, key: u32) -> Vec<&str> {
        let Some(k) = self.snapshot.keys.get(key as usize) else { return Vec::new() };
        self.snapshot
            .route_tables
            .get(k.route_table as usize)
            .map(|t| {
                t.routes
                    .iter()
                    .filter(|(m, r)| !r.candidates.is_empty() && self.model_allowed(key, m))
                    .map(|(m, _)| m.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A candidate as its route picks it (`None` when the snapshot's indices do
/// not hold, which the compiler never produces).
fn member(c: &Candidate, channels: &[ChannelRuntime], keys: &[u64]) -> Option<Member> {
    let channel = channels.get(c.channel as usize)?;
    let model = channel.models.get(c.model as usize)?;
    Some(Member {
        channel: c.channel,
        model: c.model,
        weight: c.weight,
        priority: c.priority,
        fallback: c.fallback,
        tier: 0,
        prices: model.prices,
        key: *keys.get(c.channel as usize)?,
        caps: channel.caps,
        upstream: channel.state.upstream.clone(),
    })
}
