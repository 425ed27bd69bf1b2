//! `Channel`: one upstream LLM provider endpoint with its credentials and models.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DurationString, SecretKeyRef};

/// An upstream provider endpoint that serves some models.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "llmweaver.io",
    version = "v1alpha1",
    kind = "Channel",
    namespaced,
    status = "ChannelStatus",
    shortname = "chan",
    category = "llmweaver",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.conditions[?(@.type==\"Healthy\")].status"}"#,
    printcolumn = r#"{"name":"P95","type":"string","jsonPath":".status.latency.p95"}"#,
    printcolumn = r#"{"name":"Success","type":"string","jsonPath":".status.successRate","priority":1}"#,
    printcolumn = r#"{"name":"Spend","type":"string","jsonPath":".status.usage.cost"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "has(self.baseUrl) || !(self.provider in ['azure-openai', 'openai-compatible'])"
).message("baseUrl is required for provider azure-openai and openai-compatible"))]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// Which wire protocol and defaults the upstream uses.
    pub provider: Provider,
    /// Root URL of the upstream API. Defaults to the provider's well-known URL;
    /// required for `azure-openai` (`https://<resource>.openai.azure.com`) and
    /// `openai-compatible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub base_url: Option<String>,
    /// Where the upstream API key lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// The models this channel serves, by the name clients send.
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub models: Vec<ChannelModel>,
    /// Share of traffic among channels of equal priority (0 drains the channel).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: u32,
    /// Lower values are preferred; higher values only serve when every channel
    /// with a lower value is unavailable.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Upstream timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Most requests in flight to the upstream at once, across all gateway
    /// replicas (each takes its share, at least 1). A request that finds the
    /// channel full goes to another channel, or waits up to `queueTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrency: Option<u32>,
    /// Most requests sent to the upstream per minute, across all gateway
    /// replicas (each takes its share, at least 1; a token bucket whose burst
    /// is the whole minute's share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub requests_per_minute: Option<u32>,
    /// How long a request waits for this channel when it and every other
    /// candidate are at their caps, before it is answered 503. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<DurationString>,
    /// Extra headers sent upstream with every request (not for secrets: they are
    /// visible to anyone who can read the Channel).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub headers: BTreeMap<String, String>,
    /// Azure OpenAI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// Takes the channel out of routing without deleting it.
    #[serde(default)]
    pub disabled: bool,
    /// Ask the upstream for usage in streams (`stream_options.include_usage`,
    /// default true). Set false for servers that refuse the member (older
    /// Azure OpenAI API versions answer 400 "Unrecognized request argument");
    /// the gateway also learns that by itself from the first refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_usage: Option<bool>,
    /// Active health checks: every gateway sends a small request through the
    /// channel now and then; while they fail, the channel gets no traffic and
    /// its `Healthy` condition says so. Off without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// An active health check: one cheap chat completion, every `interval`
/// (jittered by up to a tenth, so gateways do not probe in step), from
/// every gateway. Probes are not client traffic: no usage record, no key
/// budget, no token metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Time between two probes. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationString>,
    /// How long a probe may take until its whole answer. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,
    /// The model probed, by the name clients send (one of `models`).
    /// Default: the first of `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub model: Option<String>,
    /// The probe request's user message. Default `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub prompt: Option<String>,
    /// The probe's output limit (`max_tokens`), in tokens. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: Option<u32>,
    /// Failed probes in a row that take the channel out. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
    /// Successful probes in a row that bring it back. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
}

fn default_weight() -> u32 {
    100
}

/// Upstream provider kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Openai,
    AzureOpenai,
    Anthropic,
    Gemini,
    Mistral,
    Cohere,
    Zhipu,
    Qwen,
    Ernie,
    Ollama,
    Vllm,
    OpenaiCompatible,
    /// Answers locally with deterministic text; for demos and tests.
    Mock,
}

