//! The OpenTelemetry GenAI semantic-convention metrics, as an OpenTelemetry
//! collector would export them to Prometheus (dots become underscores, the
//! unit `s` becomes a `_seconds` suffix, `{token}` adds none), so dashboards
//! written for other GenAI instrumentations work against the gateway:
//!
//! - `gen_ai_client_token_usage` (histogram, tokens per request, by
//!   `gen_ai_token_type` `input`/`output`),
//! - `gen_ai_server_request_duration_seconds` (histogram, every answered
//!   inference request, `error_type` on failures),
//! - `gen_ai_server_time_to_first_token_seconds` (histogram, successful
//!   requests).
//!
//! Attributes and their values: `gen_ai_operation_name` (`chat` for chat
//! completions and Messages, `embeddings`), `gen_ai_provider_name` (the
//! convention's well-known value where there is one: `openai`, `anthropic`,
//! `azure.ai.openai`, `gcp.gemini`, `mistral_ai`, `cohere`; else the Channel's
//! `provider`), `gen_ai_request_model` (the public model name that answered,
//! from the configuration), `gen_ai_response_model` (the upstream name it
//! maps to, from the configuration, never the upstream's answer), so every
//! value is bounded by the configuration. Bucket boundaries are the
//! convention's. Source: <https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/>
//! (semantic conventions 1.37+: `gen_ai.provider.name` replaced `gen_ai.system`).

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weaver_crds::channel::Provider;

use super::metrics::Label;
use crate::api::ApiRoute;

/// `gen_ai.operation.name` of an endpoint; `None` for endpoints that are not
/// inference (model lists, token counting).
pub(crate) fn operation_name(route: ApiRoute) -> Option<&'static str> {
    match route {
        ApiRoute::ChatCompletions | ApiRoute::Messages | ApiRoute::Responses => Some("chat"),
        ApiRoute::Embeddings => Some("embeddings"),
        ApiRoute::ListModels | ApiRoute::RetrieveModel | ApiRoute::CountTokens => None,
    }
}

/// Where a route keeps its series of an operation (see `RouteSeries`).
pub(crate) fn operation_index(operation: &str) -> usize {
    usize::from(operation == "embeddings")
}

/// `gen_ai.provider.name` of a Channel's provider.
pub(crate) fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Openai => "openai",
        Provider::AzureOpenai => "azure.ai.openai",
        Provider::Anthropic => "anthropic",
        Provider::Gemini => "gcp.gemini",
        Provider::Mistral => "mistral_ai",
        Provider::Cohere => "cohere",
        other => other.as_str(),
    }
}

/// The attributes every GenAI series has.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GenAiLabels {
    pub operation: &'static str,
    pub provider: &'static str,
    pub request_model: Label,
    pub response_model: Label,
}

impl GenAiLabels {
    fn encode_into(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("gen_ai_operation_name", self.operation).encode(encoder.encode_label())?;
        ("gen_ai_provider_name", self.provider).encode(encoder.encode_label())?;
        ("gen_ai_request_model", self.request_model.as_str()).encode(encoder.encode_label())?;
        ("gen_ai_response_model", self.response_model.as_str()).encode(encoder.encode_label())
    }
}

/// `gen_ai_client_token_usage`'s labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenUsageLabels {
    pub base: GenAiLabels,
    /// `input` or `output`.
    pub token_type: &'static str,
}

impl EncodeLabelSet for TokenUsageLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.base.encode_into(encoder)?;
        ("gen_ai_token_type", self.token_type).encode(encoder.encode_label())
    }
}

/// `gen_ai_server_request_duration_seconds`'s labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DurationLabels {
    pub base: GenAiLabels,
    /// `error.type`: empty (so absent) on success, else the failure's
    /// low-cardinality category (`upstream_error`, `upstream_timeout`...,
    /// `cancelled` when the client went away, `_OTHER` without one).
    pub error_type: &'static str,
}

impl EncodeLabelSet for DurationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.base.encode_into(encoder)?;
        if !self.error_type.is_empty() {
            ("error_type", self.error_type).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for GenAiLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.encode_into(encoder)
    }
}

/// One route's GenAI series of one operation, kept as `RouteSeries` keeps
/// its own (every label comes from the configuration, so they are the same
/// on every request of the route).
#[derive(Default)]
pub(crate) struct GenAiSeries {
    pub time_to_first_token: OnceLock<Histogram>,
    pub input: OnceLock<Histogram>,
    pub output: OnceLock<Histogram>,
    /// Successful requests' durations (no `error_type`).
    pub duration: OnceLock<Histogram>,
}

/// The three GenAI histograms.
pub(crate) struct GenAiMetrics {
    pub token_usage: Family<TokenUsageLabels, Histogram>,
    pub request_duration: Family<DurationLabels, Histogram>,
    pub time_to_first_token: Family<GenAiLabels, Histogram>,
}

fn token_buckets() -> Histogram {
    // 1, 4, 16 ... 67,108,864 tokens.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 14))
}

fn duration_buckets() -> Histogram {
    // 10 ms .. 81.92 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 14))
}

fn first_token_buckets() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0])
}

impl GenAiMetrics {
    /// Registers the histograms in `registry` (which must have no prefix: the
    /// names are the convention's).
    pub fn register(registry: &mut Registry) -> Self {
        let token_usage = Family::new_with_constructor(token_buckets as fn() -> Histogram);
        registry.register(
            "gen_ai_client_token_usage",
            "Input and output tokens per inference request (OpenTelemetry GenAI semantic conventions)",
            token_usage.clone(),
        );
        let request_duration = Family::new_with_constructor(duration_buckets as fn() -> Histogram);
        registry.register_with_unit(
            "gen_ai_server_request_duration",
            "Time from an inference request to the last byte of its answer (OpenTelemetry GenAI semantic conventions)",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let time_to_first_token = Family::new_with_constructor(first_token_buckets as fn() -> Histogram);
        registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time from a successful inference request to the upstream's first byte (OpenTelemetry GenAI semantic conventions)",
            prometheus_client::registry::Unit::Seconds,
            time_to_first_token.clone(),
        );
        Self { token_usage, request_duration, time_to_first_token }
    }
}
