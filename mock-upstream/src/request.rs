//! What the upstream reads from a request: the presented key and the JSON body.

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::error::UpstreamError;

/// The API key a client presented: `Authorization: Bearer <key>` (OpenAI), or
/// `api-key: <key>` (Azure OpenAI) when there is no `Authorization` header.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let (scheme, key) = value.to_str().ok()?.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A chat or embeddings request body.
#[derive(Debug)]
pub(crate) struct Request {
    members: Map<String, Value>,
    /// `model`, as the client named it.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
}

impl Request {
    /// Parses the body; 400 (as OpenAI words it) unless it is a JSON object
    /// with a non-empty string `model` and a boolean or null `stream`.
    pub fn parse(body: &[u8]) -> Result<Self, UpstreamError> {
        let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(body) else {
            return Err(UpstreamError::invalid_json());
        };
        let model = match members.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => return Err(UpstreamError::missing("model")),
            Some(_) => return Err(UpstreamError::invalid_type("model", "a string")),
        };
        let stream = match members.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(UpstreamError::invalid_type("stream", "a boolean")),
        };
        Ok(Self { members, model, stream })
    }

    /// A top-level member.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.members.get(name)
    }

    /// Whether the body has a `stream_options` member at all.
    pub fn has_stream_options(&self) -> bool {
        self.members.contains_key("stream_options")
    }

    /// `stream_options.include_usage: true`.
    pub fn include_usage(&self) -> bool {
        self.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
    }

    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_tokens(&self) -> Option<usize> {
        ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| self.get(k).and_then(Value::as_u64))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn keys_come_from_bearer_or_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("api-key", HeaderValue::from_static(" sk-azure "));
        assert_eq!(presented_key(&h), Some("sk-azure"));
        h.insert("authorization", HeaderValue::from_static("bearer sk-a"));
        assert_eq!(presented_key(&h), Some("sk-a"), "Authorization wins");
        h.insert("authorization", HeaderValue::from_static("Basic dXNlcg=="));
        assert_eq!(presented_key(&h), None, "a non-bearer Authorization is no key");
    }

    #[test]
    fn bodies_are_checked_like_openai_does() {
        for (body, status_param) in [
            (&b"not json"[..], None),
            (b"[1]", None),
            (b"{}", Some("model")),
            (br#"{"model":""}"#, Some("model")),
            (br#"{"model":4}"#, Some("model")),
            (br#"{"model":"m","stream":"yes"}"#, Some("stream")),
        ] {
            match Request::parse(body) {
                Err(e) => assert_eq!((e.status.as_u16(), e.param), (400, status_param)),
                Ok(r) => panic!("{r:?} must be rejected"),
            }
        }
        let r = Request::parse(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":3,"max_completion_tokens":2}"#)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(r.stream && r.include_usage() && r.has_stream_options());
        assert_eq!(r.max_tokens(), Some(2));
    }
}
