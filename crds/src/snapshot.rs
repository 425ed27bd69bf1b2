//! The snapshot: everything a gateway needs to serve, compiled from resources.
//! It is the contract between the operator and the gateways, so it is plain
//! serde data with no behaviour beyond lookups.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api_key::BudgetPeriod;
use crate::channel::Provider;
use crate::money::{Prices, Usd};

/// One immutable configuration version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases with every change; gateways acknowledge it.
    pub version: u64,
    /// Usable channels, sorted by namespace and name.
    pub channels: Vec<ChannelSnapshot>,
    /// Model -> candidates tables that keys point into.
    pub route_tables: Vec<RouteTable>,
    /// Client keys, sorted by namespace and name.
    pub keys: Vec<KeySnapshot>,
    /// Namespace-wide settings (from NamespacePolicies) that the gateway
    /// enforces, sorted by namespace; only namespaces with something to enforce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceSnapshot>,
    /// Gateway replicas currently connected to the operator (1 standalone), so
    /// each replica can take its share of per-key rate limits.
    #[serde(default = "one")]
    pub gateway_replicas: u32,
}

fn one() -> u32 {
    1
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            version: 0,
            channels: Vec::new(),
            route_tables: Vec::new(),
            keys: Vec::new(),
            namespaces: Vec::new(),
            gateway_replicas: 1,
        }
    }
}

/// A channel with its credential resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    pub namespace: String,
    pub name: String,
    pub provider: Provider,
    /// Without a trailing slash.
    pub base_url: String,
    pub credential: Option<Credential>,
    pub headers: Vec<(String, String)>,
    pub models: Vec<ModelSnapshot>,
    pub timeouts: TimeoutsSnapshot,
    /// Azure's dated `api-version`; `None` selects the v1 API.
    pub azure_api_version: Option<String>,
    /// Ask the upstream for stream usage (`stream_options.include_usage`).
    #[serde(default = "yes")]
    pub stream_usage: bool,
}

fn yes() -> bool {
    true
}

/// An upstream API key. Its `Debug` never shows the value, so a snapshot can be
/// logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credential(pub String);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// A model as a channel serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSnapshot {
    /// The name clients send.
    pub name: String,
    /// The name sent upstream (Azure: the deployment).
    pub upstream: String,
    pub prices: Prices,
}

/// Upstream timeouts in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsSnapshot {
    pub connect_ms: u64,
    pub first_byte_ms: u64,
    pub total_ms: u64,
}

impl Default for TimeoutsSnapshot {
    fn default() -> Self {
        Self { connect_ms: 5_000, first_byte_ms: 60_000, total_ms: 600_000 }
    }
}

/// Which channels may serve each model, for one set of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Namespace/name of the RoutingPolicy a key named, if any.
    pub policy: Option<String>,
    pub routes: BTreeMap<String, Vec<Candidate>>,
}

/// One channel that can serve a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Index into `Snapshot::channels`.
    pub channel: u32,
    /// Index into that channel's `models`.
    pub model: u32,
    pub weight: u32,
    pub priority: i32,
}

/// A client key; only digests of the key material are here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySnapshot {
    pub namespace: String,
    pub name: String,
    /// The keys that authenticate as this ApiKey: more than one while a
    /// rotation's grace period runs.
    pub digests: Vec<KeyDigest>,
    /// Globs; empty allows every model.
    pub allowed_models: Vec<String>,
    pub disabled: bool,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// Parsed networks; empty allows every address.
    pub ip_allowlist: Vec<ipnet::IpNet>,
    /// Index into `Snapshot::route_tables`.
    pub route_table: u32,
    pub budget: Option<BudgetSnapshot>,
    pub rate_limit: Option<crate::api_key::RateLimit>,
    /// Bytes stored per body when the key logs request and response bodies
    /// (its own `logging`, else its namespace's); `None`: bodies are not logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bodies: Option<u32>,
}

/// One accepted key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDigest {
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Unix seconds after which this key is refused (a rotated-out key).
    pub expires_at: Option<i64>,
}

/// What a namespace's keys share, from its NamespacePolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSnapshot {
    pub namespace: String,
    /// The budget of the namespace's keys together; each request reserves
    /// from it and from its key's own budget.
    pub budget: Option<BudgetSnapshot>,
}

/// A parsed budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSnapshot {
    pub amount: Usd,
    pub period: BudgetPeriod,
    /// Output tokens reserved for a request that sets no output limit (a
    /// namespace's: the default for its keys' budgets that name none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_output_tokens: Option<u32>,
}
