//! The hot state: a snapshot plus everything derived from it that requests
//! need (digest map, compiled globs, provider adapters with their URIs and
//! headers, metric labels, links to the registry). Built once per snapshot,
//! swapped atomically, loaded once per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use weaver_crds::money::Prices;
use weaver_crds::snapshot::{BudgetSnapshot, Candidate, KeySnapshot, Snapshot};
use wildmatch::WildMatch;

use super::ClientPool;
use super::budget::BudgetRef;
use super::registry::{ChannelState, KeyState, NamespaceState, Registry};
use crate::limits::{DEFAULT_OUTPUT_TOKENS, KeyLimits};
use crate::metering::Label;
use crate::providers::openai::ModelRename;
use crate::providers::{Adapter, Operation};

/// SHA-256 of a presented key.
pub(crate) type Digest = [u8; 32];

pub(crate) struct Runtime {
    pub snapshot: Snapshot,
    /// Digest -> (key index, unix second the digest stops working).
    by_digest: HashMap<Digest, (u32, Option<i64>)>,
    pub keys: Vec<KeyRuntime>,
    pub channels: Vec<ChannelRuntime>,
    /// Namespaces with a budget.
    pub namespaces: Vec<NamespaceRuntime>,
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
    pub adapter: Adapter,
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
    /// Chat completions and Messages (one URL for both in either format).
    chat: Option<Uri>,
    embeddings: Option<Uri>,
    count_tokens: Option<Uri>,
}

impl ModelRuntime {
    pub fn uri(&self, operation: Operation) -> Option<&Uri> {
        match operation {
            Operation::Chat | Operation::Messages => self.chat.as_ref(),
            Operation::Embeddings => self.embeddings.as_ref(),
            Operation::CountTokens => self.count_tokens.as_ref(),
        }
    }
}

impl Runtime {
    /// Derives the runtime; problems that only show here (a base URL that is
    /// not a valid URI) are returned as messages and the model is not routed to.
    pub fn build(snapshot: Snapshot, pool: &ClientPool, registry: &Registry) -> (Self, Vec<String>) {
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
        let mut by_digest = HashMap::with_capacity(snapshot.keys.len());
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
                let mut uri = |m, op| -> Option<Uri> {
                    let text = adapter.url(ch, m, op)?;
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
                        chat: uri(m, Operation::Chat),
                        embeddings: uri(m, Operation::Embeddings),
                        count_tokens: uri(m, Operation::CountTokens),
                    })
                    .collect();
                let id = (Label::new(&ch.namespace), Label::new(&ch.name));
                ChannelRuntime {
                    state: registry.channel(&id),
                    label: id.1,
                    adapter,
                    models,
                    first_byte: Duration::from_millis(ch.timeouts.first_byte_ms),
                    total: Duration::from_millis(ch.timeouts.total_ms),
                    stream_usage: ch.stream_usage,
                }
            })
            .collect();
        (Self { snapshot, by_digest, keys, channels, namespaces }, warnings)
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

    /// The candidates for a model under a key: `None` when nothing routes the
    /// model (404), empty when its policy's channels are all unusable (503).
    pub fn candidates(&self, key: u32, model: &str) -> Option<&[Candidate]> {
        let k = self.snapshot.keys.get(key as usize)?;
        self.snapshot.route_tables.get(k.route_table as usize)?.routes.get(model).map(Vec::as_slice)
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
                    .filter(|(m, c)| !c.is_empty() && self.model_allowed(key, m))
                    .map(|(m, _)| m.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}
