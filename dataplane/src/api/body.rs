//! The client's body: read under a size limit, then parsed only as deep as
//! routing needs. Top-level members are kept as raw byte slices, so everything
//! the gateway does not touch goes upstream exactly as the client wrote it.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::error::ApiError;
use crate::parts::Parts;

/// Reads a body of at most `limit` bytes; 413 past it.
pub(crate) async fn read<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    // Most bodies arrive in one frame: keep it as it is; copy only when more follow.
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request("invalid_body", format!("The request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        let len = first.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, BytesMut::len) + data.len();
        if len > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        match (&first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(declared.map_or(len, |n| n as usize));
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(more.map(BytesMut::freeze).or(first).unwrap_or_default())
}

/// A request body's top level.
pub(crate) struct RequestBody<'a> {
    members: Members<'a>,
    /// `model` as sent.
    pub model: Cow<'a, str>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
}

/// How the upstream body differs from the client's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rewrite<'m> {
    /// Replaces `model` (the channel maps the public name to another): the
    /// new name as a JSON string, quotes included.
    pub model: Option<&'m Bytes>,
    /// What happens to `stream_options`.
    pub stream_options: StreamOptionsEdit,
}

/// The gateway meters every stream, so it asks for stream usage on the
/// client's behalf — unless the upstream refuses the member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum StreamOptionsEdit {
    /// Forward as the client sent it.
    #[default]
    Keep,
    /// Set `include_usage: true`, keeping the client's other members
    /// (`include_obfuscation`, vLLM's `continuous_usage_stats`...).
    IncludeUsage,
    /// Leave the member out: the upstream refuses it by name.
    Remove,
}

impl<'a> RequestBody<'a> {
    /// Parses a chat or embeddings body; 400 when it is not a JSON object with a
    /// string `model`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApiError> {
        let TopLevel(members) = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("The request body is not a JSON object: {e}"))
        })?;
        let find = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let model = match find("model") {
            Some(raw) => Key::deserialize(raw)
                .map(|Key(k)| k)
                .map_err(|_| ApiError::bad_request("invalid_model", "`model` must be a string."))?,
            None => {
                return Err(ApiError::bad_request("missing_model", "You must provide a model parameter."));
            }
        };
        if model.is_empty() {
            return Err(ApiError::bad_request("missing_model", "You must provide a model parameter."));
        }
        let stream = match find("stream") {
            None => false,
            Some(raw) => Option::<bool>::deserialize(raw)
                .map_err(|_| ApiError::bad_request("invalid_stream", "`stream` must be a boolean."))?
                .unwrap_or(false),
        };
        let include_usage = find("stream_options")
            .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
            .is_some_and(|o| o.include_usage == Some(true));
        Ok(Self { members, model, stream, include_usage })
    }

    /// 400 unless `messages` is a non-empty array, as OpenAI's chat
    /// completions and Anthropic's Messages API require (codes and wording
    /// as OpenAI answers them). Checked before routing, so a malformed
    /// request never reaches a channel nor counts in its error rate; only
    /// the shape is looked at, not each message.
    pub fn require_messages(&self) -> Result<(), ApiError> {
        let Some(raw) = self.get("messages") else {
            return Err(ApiError::bad_request("missing_required_parameter", "Missing required parameter: 'messages'."));
        };
        let Some(inside) = raw.get().strip_prefix('[') else {
            return Err(ApiError::bad_request(
                "invalid_type",
                "Invalid type for 'messages': expected an array of objects.",
            ));
        };
        if inside.trim_start().starts_with(']') {
            return Err(ApiError::bad_request(
                "empty_array",
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            ));
        }
        Ok(())
    }

    /// 400 unless `max_tokens` is given, as Anthropic's Messages API
    /// requires (its answer's wording); checked before routing like
    /// [`Self::require_messages`], whatever channel would answer.
    pub fn require_max_tokens(&self) -> Result<(), ApiError> {
        match self.get("max_tokens") {
            Some(raw) if raw.get() != "null" => Ok(()),
            _ => Err(ApiError::bad_request("missing_required_parameter", "max_tokens: Field required")),
        }
    }

    /// The raw JSON of a top-level member.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// A top-level member, parsed (borrowing from the body where it can);
    /// `None` when absent or `null`, 400 when it is not a `T`.
    pub fn member<T: Deserialize<'a>>(&self, name: &'static str) -> Result<Option<T>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| ApiError::bad_request("invalid_request", format!("`{name}` is malformed: {e}"))),
        }
    }

    /// The body upstream: the client's bytes when nothing changes, else the
    /// top-level members re-joined (never re-serialised) with the edits.
    pub fn upstream_body(&self, original: &Bytes, edit: Rewrite<'_>) -> Parts {
        let options_change = match edit.stream_options {
            StreamOptionsEdit::Keep => false,
            StreamOptionsEdit::IncludeUsage => !self.include_usage,
            StreamOptionsEdit::Remove => self.get("stream_options").is_some(),
        };
        match (edit.model, self.get("model")) {
            (None, _) if !options_change => return Parts::whole(original.clone()),
            // Only the model changes: the new name between the untouched slices.
            (Some(model), Some(raw)) if !options_change => {
                let start = (raw.get().as_ptr() as usize).wrapping_sub(original.as_ptr() as usize);
                if original.get(start..start + raw.get().len()) == Some(raw.get().as_bytes()) {
                    return Parts::splice(original, start..start + raw.get().len(), model.clone());
                }
            }
            _ => {}
        }
        let include_usage = options_change && edit.stream_options == StreamOptionsEdit::IncludeUsage;
        let merged = self.get("stream_options").filter(|_| include_usage).map(with_include_usage);
        let added: Option<&[u8]> = (include_usage && merged.is_none()).then_some(br#"{"include_usage":true}"#);
        let members = self.members.iter().filter_map(|(key, value)| match key.as_ref() {
            "model" => Some((key.as_ref(), edit.model.map_or(value.get().as_bytes(), |m| &m[..]))),
            "stream_options" if options_change => merged.as_deref().map(|m| (key.as_ref(), m)),
            _ => Some((key.as_ref(), value.get().as_bytes())),
        });
        let members = members.chain(added.map(|a| ("stream_options", a)));
        // The exact length, so the buffer becomes `Bytes` without another copy.
        let (count, length) = members.clone().fold((0, 0), |(n, len), (k, v)| (n + 1, len + key_len(k) + 1 + v.len()));
        let mut out = Vec::with_capacity(2 + length + count.max(1) - 1);
        out.push(b'{');
        for (key, value) in members {
            push_member(&mut out, key, value);
        }
        out.push(b'}');
        Parts::whole(Bytes::from(out))
    }
}

