//! What the UI lists (`GET /ui/api/inventory`): the keys, channels and
//! models of a compiled snapshot, without key digests, credentials or
//! headers. The standalone gateway lists its live snapshot; the operator
//! the one it publishes, narrowed to the namespaces the viewer may read.

use serde::Serialize;
use weaver_crds::money::Usd;
use weaver_crds::snapshot::{KeySnapshot, Snapshot};

/// The answer of `GET /ui/api/inventory`.
#[derive(Serialize)]
pub struct Inventory {
    /// The serving binary's version (gateway or operator).
    pub gateway_version: &'static str,
    /// The snapshot in use (`null` before the first).
    pub snapshot_version: Option<u64>,
    pub keys: Vec<KeyView>,
    pub channels: Vec<ChannelView>,
    /// Whether the server runs the Playground (the operator: when it knows
    /// the gateway Service, `--gateway-url`).
    pub playground: bool,
}

#[derive(Serialize)]
pub struct KeyView {
    pub namespace: String,
    pub name: String,
    pub disabled: bool,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub allowed_models: Vec<String>,
    pub budget: Option<BudgetView>,
    pub rate_limit: Option<weaver_crds::api_key::RateLimit>,
    /// Unix seconds of the last request with the key; `null` before one or
    /// when not known.
    pub last_used: Option<i64>,
    /// Whether the viewer may disable and rotate the key here (cluster: RBAC
    /// `patch` on the ApiKey; standalone: never, the manifest is edited).
    pub can_manage: bool,
}

#[derive(Serialize)]
pub struct BudgetView {
    pub amount_usd: String,
    pub period: weaver_crds::api_key::BudgetPeriod,
}

#[derive(Serialize)]
pub struct ChannelView {
    pub namespace: String,
    pub name: String,
    pub provider: weaver_crds::channel::Provider,
    pub models: Vec<ModelView>,
    /// Whether the viewer may run the channel test (cluster: RBAC `create`
    /// on `channels/test` and a gateway to run it on; standalone: the admin).
    pub can_test: bool,
}

#[derive(Serialize)]
pub struct ModelView {
    pub name: String,
    pub upstream: String,
    /// USD per million tokens.
    pub input_per_million: String,
    pub output_per_million: String,
    pub cached_input_per_million: String,
}

impl KeyView {
    /// The key as compiled; `last_used` and `can_manage` are the server's to tell.
    pub fn of(k: &KeySnapshot, last_used: Option<i64>, can_manage: bool) -> Self {
        KeyView {
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            disabled: k.disabled,
            expires_at: k.expires_at,
            allowed_models: k.allowed_models.clone(),
            budget: k.budget.map(|b| BudgetView { amount_usd: b.amount.to_string(), period: b.period }),
            rate_limit: k.rate_limit.clone(),
            last_used,
            can_manage,
        }
    }
}

/// The channels of `snapshot` in the namespaces `visible` accepts, each
/// testable as `can_test` says (the server may narrow it per channel).
pub fn channels(snapshot: &Snapshot, visible: impl Fn(&str) -> bool, can_test: bool) -> Vec<ChannelView> {
    let usd = |nanos| Usd(nanos).to_string();
    snapshot
        .channels
        .iter()
        .filter(|c| visible(&c.namespace))
        .map(|c| ChannelView {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            provider: c.provider,
            models: c
                .models
                .iter()
                .map(|m| ModelView {
                    name: m.name.clone(),
                    upstream: m.upstream.clone(),
                    input_per_million: usd(m.prices.input),
                    output_per_million: usd(m.prices.output),
                    cached_input_per_million: usd(m.prices.cached_input),
                })
                .collect(),
            can_test,
        })
        .collect()
}
