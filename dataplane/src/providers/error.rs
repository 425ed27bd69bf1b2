//! Upstream failures, typed: whether another attempt may follow, whether the
//! failure counts against the channel's health, and the error the client sees.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use weaver_crds::routing_policy::RetryOn;

use crate::api::{ApiError, Relayed};

/// Longest upstream error message passed on; bodies can be huge (a 100 KiB
/// validation dump), and SDKs print the message whole.
const MAX_MESSAGE_CHARS: usize = 2048;

/// The parts of an upstream error body, whatever its shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorFields {
    pub message: String,
    pub kind: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    error: Option<Inner>,
    // vLLM's older flat shape: {"object":"error","message":...,"type":...,"code":400}
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
    param: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inner {
    Object {
        message: Option<String>,
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
        code: Option<serde_json::Value>,
        param: Option<serde_json::Value>,
        /// Google's `google.rpc.Status` name (`RESOURCE_EXHAUSTED`): its kind.
        status: Option<serde_json::Value>,
    },
    Text(String),
}

/// A string, number or null member as text.
fn text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn truncate(mut message: String) -> String {
    if let Some((at, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(at);
        message.push_str("… (truncated)");
    }
    message
}

impl ErrorFields {
    /// Reads OpenAI's `{"error":{...}}` (and Google's, whose `status` is
    /// the kind), `{"error":"text"}`, vLLM's flat
    /// `{"object":"error","message":...}`, or any other body as plain text.
    pub fn parse(body: &[u8]) -> Self {
        let fields = match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error: Some(Inner::Object { message, kind, code, param, status }), .. }) => Self {
                message: message.unwrap_or_default(),
                kind: text(kind).or(text(status)),
                code: text(code),
                param: text(param),
            },
            Ok(Envelope { error: Some(Inner::Text(message)), .. }) => Self { message, ..Self::default() },
            Ok(Envelope { error: None, message: Some(message), kind, code, param }) => {
                Self { message, kind: text(kind), code: text(code), param: text(param) }
            }
            _ => Self { message: String::from_utf8_lossy(body).trim().to_owned(), ..Self::default() },
        };
        Self { message: truncate(fields.message), ..fields }
    }
}

/// Why one upstream attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("could not be reached: {0}")]
    Connect(String),
    #[error("did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("answered {status}: {}", .error.message)]
    Status { status: StatusCode, error: ErrorFields, retry_after: Option<HeaderValue> },
    #[error("broke off before the answer began: {0}")]
    Body(String),
    /// The request cannot be put in the channel's wire format (content the
    /// provider has no place for, a malformed member): the client's error.
    #[error("cannot take the request: {}", .0.message)]
    Translation(crate::api::ApiError),
}

/// Anthropic's "overloaded" status (<https://docs.claude.com/en/api/errors>).
const OVERLOADED: u16 = 529;

/// Error codes some providers send with a 429 that mean the account's money
/// or quota ran out — not a passing rate limit, and not over in seconds:
/// OpenAI's and Alibaba DashScope's `insufficient_quota`
/// (<https://help.aliyun.com/en/model-studio/error-code-start>); Zhipu's
/// business codes 1113 (arrears), 1304 (daily quota), 1308 and 1310 (usage
/// caps), 1309 (coding plan expired) (<https://docs.bigmodel.cn/cn/api/api-code>).
/// Zhipu's 1302, 1303, 1305 and 1312 (concurrency, frequency, overload) are
/// ordinary rate limits.
const QUOTA_EXHAUSTED: [&str; 6] = ["insufficient_quota", "1113", "1304", "1308", "1309", "1310"];

