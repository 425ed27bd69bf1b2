//! The snapshot: everything a gateway needs to serve, compiled from resources.
//! It is the contract between the operator and the gateways, so it is plain
//! serde data with no behaviour beyond lookups.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api_key::BudgetPeriod;
use crate::channel::Provider;
use crate::money::{Prices, Usd};
use crate::routing_policy::{RetryOn, Strategy};

/// One immutable configuration version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Increases with every change; gateways acknowledge it.
    pub version: u64,
    /// Usable channels, sorted by namespace and name.
    pub channels: Vec<ChannelSnapshot>,
    /// Model -> candidates tables that keys point into.
    pub route_tables: Vec<RouteTable>,
    /// How routes pick and retry: one per RoutingPolicy, and one per
    /// namespace for the models no policy routes.
    #[serde(default)]
    pub policies: Vec<PolicySnapshot>,
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
    /// SHA-256 (lowercase hex) of the token the operator presents as
    /// `Authorization: Bearer` on a gateway's admin routes (the channel test
    /// its UI runs). Set by the operator, never by the compiler; the token
    /// itself never leaves the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_token_sha256: Option<String>,
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
            policies: Vec::new(),
            keys: Vec::new(),
            namespaces: Vec::new(),
            gateway_replicas: 1,
            operator_token_sha256: None,
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
    /// Caps that protect the upstream.
    #[serde(default)]
    pub limits: ChannelLimits,
    /// Active health checks, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSnapshot>,
}

/// A channel's active health check, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckSnapshot {
    /// Between two probes of one gateway (before jitter).
    pub interval_ms: u64,
    /// Until a probe's whole answer.
    pub timeout_ms: u64,
    /// Index into the channel's `models`.
    pub model: u32,
    /// The probe's user message.
    pub prompt: String,
    /// The probe's `max_tokens`.
    pub max_tokens: u32,
    /// Failed probes in a row that mark the channel unhealthy.
    pub unhealthy_threshold: u32,
    /// Successful probes in a row that mark it healthy again.
    pub healthy_threshold: u32,
}

impl HealthCheckSnapshot {
    /// Defaults of the Channel fields.
    pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
    pub const DEFAULT_PROMPT: &str = "ping";
    pub const DEFAULT_MAX_TOKENS: u32 = 1;
    pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
    pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
}

/// A channel's caps, for all gateway replicas together (each takes its share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelLimits {
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    /// Requests a minute.
    pub requests_per_minute: Option<u32>,
    /// How long a request waits when every candidate is at its caps.
    pub queue_timeout_ms: u64,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self { max_concurrency: None, requests_per_minute: None, queue_timeout_ms: 5_000 }
    }
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
    pub routes: BTreeMap<String, Route>,
}

/// The channels that may serve one model, and how to pick among them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// In the order tiers are tried: the requested model's by priority, then
    /// each fallback model's (`Candidate::fallback`) by priority.
    pub candidates: Vec<Candidate>,
    /// Index into `Snapshot::policies`.
    pub policy: u32,
}

/// One channel that can serve a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Index into `Snapshot::channels`.
    pub channel: u32,
    /// Index into that channel's `models`.
    pub model: u32,
    pub weight: u32,
    /// Lower is preferred (the channel's, or the policy's override).
    pub priority: i32,
    /// 0 for the requested model; n for the policy's n-th fallback model.
    #[serde(default)]
    pub fallback: u8,
}

/// A RoutingPolicy's settings, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub namespace: String,
    /// `None`: the namespace's defaults, for models no policy routes.
    pub name: Option<String>,
    pub strategy: Strategy,
    pub retry: RetrySnapshot,
    pub outlier: OutlierSnapshot,
    pub cache_aware: CacheAwareSnapshot,
}

impl PolicySnapshot {
    /// The defaults of a namespace's routes that no policy claims.
    pub fn defaults(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: None,
            strategy: Strategy::default(),
            retry: RetrySnapshot::default(),
            outlier: OutlierSnapshot::default(),
            cache_aware: CacheAwareSnapshot::default(),
        }
    }
}

/// Retries, with durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySnapshot {
    /// Total attempts, the first included.
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub per_try_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Retries as a percentage of requests, over the budget's window.
    pub budget_percent: u32,
    /// Retries always allowed per second.
    pub budget_min_per_second: u32,
}

impl Default for RetrySnapshot {
    fn default() -> Self {
        Self {
            attempts: 2,
            retry_on: RetryOn::ALL.to_vec(),
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            per_try_timeout_ms: None,
            timeout_ms: None,
            budget_percent: 20,
            budget_min_per_second: 10,
        }
    }
}

/// Outlier ejection, with durations in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierSnapshot {
    /// 0: never by count.
    pub consecutive_failures: u32,
    pub failure_rate_percent: Option<u32>,
    pub min_requests: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub panic_threshold_percent: u32,
}

impl Default for OutlierSnapshot {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate_percent: None,
            min_requests: 20,
            interval_ms: 10_000,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            panic_threshold_percent: 0,
        }
    }
}

/// The `cache-aware` strategy's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheAwareSnapshot {
    /// Messages hashed after the leading system messages and tools.
    pub prefix_messages: u32,
    /// A channel's bound, in percent of its weighted share of requests in flight.
    pub load_factor_percent: u32,
}

impl Default for CacheAwareSnapshot {
    fn default() -> Self {
        Self { prefix_messages: 1, load_factor_percent: 125 }
    }
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
