//! The usage record: one per request that reached authentication, success or not.

use serde::{Deserialize, Serialize};
use weaver_crds::money::Usd;

use crate::Name;

/// How a request ended, from the client's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the answer reached the client.
    Ok,
    /// Every attempt failed, or the upstream failed mid-stream.
    UpstreamError,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// The gateway refused the request (bad key, limits, budget, unknown model).
    Rejected,
}

impl Outcome {
    /// The name used in JSON, in the database and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Rejected => "rejected",
        }
    }

    /// The inverse of [`Outcome::as_str`].
    pub fn parse(text: &str) -> Option<Outcome> {
        [Outcome::Ok, Outcome::UpstreamError, Outcome::ClientAborted, Outcome::Rejected]
            .into_iter()
            .find(|o| o.as_str() == text)
    }

    /// Whether the request counts as an error in summaries and success rates: the
    /// service failed or refused it. A client that went away is not an error.
    pub fn is_error(self) -> bool {
        matches!(self, Outcome::UpstreamError | Outcome::Rejected)
    }
}

/// One upstream attempt of a request (a request with failover has several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The Channel tried.
    pub channel: Name,
    /// HTTP status the upstream answered (or the gateway mapped a transport failure to).
    pub status: u16,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    /// Time to the first byte of the answer, in milliseconds.
    pub ttft_ms: Option<u64>,
}

/// One request as metered. The serde form is the complete record (used by the
/// spool); the usage API's JSON form is [`UsageRecord::api`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unique per request (always the gateway's own id, never the client's);
    /// with `time`, makes inserts idempotent.
    pub request_id: String,
    /// The id the client chose for the request (`x-client-request-id`, or its
    /// own `x-request-id`), when it sent one. Not unique: clients reuse ids.
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// When the request arrived, in unix milliseconds (UTC).
    pub time: i64,
    pub namespace: Name,
    /// ApiKey name; empty when the request was not authenticated.
    pub api_key: Name,
    /// The Channel that answered (the last attempt's), if any.
    pub channel: Option<Name>,
    /// Public model name; empty when no model matched.
    pub model: Name,
    pub upstream_model: Name,
    /// HTTP status sent to the client.
    pub status: u16,
    pub outcome: Outcome,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    /// Part of `output_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
    /// Tokens were counted by the gateway because the upstream reported none.
    pub estimated: bool,
    /// Cost in nano-dollars.
    pub cost_nanos: u64,
    /// Whole request, in milliseconds.
    pub duration_ms: u64,
    /// Time to the first byte of the answer, in milliseconds.
    pub ttft_ms: Option<u64>,
    /// The gateway replica that served the request.
    pub replica: Name,
    pub attempts: Vec<AttemptRecord>,
    /// The request's and the answer's bodies, for keys that log them. Stored in
    /// a table of their own (read with [`UsageStore::bodies`](crate::UsageStore::bodies)),
    /// so record queries never read them; `None` in records read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies: Option<Bodies>,
}

/// The bodies of one request as logged: secrets redacted, each cut to the
/// key's cap (in bytes, on a character boundary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bodies {
    /// The client's request body.
    pub request: String,
    /// The request body was longer than what is stored.
    pub request_truncated: bool,
    /// The answer as the upstream sent it: a JSON body, or a stream's SSE text.
    pub response: String,
    /// The answer was longer than what is stored.
    pub response_truncated: bool,
}

impl UsageRecord {
    /// The usage API's JSON form of this record.
    pub fn api(&self) -> ApiRecord<'_> {
        ApiRecord(self)
    }
}

/// The usage API's JSON form of a record: `time` as an RFC 3339 string, `cost_usd`
/// as a decimal string (`"0.000123"`), and without the fields only operators need
/// (`replica`, `cache_write_tokens`).
#[derive(Clone, Copy, Debug)]
pub struct ApiRecord<'a>(&'a UsageRecord);

impl Serialize for ApiRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = self.0;
        let time = jiff::Timestamp::from_millisecond(r.time).map_err(serde::ser::Error::custom)?;
        let mut s = serializer.serialize_struct("UsageRecord", 18)?;
        s.serialize_field("request_id", &r.request_id)?;
        s.serialize_field("client_request_id", &r.client_request_id)?;
        s.serialize_field("time", &time.to_string())?;
        s.serialize_field("namespace", &r.namespace)?;
        s.serialize_field("api_key", &r.api_key)?;
        s.serialize_field("channel", &r.channel)?;
        s.serialize_field("model", &r.model)?;
        s.serialize_field("upstream_model", &r.upstream_model)?;
        s.serialize_field("status", &r.status)?;
        s.serialize_field("outcome", &r.outcome)?;
        s.serialize_field("input_tokens", &r.input_tokens)?;
        s.serialize_field("output_tokens", &r.output_tokens)?;
        s.serialize_field("cached_input_tokens", &r.cached_input_tokens)?;
        s.serialize_field("reasoning_tokens", &r.reasoning_tokens)?;
        s.serialize_field("estimated", &r.estimated)?;
        s.serialize_field("cost_usd", &Usd(r.cost_nanos).to_string())?;
        s.serialize_field("duration_ms", &r.duration_ms)?;
        s.serialize_field("ttft_ms", &r.ttft_ms)?;
        s.serialize_field("attempts", &r.attempts)?;
        s.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> UsageRecord {
        UsageRecord {
            request_id: "req-1".into(),
            client_request_id: None,
            time: 1_700_000_000_123,
            namespace: "team-a".into(),
            api_key: "ci".into(),
            channel: Some("openai".into()),
            model: "gpt-4o-mini".into(),
            upstream_model: "gpt-4o-mini-2024-07-18".into(),
            status: 200,
            outcome: Outcome::Ok,
            input_tokens: 1200,
            output_tokens: 300,
            cached_input_tokens: 200,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            estimated: false,
            cost_nanos: 123_000,
            duration_ms: 850,
            ttft_ms: Some(120),
            replica: "gw-0".into(),
            attempts: vec![AttemptRecord { channel: "openai".into(), status: 200, error: None, ttft_ms: Some(120) }],
            bodies: None,
        }
    }

    #[test]
    fn api_json_uses_the_documented_names() {
        let json = serde_json::to_value(sample().api()).unwrap_or_default();
        let expected = serde_json::json!({
            "request_id": "req-1",
            "client_request_id": null,
            "time": "2023-11-14T22:13:20.123Z",
            "namespace": "team-a",
            "api_key": "ci",
            "channel": "openai",
            "model": "gpt-4o-mini",
            "upstream_model": "gpt-4o-mini-2024-07-18",
            "status": 200,
            "outcome": "ok",
            "input_tokens": 1200,
            "output_tokens": 300,
            "cached_input_tokens": 200,
            "reasoning_tokens": 0,
            "estimated": false,
            "cost_usd": "0.000123",
            "duration_ms": 850,
            "ttft_ms": 120,
            "attempts": [{"channel": "openai", "status": 200, "error": null, "ttft_ms": 120}],
        });
        assert_eq!(json, expected);
    }

    #[test]
    fn outcomes_round_trip_through_their_names() {
        for o in [Outcome::Ok, Outcome::UpstreamError, Outcome::ClientAborted, Outcome::Rejected] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).ok(), Some(serde_json::Value::String(o.as_str().into())));
        }
        assert_eq!(Outcome::parse("nope"), None);
    }
}