impl UpstreamError {
    /// The class of failure a routing policy's `retryOn` names, when another
    /// attempt (on another channel, or after a wait) may succeed; `None`
    /// for the client's own mistakes. A refused credential is the channel's
    /// fault (answered 502), so it goes with `5xx`.
    pub fn retry_class(&self) -> Option<RetryOn> {
        match self {
            // A request another channel may take in its own format never left
            // the gateway, like a refused connection.
            UpstreamError::Connect(_) | UpstreamError::Body(_) | UpstreamError::Translation(_) => {
                Some(RetryOn::Connect)
            }
            UpstreamError::Timeout(_) => Some(RetryOn::Timeout),
            UpstreamError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                Some(RetryOn::TooManyRequests)
            }
            UpstreamError::Status { status, .. }
                if status.is_server_error() || matches!(status.as_u16(), 401 | 403) =>
            {
                Some(RetryOn::ServerError)
            }
            UpstreamError::Status { .. } => None,
        }
    }

    /// How long the upstream asked to be left alone: its `Retry-After`
    /// (seconds, or an HTTP date) on a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        let UpstreamError::Status { status, retry_after: Some(value), .. } = self else { return None };
        if !matches!(status.as_u16(), 429 | 503) {
            return None;
        }
        let text = value.to_str().ok()?.trim();
        match text.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => {
                let at = httpdate::parse_http_date(text).ok()?;
                Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
            }
        }
    }

    /// The upstream says it is rate limited (a 429 that will pass).
    pub fn rate_limited(&self) -> bool {
        matches!(self, UpstreamError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS)
            && !self.quota_exhausted()
    }

    /// A 429 whose code says the channel's account ran out of money or
    /// quota ([`QUOTA_EXHAUSTED`]): every request will fail alike until an
    /// operator acts, so it counts against the channel like a refused
    /// credential (another channel may still take the request).
    pub fn quota_exhausted(&self) -> bool {
        matches!(self, UpstreamError::Status { status, error, .. }
            if *status == StatusCode::TOO_MANY_REQUESTS
                && [error.code.as_deref(), error.kind.as_deref()].into_iter().flatten().any(|c| QUOTA_EXHAUSTED.contains(&c)))
    }

    /// The failure says something about the channel's health (a client's bad
    /// request or an upstream rate limit does not; an exhausted quota does).
    pub fn counts_against_channel(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Body(_) => true,
            UpstreamError::Translation(_) => false,
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 401 | 403) || self.quota_exhausted()
            }
        }
    }

    /// A low-cardinality reason, for records and logs.
    pub fn category(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream_unreachable",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::Body(_) => "upstream_body_error",
            UpstreamError::Translation(e) => e.category,
            UpstreamError::Status { status, .. } => match status.as_u16() {
                401 | 403 => "upstream_auth_failed",
                429 if self.quota_exhausted() => "upstream_quota_exhausted",
                429 => "upstream_rate_limited",
                OVERLOADED => "upstream_overloaded",
                400..=499 => "upstream_client_error",
                _ => "upstream_error",
            },
        }
    }

    /// The HTTP status the attempt ended with, as the record keeps it.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Body(_) => 502,
            UpstreamError::Timeout(_) => 504,
            UpstreamError::Translation(e) => e.status.as_u16(),
            UpstreamError::Status { status, .. } => status.as_u16(),
        }
    }

    /// A 400 that names a request member the upstream does not accept
    /// (Azure: "Unrecognized request argument supplied: stream_options").
    pub fn refuses_member(&self, member: &str) -> bool {
        matches!(self, UpstreamError::Status { status, error, .. }
            if *status == StatusCode::BAD_REQUEST && error.message.contains(member))
    }

    /// The error the client sees. Client mistakes keep their status and the
    /// upstream's message; a refused channel credential is the operator's
    /// problem (502, not the client's 401); upstream failures are 502/504.
    pub fn into_api_error(self, channel: &str) -> ApiError {
        let category = self.category();
        match self {
            UpstreamError::Connect(why) => {
                ApiError::bad_gateway(category, format!("Channel `{channel}` could not be reached: {why}"))
            }
            UpstreamError::Timeout(limit) => ApiError::gateway_timeout(format!(
                "Channel `{channel}` did not answer within {}.",
                humantime::format_duration(limit)
            )),
            UpstreamError::Body(why) => {
                ApiError::bad_gateway(category, format!("The answer of channel `{channel}` broke off: {why}"))
            }
            UpstreamError::Translation(error) => error,
            // Retryable and not the caller's doing: 503, as for no channel.
            UpstreamError::Status { status, error, .. } if status.as_u16() == OVERLOADED => ApiError::unavailable(
                category,
                format!(
                    "Channel `{channel}` is overloaded: {}",
                    if error.message.is_empty() { "try again" } else { &error.message }
                ),
            ),
            UpstreamError::Status { status, .. } if matches!(status.as_u16(), 401 | 403) => ApiError::bad_gateway(
                category,
                format!("Channel `{channel}` was refused by its upstream ({status}); check its credentials."),
            ),
            UpstreamError::Status { status, error, retry_after } if status.is_client_error() => {
                let message = if error.message.is_empty() {
                    format!("Channel `{channel}` answered {status}.")
                } else {
                    error.message
                };
                let upstream = Relayed { kind: error.kind, code: error.code, param: error.param, retry_after };
                ApiError::relayed(status, category, message, upstream)
            }
            UpstreamError::Status { status, error, .. } => ApiError::bad_gateway(
                category,
                if error.message.is_empty() {
                    format!("Channel `{channel}` answered {status}.")
                } else {
                    format!("Channel `{channel}` answered {status}: {}", error.message)
                },
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_shape_keeps_its_message() {
        let openai = ErrorFields::parse(
            br#"{"error":{"message":"bad","type":"invalid_request_error","param":"x","code":null}}"#,
        );
        assert_eq!(
            (openai.message.as_str(), openai.kind.as_deref(), openai.param.as_deref()),
            ("bad", Some("invalid_request_error"), Some("x"))
        );
        assert_eq!(openai.code, None);
        let flat = ErrorFields::parse(
            br#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#,
        );
        assert_eq!((flat.message.as_str(), flat.code.as_deref()), ("too long", Some("400")));
        assert_eq!(ErrorFields::parse(b"upstream says no\n").message, "upstream says no");
        assert_eq!(ErrorFields::parse(br#"{"error":"plain"}"#).message, "plain");
        let huge = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(100 * 1024));
        assert!(ErrorFields::parse(huge.as_bytes()).message.len() < 3000);
    }

    fn status(code: u16) -> UpstreamError {
        UpstreamError::Status {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            error: ErrorFields { message: "m".into(), ..ErrorFields::default() },
            retry_after: None,
        }
    }

    #[test]
    fn client_errors_keep_their_status_and_upstream_failures_are_502() {
        assert_eq!(status(400).into_api_error("c").status, StatusCode::BAD_REQUEST);
        assert_eq!(status(429).into_api_error("c").kind, "rate_limit_error");
        assert_eq!(status(429).into_api_error("c").status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(401).into_api_error("c").status, StatusCode::BAD_GATEWAY);
        assert_eq!(status(503).into_api_error("c").status, StatusCode::BAD_GATEWAY);
        assert!(status(503).retry_class() == Some(RetryOn::ServerError) && status(503).counts_against_channel());
        assert!(status(429).retry_class() == Some(RetryOn::TooManyRequests) && !status(429).counts_against_channel());
        assert!(status(400).retry_class().is_none() && !status(400).counts_against_channel());
        assert_eq!(status(401).retry_class(), Some(RetryOn::ServerError));
        assert_eq!(UpstreamError::Timeout(Duration::from_secs(1)).retry_class(), Some(RetryOn::Timeout));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let with = |code: u16, value: &'static str| UpstreamError::Status {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            error: ErrorFields::default(),
            retry_after: Some(HeaderValue::from_static(value)),
        };
        assert_eq!(with(429, "7").retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(with(503, " 2 ").retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(with(429, "Wed, 21 Oct 2015 07:28:00 GMT").retry_after(), Some(Duration::ZERO), "a past date");
        assert_eq!(with(500, "7").retry_after(), None);
        assert_eq!(with(429, "soon").retry_after(), None);
    }

    #[test]
    fn overloaded_is_a_retryable_503() {
        let overloaded = status(529);
        assert!(overloaded.retry_class() == Some(RetryOn::ServerError) && overloaded.counts_against_channel());
        assert_eq!(overloaded.category(), "upstream_overloaded");
        assert_eq!(overloaded.into_api_error("c").status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn an_exhausted_quota_is_no_rate_limit_and_counts_against_the_channel() {
        let with = |body: &[u8]| UpstreamError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: ErrorFields::parse(body),
            retry_after: None,
        };
        // Zhipu: arrears (1113), with its business code as a string.
        let arrears = with(r#"{"error":{"code":"1113","message":"您的账户已欠费，请充值后重试。"}}"#.as_bytes());
        // Alibaba DashScope (compatible mode): the quota ran out.
        let dashscope = with(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"},"request_id":"r1"}"#,
        );
        for exhausted in [&arrears, &dashscope] {
            assert!(exhausted.quota_exhausted() && !exhausted.rate_limited());
            assert!(exhausted.counts_against_channel());
            assert_eq!(exhausted.category(), "upstream_quota_exhausted");
            assert_eq!(exhausted.retry_class(), Some(RetryOn::TooManyRequests), "another channel may take it");
        }
        assert_eq!(arrears.into_api_error("c").status, StatusCode::TOO_MANY_REQUESTS, "the client still sees a 429");
        // Zhipu's concurrency limit (1302) and DashScope's rate quota are ordinary rate limits.
        for busy in [
            with(r#"{"error":{"code":"1302","message":"并发数过高"}}"#.as_bytes()),
            with(br#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded","request_id":"r2"}"#),
        ] {
            assert!(busy.rate_limited() && !busy.counts_against_channel(), "{busy}");
            assert_eq!(busy.category(), "upstream_rate_limited");
        }
    }

    #[test]
    fn anthropic_error_bodies_keep_their_type_and_message() {
        let body =
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_1"}"#;
        let fields = ErrorFields::parse(body);
        assert_eq!((fields.kind.as_deref(), fields.message.as_str()), (Some("rate_limit_error"), "slow down"));
    }
}
