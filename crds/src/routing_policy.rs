//! `RoutingPolicy`: which channels serve which models, and how to pick.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[serde(rename_all = "camelCase")]
pub struct RoutingPolicySpec {
    /// Model names (globs) this policy routes.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 256)))]
    pub models: Vec<String>,
    /// Candidate channels, by name or by label selector.
    #[schemars(length(min = 1, max = 256))]
    pub channels: Vec<ChannelRef>,
    /// How a candidate is picked.
    #[serde(default)]
    pub strategy: Strategy,
    /// Retries on another candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
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
}

/// Selection strategies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Weighted,
    Random,
    LowestCost,
    LowestLatency,
    LeastBusy,
    CacheAware,
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Total attempts, the first included.
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// Which failures are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub retry_on: Vec<RetryOn>,
}

/// Retryable failure classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    #[serde(rename = "429")]
    TooManyRequests,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "connect")]
    Connect,
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