/// The length of a member name written as a JSON string.
fn key_len(key: &str) -> usize {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        key.len() + 2
    } else {
        serde_json::to_vec(key).map_or(key.len() + 2, |k| k.len())
    }
}

fn push_member(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    if out.len() > 1 {
        out.push(b',');
    }
    // Keys were unescaped while parsing, so they are re-escaped here.
    serde_json::to_writer(&mut *out, key).unwrap_or_default();
    out.push(b':');
    out.extend_from_slice(value);
}

/// The client's `stream_options` object with `include_usage` set to true and
/// every other member kept byte for byte (a non-object is replaced).
fn with_include_usage(raw: &RawValue) -> Vec<u8> {
    let mut out = vec![b'{'];
    if let Ok(TopLevel(members)) = serde_json::from_str::<TopLevel<'_>>(raw.get()) {
        for (key, value) in members.iter().filter(|(k, _)| k != "include_usage") {
            push_member(&mut out, key, value.get().as_bytes());
        }
    }
    push_member(&mut out, "include_usage", b"true");
    out.push(b'}');
    out
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A body's top-level members, in order; chat bodies have a dozen or so, kept
/// on the stack.
type Members<'a> = SmallVec<[(Cow<'a, str>, &'a RawValue); 16]>;

struct TopLevel<'a>(Members<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = TopLevel<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Members::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    // Parsers disagree on which copy of a repeated member wins
                    // (many take the last); checking one copy and forwarding
                    // both would let a body pass as one model and run as another.
                    if members.iter().any(|(k, _): &(Cow<'_, str>, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("duplicate member `{key}`")));
                    }
                    members.push((key, value));
                }
                Ok(TopLevel(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A member name, borrowed from the body unless it contains escapes (serde's
/// own `Cow<str>` always allocates).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(body: &'static [u8], edit: Rewrite<'_>) -> Result<String, ApiError> {
        let original = Bytes::from_static(body);
        let parsed = RequestBody::parse(body)?;
        Ok(String::from_utf8_lossy(&parsed.upstream_body(&original, edit).contiguous()).into_owned())
    }

    #[test]
    fn reads_routing_fields_and_keeps_the_rest_byte_for_byte() -> Result<(), ApiError> {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.70,"stream":true}"#;
        let parsed = RequestBody::parse(body)?;
        assert_eq!(parsed.model, "gpt-4o");
        assert!(parsed.stream);
        assert!(!parsed.include_usage);
        let model = Bytes::from_static(br#""gpt-4o-2024-08-06""#);
        let edit = Rewrite { model: Some(&model), stream_options: StreamOptionsEdit::IncludeUsage };
        assert_eq!(
            upstream(body, edit)?,
            r#"{"model":"gpt-4o-2024-08-06","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.70,"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(upstream(body, Rewrite::default())?.as_bytes(), body);
        let only_model = Rewrite { model: Some(&model), stream_options: StreamOptionsEdit::Keep };
        assert_eq!(
            upstream(body, only_model)?,
            r#"{"model":"gpt-4o-2024-08-06","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.70,"stream":true}"#
        );
        Ok(())
    }

    #[test]
    fn stream_options_are_merged_not_replaced() -> Result<(), ApiError> {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false,"continuous_usage_stats":true}}"#;
        let edit = Rewrite { model: None, stream_options: StreamOptionsEdit::IncludeUsage };
        assert_eq!(
            upstream(body, edit)?,
            r#"{"model":"m","stream":true,"stream_options":{"include_obfuscation":false,"continuous_usage_stats":true,"include_usage":true}}"#
        );
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(upstream(asked, edit)?.as_bytes(), asked, "nothing to change");
        let remove = Rewrite { model: None, stream_options: StreamOptionsEdit::Remove };
        assert_eq!(upstream(body, remove)?, r#"{"model":"m","stream":true}"#);
        Ok(())
    }

    #[test]
    fn client_stream_options_are_honoured() -> Result<(), ApiError> {
        let parsed = RequestBody::parse(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#)?;
        assert!(parsed.include_usage);
        let parsed = RequestBody::parse(br#"{"model":"m","stream":true,"stream_options":{"include_usage":null}}"#)?;
        assert!(!parsed.include_usage);
        Ok(())
    }

    #[test]
    fn malformed_bodies_are_400_with_a_reason() {
        for (body, code) in [
            (&b"not json"[..], "invalid_json"),
            (b"[1,2]", "invalid_json"),
            (b"{\"messages\":[]}", "missing_model"),
            (b"{\"model\":\"\"}", "missing_model"),
            (b"{\"model\":42}", "invalid_model"),
            (b"{\"model\":\"m\",\"stream\":\"yes\"}", "invalid_stream"),
            (b"{\"model\":\"cheap\",\"model\":\"dear\"}", "invalid_json"),
            (b"{\"model\":\"m\",\"stream\":false,\"stream\":true}", "invalid_json"),
        ] {
            match RequestBody::parse(body) {
                Err(e) => {
                    assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
                    assert_eq!(e.category, code, "{}", String::from_utf8_lossy(body));
                }
                Ok(_) => panic!("{} must be rejected", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn messages_must_be_a_non_empty_array() -> Result<(), ApiError> {
        for (body, code) in [
            (r#"{"model":"m"}"#, "missing_required_parameter"),
            (r#"{"model":"m","messages":"hi"}"#, "invalid_type"),
            (r#"{"model":"m","messages":null}"#, "invalid_type"),
            (r#"{"model":"m","messages":[ ]}"#, "empty_array"),
        ] {
            let error = RequestBody::parse(body.as_bytes())?.require_messages().err();
            assert_eq!(error.map(|e| (e.status, e.category)), Some((http::StatusCode::BAD_REQUEST, code)), "{body}");
        }
        RequestBody::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)?.require_messages()
    }

    #[test]
    fn max_tokens_must_be_given() -> Result<(), ApiError> {
        for body in [r#"{"model":"m"}"#, r#"{"model":"m","max_tokens":null}"#] {
            let error = RequestBody::parse(body.as_bytes())?.require_max_tokens().err();
            assert_eq!(
                error.map(|e| (e.status, e.message)),
                Some((http::StatusCode::BAD_REQUEST, "max_tokens: Field required".into()))
            );
        }
        RequestBody::parse(br#"{"model":"m","max_tokens":1}"#)?.require_max_tokens()
    }
}