impl Provider {
    /// The spelling used in manifests, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::AzureOpenai => "azure-openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Mistral => "mistral",
            Provider::Cohere => "cohere",
            Provider::Zhipu => "zhipu",
            Provider::Qwen => "qwen",
            Provider::Ernie => "ernie",
            Provider::Ollama => "ollama",
            Provider::Vllm => "vllm",
            Provider::OpenaiCompatible => "openai-compatible",
            Provider::Mock => "mock",
        }
    }

    /// The provider's well-known API root, where it has one.
    pub fn default_base_url(self) -> Option<&'static str> {
        Some(match self {
            Provider::Openai => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            Provider::Mistral => "https://api.mistral.ai/v1",
            Provider::Cohere => "https://api.cohere.com/v2",
            Provider::Zhipu => "https://open.bigmodel.cn/api/paas/v4",
            Provider::Qwen => "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            Provider::Ernie => "https://qianfan.baidubce.com/v2",
            Provider::Ollama => "http://localhost:11434/v1",
            Provider::Vllm => "http://localhost:8000/v1",
            Provider::Mock => "mock://local",
            Provider::AzureOpenai | Provider::OpenaiCompatible => return None,
        })
    }

    /// Whether the upstream refuses requests without an API key. Self-hosted
    /// servers (Ollama, vLLM, generic OpenAI-compatible ones) may run without one.
    pub fn requires_credentials(self) -> bool {
        !matches!(self, Provider::Ollama | Provider::Vllm | Provider::OpenaiCompatible | Provider::Mock)
    }

    /// Whether this gateway version can relay to the provider: every
    /// provider has an adapter now (a provider added later may not, and is
    /// then reported `ProviderNotSupported`).
    pub fn is_supported(self) -> bool {
        true
    }
}

/// Upstream credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The Secret key holding the upstream API key.
    pub secret_ref: SecretKeyRef,
}

/// One model a channel serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelModel {
    /// The model name clients send.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The model (or Azure deployment) name sent upstream; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub upstream_model: Option<String>,
    /// USD per million tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
}

/// Prices in USD per million tokens, as decimal strings.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    /// Price of a million input (prompt) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]{1,6})?$')").message("must be a decimal USD amount such as \"0.15\""))]
    pub input_per_million: Option<String>,
    /// Price of a million output (completion) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]{1,6})?$')").message("must be a decimal USD amount such as \"0.60\""))]
    pub output_per_million: Option<String>,
    /// Price of a million input tokens served from the provider's prompt cache;
    /// defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]{1,6})?$')").message("must be a decimal USD amount such as \"0.075\""))]
    pub cached_input_per_million: Option<String>,
    /// Price of a million input tokens written to the provider's prompt cache
    /// (Anthropic's cache writes); defaults to the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]{1,6})?$')").message("must be a decimal USD amount such as \"3.75\""))]
    pub cache_write_input_per_million: Option<String>,
}

/// Upstream timeouts as durations (`500ms`, `30s`, `5m`, `1h30m`).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// TCP + TLS connect. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    pub connect: Option<String>,
    /// Until the first token of a streamed answer. Default 60s. A non-streamed
    /// answer arrives whole, so only `total` bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    pub first_byte: Option<String>,
    /// The whole exchange, streams included. Default 600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    pub total: Option<String>,
}

/// Azure OpenAI settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// A dated data-plane API version (e.g. `2024-10-21`): requests go to
    /// `/openai/deployments/<upstreamModel>/...?api-version=...`. Without it the
    /// v1 API (`/openai/v1/...`) is used with the deployment name as `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub api_version: Option<String>,
}

/// What the operator observes about a channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// `Ready` (the spec compiled into the snapshot) and `Healthy` (upstream answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Time to the upstream's first byte across all gateway replicas over the
    /// last five minutes (e.g. `850ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyStatus>,
    /// Share of upstream attempts over the last five minutes that did not fail
    /// (e.g. `99.5%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<String>,
    /// Traffic served through this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::api_key::UsageStatus>,
    /// The latest active health check probe any gateway reported
    /// (with `healthCheck` only), kept while the probes tell the same (as
    /// many gateways pass, and one's latest probe has this result): status
    /// is not rewritten on every probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeStatus>,
}

/// One gateway's health check probe of a channel: the first that told
/// what the probes still tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    /// When the probe finished: since then the probes tell the same.
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Whether the upstream answered it.
    pub succeeded: bool,
    /// How long it took (e.g. `120ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Why it failed (the upstream's status and error category).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Gateways whose latest probe succeeded, of those probing (`2/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways_healthy: Option<String>,
}

/// Latency percentiles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<String>,
}
