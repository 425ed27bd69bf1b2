//! The hot state: a snapshot plus everything derived from it that requests
//! need (digest map, compiled globs, upstream URIs and headers, metric labels).
//! Built once per snapshot, swapped atomically, loaded once per request.

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use weaver_crds::Provider;
use weaver_crds::money::Prices;
use weaver_crds::snapshot::{Candidate, KeySnapshot, Snapshot};
use wildmatch::WildMatch;

use crate::metrics::Label;
use crate::providers::{Endpoint, openai};
use crate::upstream::{ClientPool, HttpClient};

pub type Digest = [u8; 32];

pub struct Runtime {
    pub snapshot: Snapshot,
    /// Digest -> (key index, unix second the digest stops working).
    by_digest: HashMap<Digest, (usize, Option<i64>)>,
    pub keys: Vec<KeyRuntime>,
    pub channels: Vec<ChannelRuntime>,
}

pub struct KeyRuntime {
    allowed: Vec<WildMatch>,
    pub namespace: Label,
    pub name: Label,
}

pub struct ChannelRuntime {
    pub namespace: Label,
    /// The channel's name.
    pub label: Label,
    pub provider: Provider,
    /// `None` for channels answered locally.
    pub upstream: Option<Upstream>,
    pub models: Vec<ModelRuntime>,
    pub first_byte: Duration,
    pub total: Duration,
}

pub struct Upstream {
    pub client: HttpClient,
    /// Auth, the channel's extra headers and content type.
    pub headers: HeaderMap,
}

pub struct ModelRuntime {
    pub label: Label,
    pub upstream_name: String,
    pub prices: Prices,
    pub chat: Option<Uri>,
    pub embeddings: Option<Uri>,
}

impl ModelRuntime {
    pub fn uri(&self, endpoint: Endpoint) -> Option<&Uri> {
        match endpoint {
            Endpoint::Chat => self.chat.as_ref(),
            Endpoint::Embeddings => self.embeddings.as_ref(),
        }
    }
}

impl Runtime {
    /// Derives the runtime; problems that only show here (a base URL that is
    /// not a valid URI) are returned as messages and the channel is not routed to.
    pub fn build(snapshot: Snapshot, pool: &ClientPool) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let mut by_digest = HashMap::with_capacity(snapshot.keys.len());
        let mut keys = Vec::with_capacity(snapshot.keys.len());
        for (idx, k) in snapshot.keys.iter().enumerate() {
            for d in &k.digests {
                match hex::decode(&d.sha256).ok().and_then(|v| Digest::try_from(v).ok()) {
                    Some(digest) => {
                        by_digest.insert(digest, (idx, d.expires_at));
                    }
                    None => warnings.push(format!("ApiKey {}/{}: malformed key digest", k.namespace, k.name)),
                }
            }
            keys.push(KeyRuntime {
                allowed: k.allowed_models.iter().map(|g| WildMatch::new(g)).collect(),
                namespace: Label::new(&k.namespace),
                name: Label::new(&k.name),
            });
        }
        let channels = snapshot
            .channels
            .iter()
            .map(|ch| {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(http::header::USER_AGENT, HeaderValue::from_static("llm-weaver"));
                for (name, value) in &ch.headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
                    {
                        headers.insert(n, v);
                    }
                }
                if let Some((name, value)) = openai::auth_header(ch) {
                    headers.insert(name, value);
                }
                let local = ch.provider == Provider::Mock;
                let mut uri = |m, e| -> Option<Uri> {
                    if local {
                        return None;
                    }
                    let text = openai::url(ch, m, e);
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
                        upstream_name: m.upstream.clone(),
                        prices: m.prices,
                        chat: uri(m, Endpoint::Chat),
                        embeddings: uri(m, Endpoint::Embeddings),
                    })
                    .collect();
                ChannelRuntime {
                    namespace: Label::new(&ch.namespace),
                    label: Label::new(&ch.name),
                    provider: ch.provider,
                    upstream: (!local).then(|| Upstream { client: pool.client(ch.timeouts.connect_ms), headers }),
                    models,
                    first_byte: Duration::from_millis(ch.timeouts.first_byte_ms),
                    total: Duration::from_millis(ch.timeouts.total_ms),
                }
            })
            .collect();
        (Self { snapshot, by_digest, keys, channels }, warnings)
    }

    /// The key a digest belongs to, and when that digest stops working.
    pub fn key_by_digest(&self, digest: &Digest) -> Option<(usize, &KeySnapshot, Option<i64>)> {
        let (idx, until) = *self.by_digest.get(digest)?;
        Some((idx, &self.snapshot.keys[idx], until))
    }

    /// Whether a key may use a model.
    pub fn model_allowed(&self, key: usize, model: &str) -> bool {
        let allowed = &self.keys[key].allowed;
        allowed.is_empty() || allowed.iter().any(|g| g.matches(model))
    }

    /// The candidates for a model under a key: `None` when nothing routes the
    /// model (404), empty when its policy's channels are all unusable (503).
    pub fn candidates(&self, key: &KeySnapshot, model: &str) -> Option<&[Candidate]> {
        self.snapshot.route_tables.get(key.route_table as usize)?.routes.get(model).map(Vec::as_slice)
    }

    /// The models a key may use, sorted.
    pub fn models_for(&self, key: usize) -> Vec<&str> {
        let k = &self.snapshot.keys[key];
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
