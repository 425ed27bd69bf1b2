//! OpenAI-shaped errors: `{"error":{"message","type","param","code"}}` with the
//! HTTP status the OpenAI SDKs map to their typed exceptions (see the error
//! codes in OpenAI's API reference, <https://platform.openai.com/docs/guides/error-codes>);
//! on the Messages routes the same errors in Anthropic's shape,
//! `{"type":"error","error":{"type","message"}}`, which Anthropic's SDKs
//! parse (<https://docs.claude.com/en/api/errors>). The Responses route
//! answers OpenAI's shape, and ends a broken stream with the Responses
//! API's own `error` event.

use std::borrow::Cow;

use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use super::response::{Response, ResponseBody, json};

/// An error answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {category}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// Low-cardinality reason for logs and metrics; OpenAI's `code` for the
    /// gateway's own errors.
    pub category: &'static str,
    pub message: Cow<'static, str>,
    /// What an upstream said, for an error relayed from it (boxed: rare, and
    /// errors travel through every stage's `Result`).
    pub upstream: Option<Box<Relayed>>,
    /// The gateway's own `Retry-After`, in seconds (its rate limits).
    pub retry_after: Option<u64>,
}

/// The upstream's own `type`, `code` and `param`, and its `Retry-After`.
#[derive(Debug, Clone, Default)]
pub struct Relayed {
    pub kind: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after: Option<HeaderValue>,
}

#[derive(Serialize)]
struct Wire<'a> {
    error: Fields<'a>,
}

#[derive(Serialize)]
struct Fields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self { status, kind, category: code, message: message.into(), upstream: None, retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", code, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", "Unknown request URL.")
    }

    pub fn method_not_allowed(method: &http::Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_supported",
            format!("{method} is not supported for this URL."),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds the gateway's limit of {limit} bytes."),
        )
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", code, message)
    }

    pub fn gateway_timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout", message)
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", message)
    }

    /// 429 from the key's own rate limits: OpenAI's `type` (`requests`,
    /// `tokens`) and code `rate_limit_exceeded`; `Retry-After` when waiting helps.
    pub fn rate_limited(kind: &'static str, message: String, retry_after: Option<u64>) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, "rate_limit_exceeded", message);
        error.retry_after = retry_after;
        error
    }

    /// 429 `insufficient_quota` / `budget_exceeded`: the key's (or its
    /// namespace's) budget cannot cover the request, as OpenAI answers an
    /// account out of credit.
    pub fn budget_exceeded(message: String) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "budget_exceeded", message)
    }

    /// An error relayed from an upstream, keeping what it said.
    pub fn relayed(status: StatusCode, category: &'static str, message: String, upstream: Relayed) -> Self {
        let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "invalid_request_error" };
        Self {
            status,
            kind,
            category,
            message: Cow::Owned(message),
            upstream: Some(Box::new(upstream)),
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let fields = match self.upstream.as_deref() {
            Some(u) => Fields {
                message: &self.message,
                kind: u.kind.as_deref().unwrap_or(self.kind),
                param: u.param.as_deref(),
                code: u.code.as_deref(),
            },
            None => Fields { message: &self.message, kind: self.kind, param: None, code: Some(self.category) },
        };
        let wire = Wire { error: fields };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The error as one Server-Sent Event, for a stream that already began:
    /// the OpenAI SDKs raise it instead of taking a cut stream for a whole answer.
    pub fn sse_event(&self) -> Vec<u8> {
        let mut event = b"data: ".to_vec();
        event.extend(self.body());
        event.extend_from_slice(b"\n\n");
        event
    }
}

/// Which API's error shape a client parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's chat completions, embeddings and models.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Responses API: OpenAI's errors; its own stream error event.
    Responses,
}

#[derive(Serialize)]
struct AnthropicWire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicFields<'a>,
}

#[derive(Serialize)]
struct AnthropicFields<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The Responses API's stream `error` event.
#[derive(Serialize)]
struct ResponsesError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
    sequence_number: u64,
}

impl ApiError {
    /// The JSON body in a dialect. Anthropic's `type` is the upstream's when
    /// it is one of Anthropic's, else the one Anthropic gives the status.
    pub fn body_in(&self, dialect: Dialect) -> Vec<u8> {
        match dialect {
            Dialect::OpenAi | Dialect::Responses => self.body(),
            Dialect::Anthropic => {
                let upstream = self.upstream.as_deref().and_then(|u| u.kind.as_deref());
                let kind = upstream
                    .filter(|k| crate::providers::anthropic::wire::is_error_type(k))
                    .unwrap_or_else(|| crate::providers::anthropic::wire::error_type(self.status.as_u16()));
                let wire = AnthropicWire { kind: "error", error: AnthropicFields { kind, message: &self.message } };
                serde_json::to_vec(&wire).unwrap_or_default()
            }
        }
    }

    /// The error as one Server-Sent Event in a dialect: OpenAI's SDKs read
    /// it from the data, Anthropic's from an `error` event.
    pub fn sse_event_in(&self, dialect: Dialect) -> Vec<u8> {
        match dialect {
            Dialect::OpenAi => self.sse_event(),
            Dialect::Responses => {
                // <https://platform.openai.com/docs/api-reference/responses-streaming/error>;
                // the relay does not count the translation's events, so
                // this one says 0.
                let event = ResponsesError {
                    kind: "error",
                    code: self.category,
                    message: &self.message,
                    param: None,
                    sequence_number: 0,
                };
                let mut out = b"event: error\ndata: ".to_vec();
                if serde_json::to_writer(&mut out, &event).is_err() {
                    out.extend_from_slice(b"{}");
                }
                out.extend_from_slice(b"\n\n");
                out
            }
            Dialect::Anthropic => {
                let mut event = b"event: error\ndata: ".to_vec();
                event.extend(self.body_in(dialect));
                event.extend_from_slice(b"\n\n");
                event
            }
        }
    }

    /// The error as the client's response.
    pub(crate) fn response(self) -> Response {
        self.response_in(Dialect::OpenAi)
    }

    /// The error as the client's response, in its dialect.
    pub(crate) fn response_in(self, dialect: Dialect) -> Response {
        let mut response = json(self.status, ResponseBody::whole(self.body_in(dialect)));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        } else if let Some(retry) = self.upstream.and_then(|u| u.retry_after) {
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}
