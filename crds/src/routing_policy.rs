//! `RoutingPolicy`: which channels serve which models, and how to pick.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::DurationString;

/// Routing for a set of models within a namespace.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "llmweaver.io",
    version = "v1alpha1",
    kind = "RoutingPolicy",
    namespaced,
    status = "RoutingPolicyStatus",
    shortname = "rp",
    category = "llmweaver",
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "!has(self.cacheAware) || (has(self.strategy) && self.strategy == 'cache-aware')"
).message("cacheAware applies only with strategy: cache-aware"))]
#[serde(rename_all = "camelCase")]
pub struct RoutingPolicySpec {
    /// Model names (globs) this policy routes.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,
    /// Candidate channels, by name or by label selector.
    #[schemars(length(min = 1, max = 256))]
    pub channels: Vec<ChannelRef>,
    /// How a candidate is picked among the available channels of the best
    /// priority tier.
    #[serde(default)]
    pub strategy: Strategy,
    /// Settings of the `cache-aware` strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_aware: Option<CacheAware>,
    /// Other models that serve a request, in order, when no channel of the
    /// requested model can (all unavailable, or all failed for it). Their
    /// channels are those a key of this policy gets for that model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallback: Vec<Fallback>,
    /// Retries on another candidate (default: 2 attempts on any of the
    /// failure classes, within a retry budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Passive health: when a channel's failures take it out of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// A model to fall back to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// The model name, as clients send it.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
}

/// Prefix affinity: requests that share a prompt prefix go to the same
/// channel, so its prompt cache keeps hitting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheAware {
    /// Messages hashed after the leading system (and developer) messages and
    /// the tool definitions. Default 1: the first user turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub prefix_messages: Option<u32>,
    /// Bounded load, in percent: a channel takes at most this share of its
    /// weighted fair share of the requests in flight before a prefix spills
    /// to the next channel. Default 125.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 1000))]
    pub load_factor_percent: Option<u32>,
}

/// A channel, or a set of channels chosen by labels.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("exactly one of name or selector must be set"))]
#[serde(rename_all = "camelCase")]
pub struct ChannelRef {
    /// A Channel of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Channels of this namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Overrides the channels' own weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: Option<u32>,
    /// Overrides the channels' own priority (lower is preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: Option<i32>,
}

/// Selection strategies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    // Each channel's share follows its weight, spread evenly over time.
    #[default]
    Weighted,
    // Uniformly at random (weight 0 still drains).
    Random,
    // The lowest price for the request's estimated tokens; ties by weight.
    LowestCost,
    // The lowest peak-EWMA time to first token, of two drawn at random.
    LowestLatency,
    // The fewest requests in flight; ties by weight.
    LeastBusy,
    // The same prompt prefix to the same channel, within a load bound.
    CacheAware,
}

/// Retry settings. Retries happen only before the answer's first byte
/// reached the client, go to another channel when one is available (at
/// once) and else to the same one (after a backoff), and stay within the
/// retry budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Total attempts, the first included (1: no retries). Default 2.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// Which failures are retried; empty: all four.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub retry_on: Vec<RetryOn>,
    /// Wait before a retry on a channel this request already tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Each attempt's limit until a stream's first byte or a whole answer
    /// (the channel's own timeouts apply too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<DurationString>,
    /// The whole request's limit until its answer begins, across attempts,
    /// backoffs and waits for a channel below its caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
    /// How many retries the policy may add to its traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

fn default_attempts() -> u32 {
    2
}

/// Exponential backoff with jitter: the n-th wait is drawn from `[d, 2d)`
/// where `d = base * 2^(n-1)`, at most `max`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// The first wait. Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<DurationString>,
    /// The largest `d` (so the longest wait is under twice this). Default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<DurationString>,
}

/// A retry budget, as Linkerd's: over any 10 seconds, retries add at most
/// `percent` of the requests, plus `minPerSecond` a second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a share of requests, in percent. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub percent: Option<u32>,
    /// Retries always allowed, per second (for low traffic). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub min_per_second: Option<u32>,
}

/// Outlier ejection, as Envoy's: a channel that fails too often is taken out
/// of routing for a period that grows with each ejection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failures in a row that eject (0: never by count). Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// Failed share of attempts within one `interval` that ejects, in
    /// percent (once `minRequests` were made). Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_percent: Option<u32>,
    /// Attempts within one `interval` before the failure rate counts. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub min_requests: Option<u32>,
    /// The failure-rate window. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationString>,
    /// The first ejection's length; the n-th lasts n times as long. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<DurationString>,
    /// The longest ejection (and the longest `Retry-After` honoured). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<DurationString>,
    /// When fewer than this percent of a model's channels are healthy, health
    /// is ignored and all of them serve (Envoy's panic threshold). Default 0;
    /// whatever it is, when none is healthy all serve: ejection never causes
    /// a total outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub panic_threshold_percent: Option<u32>,
}

/// Retryable failure classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    #[serde(rename = "429")]
    TooManyRequests,
    // 5xx answers, and an upstream that refuses the channel's credentials.
    // (Plain comments: doc comments on variants would turn the schema's enum
    // into a oneOf.)
    #[serde(rename = "5xx")]
    ServerError,
    // No first byte within the limit.
    #[serde(rename = "timeout")]
    Timeout,
    // Unreachable, or the answer broke off before it began.
    #[serde(rename = "connect")]
    Connect,
}

impl RetryOn {
    /// Every class, in the order the API lists them.
    pub const ALL: [RetryOn; 4] = [RetryOn::TooManyRequests, RetryOn::ServerError, RetryOn::Timeout, RetryOn::Connect];
}

/// What the operator observes about a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Channels the policy resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_channels: Vec<String>,
}
