//! The channel test (`POST /admin/v1/channels/{namespace}/{name}/test` on
//! the admin listener): one real chat completion through the chosen channel,
//! answered with its status, latency and the answer's first characters,
//! and the channel's routing state on this gateway. It is a diagnostic: it
//! makes no usage record, charges no key and leaves the channel's health
//! alone. The admin token is checked by the layer the route sits behind
//! ([`super::admin`]), not here.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use weaver_usage_api::ApiError;

use crate::probe::exchange::exchange;
use crate::state::Gateway;

/// The route, in axum's template syntax.
pub(crate) const PATH: &str = "/admin/v1/channels/{namespace}/{name}/test";

/// The prompt sent when the request names none.
pub const DEFAULT_PROMPT: &str = "Say hello in five words.";
/// The output limit when the request names none, in tokens.
pub const DEFAULT_MAX_TOKENS: u32 = 16;
/// The most output tokens a test may ask for: it shows the first tokens of
/// an answer, and nothing meters what it spends.
pub const MAX_TEST_TOKENS: u32 = 1024;
/// The longest a test waits for its answer (less when the channel's `total`
/// timeout is shorter).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What may be asked (every member optional; an empty body is fine).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// One of the channel's models, by its public name (default: its first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// The test's answer. `ok` is false when the upstream failed; the status is
/// then the one a client would have got from that channel alone.
#[derive(Debug, Deserialize, Serialize)]
pub struct TestReport {
    pub namespace: String,
    pub channel: String,
    pub model: String,
    pub ok: bool,
    /// The upstream's HTTP status (502 unreachable, 504 timed out).
    pub status: u16,
    /// From sending until the whole answer or the failure.
    pub latency_ms: u64,
    /// The answer's first characters (at most 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_tokens: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TestError>,
    /// The channel's routing state on this gateway: `healthy`, `ejected`,
    /// `rate_limited` or `unhealthy` (its active health check fails).
    pub state: String,
    /// The active health check's verdict: `unknown` (no check, or none
    /// finished yet), `healthy` or `unhealthy`.
    pub probe: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct TestError {
    pub message: String,
    /// A low-cardinality category (`upstream_error`, `upstream_timeout`...).
    pub code: String,
}

pub(crate) async fn handle(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<TestReport>, ApiError> {
    let asked: TestRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TestRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not a channel test request: {e}"))
        })?
    };
    let live = gw.live();
    // A scan: an admin request, off the request path.
    let channel = live
        .channels
        .iter()
        .find(|c| c.namespace.as_str() == namespace && c.label.as_str() == name)
        .ok_or_else(|| {
            ApiError::not_found(
                "channel_not_found",
                format!("no channel {namespace}/{name} in the gateway's configuration (a disabled or broken Channel is not in it)"),
            )
        })?;
    let model = match &asked.model {
        None => channel.models.first(),
        Some(wanted) => channel.models.iter().find(|m| m.label.as_str() == wanted),
    }
    .ok_or_else(|| {
        let served: Vec<&str> = channel.models.iter().map(|m| m.label.as_str()).collect();
        ApiError::bad_parameter("model", format!("channel {namespace}/{name} serves {}", served.join(", ")))
    })?;
    let prompt = asked.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let max_tokens = asked.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).max(1);
    if max_tokens > MAX_TEST_TOKENS {
        return Err(ApiError::bad_parameter(
            "max_tokens",
            format!("a channel test asks for at most {MAX_TEST_TOKENS} output tokens"),
        ));
    }
    let outcome = exchange(channel, model, prompt, max_tokens, channel.total.min(MAX_WAIT)).await;
    let health = &channel.state.upstream.health;
    let state = health.state(gw.nanos(Instant::now()));
    tracing::info!(%namespace, channel = %name, status = outcome.status(), "channel test");
    let (first_tokens, error) = match &outcome.result {
        Ok(text) => (Some(text.clone()), None),
        Err(e) => (None, Some(TestError { message: e.to_string(), code: e.category().to_owned() })),
    };
    Ok(Json(TestReport {
        namespace,
        channel: name,
        model: model.label.as_str().to_owned(),
        ok: outcome.result.is_ok(),
        status: outcome.status(),
        latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
        first_tokens,
        error,
        state: state.as_str().to_owned(),
        probe: health.probe().as_str().to_owned(),
    }))
}
