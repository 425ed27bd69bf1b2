//! The OpenAI wire format and its family: OpenAI, Azure OpenAI, Mistral, Zhipu,
//! Qwen (compatible mode), ERNIE (Qianfan v2), Ollama, vLLM and any
//! OpenAI-compatible server. They differ in URL layout and auth header; their
//! answers are decoded here (usage, the public model name, the stream's
//! usage chunk, a JSON answer to a streamed request). Wire reference:
//! <https://platform.openai.com/docs/api-reference/chat>.

use std::sync::{Arc, LazyLock};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use memchr::memmem;
use weaver_crds::Provider;
use weaver_crds::snapshot::{ChannelSnapshot, ModelSnapshot};

use super::{ErrorFields, EventAction, Operation};
use crate::metering::{OpenAiUsage, Usage};
use crate::parts::Parts;

/// The upstream URL of one operation for one model.
pub(crate) fn url(channel: &ChannelSnapshot, model: &ModelSnapshot, operation: Operation) -> String {
    let base = &channel.base_url;
    match (channel.provider, &channel.azure_api_version) {
        // Azure's dated Responses API names the deployment in the body only.
        (Provider::AzureOpenai, Some(version)) if operation == Operation::Responses => {
            format!("{base}/openai/responses?api-version={version}")
        }
        // Dated Azure API: the deployment is in the path, the version in the query.
        (Provider::AzureOpenai, Some(version)) => {
            format!("{base}/openai/deployments/{}{}?api-version={version}", model.upstream, operation.path())
        }
        (Provider::AzureOpenai, None) => format!("{base}/openai/v1{}", operation.path()),
        _ => format!("{base}{}", operation.path()),
    }
}

/// The header that carries the channel's credential.
fn auth_header(channel: &ChannelSnapshot) -> Option<(HeaderName, HeaderValue)> {
    let credential = channel.credential.as_ref()?;
    let (name, value) = match channel.provider {
        Provider::AzureOpenai => (HeaderName::from_static("api-key"), credential.0.clone()),
        _ => (http::header::AUTHORIZATION, format!("Bearer {}", credential.0)),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// Every upstream request's headers: host, content type, user agent, the
/// channel's extra headers, and its credential.
pub(crate) fn headers(channel: &ChannelSnapshot) -> HeaderMap {
    let mut headers = common_headers(channel);
    if let Some((name, value)) = auth_header(channel) {
        headers.insert(name, value);
    }
    headers
}

/// The headers every wire format sends: host, content type, user agent
/// and the channel's extra headers.
pub(crate) fn common_headers(channel: &ChannelSnapshot) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Every URL of a channel is below its base URL, so they share the host.
    if let Some(host) = channel.base_url.parse::<http::Uri>().ok().and_then(|u| u.authority().cloned())
        && let Ok(value) = HeaderValue::from_str(host.as_str())
    {
        headers.insert(http::header::HOST, value);
    }
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(http::header::USER_AGENT, HeaderValue::from_static("llm-weaver"));
    for (name, value) in &channel.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            headers.insert(n, v);
        }
    }
    headers
}

/// Answers name the model upstream ran (an Azure deployment such as
/// `eastus-prod-deploy-7f3a`); clients get the name they asked for.
#[derive(Debug)]
pub(crate) struct ModelRename {
    /// The upstream name as a JSON string, quotes included.
    from: Bytes,
    to: Bytes,
}

impl ModelRename {
    /// The upstream name as a JSON string (for the request body).
    pub fn upstream_json(&self) -> &Bytes {
        &self.from
    }

    /// `None` when the names are the same.
    pub fn new(public: &str, upstream: &str) -> Option<Arc<Self>> {
        (public != upstream).then(|| {
            Arc::new(Self {
                from: Bytes::from(serde_json::to_vec(upstream).unwrap_or_default()),
                to: Bytes::from(serde_json::to_vec(public).unwrap_or_default()),
            })
        })
    }

    /// `json` with the first `"model": <from>` member's value replaced, or
    /// `None` when there is none. Quotes inside JSON strings are escaped, so
    /// the unescaped pattern only matches a real member.
    pub fn apply(&self, json: &[u8]) -> Option<Vec<u8>> {
        let start = self.find(json)?;
        // Exactly sized, so the result becomes `Bytes` without another copy.
        let mut out = Vec::with_capacity(json.len() - self.from.len() + self.to.len());
        out.extend_from_slice(&json[..start]);
        out.extend_from_slice(&self.to);
        out.extend_from_slice(&json[start + self.from.len()..]);
        Some(out)
    }

    /// Where the upstream name to replace starts in `json`.
    fn find(&self, json: &[u8]) -> Option<usize> {
        for at in MODEL.find_iter(json) {
            let rest = &json[at + 7..];
            let skip = rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))?;
            if rest[skip] != b':' {
                continue;
            }
            let after_colon = &rest[skip + 1..];
            let ws = after_colon.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))?;
            if after_colon[ws..].starts_with(&self.from) {
                return Some(at + 7 + skip + 1 + ws);
            }
        }
        None
    }
}

/// The `usage` object of a complete answer (OpenAI puts usage after the
/// choices).
fn whole_usage(body: &[u8]) -> Option<Usage> {
    last_usage_object(body).and_then(OpenAiUsage::read).map(Usage::from)
}

/// The last `"usage"` member whose value is an object, read where it
/// stands rather than by parsing the whole body.
pub(crate) fn last_usage_member<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    let object = last_usage_object(body)?;
    T::deserialize(&mut serde_json::Deserializer::from_slice(object)).ok()
}

/// The body from the `{` of the last `"usage"` member whose value is an
/// object. Found searching forward (memchr's forward search is vectorised,
/// its reverse one goes byte by byte: a sixth of a plain answer's usage
/// reading in callgrind), keeping the last match.
fn last_usage_object(body: &[u8]) -> Option<&[u8]> {
    let mut last = None;
    for at in USAGE.find_iter(body) {
        if !opens_member(body, at) {
            continue;
        }
        let rest = &body[at + USAGE_KEY.len()..];
        // Nothing after the key: the body is cut short.
        let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest[colon] != b':' {
            continue;
        }
        let value = &rest[colon + 1..];
        let open = value.iter().position(|b| !b.is_ascii_whitespace())?;
        if value[open] == b'{' {
            last = Some(&value[open..]);
        }
    }
    last
}

/// Whether the quote at `at` opens a member's key: the byte before it
/// (past whitespace) is `{` or `,`. Text inside a string cannot match the
/// pattern (its quotes are escaped), but the end of a key can: the key
/// `"\"usage"` holds `"usage"`, preceded by a backslash; a member's own
/// opening quote never is.
fn opens_member(json: &[u8], at: usize) -> bool {
    json[..at].iter().rev().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b','))
}

/// A complete answer: the client's body in order (with the model renamed, the
/// public name between two slices of the upstream's bytes) and its usage.
pub(crate) fn decode_whole(body: Bytes, rename: Option<&ModelRename>) -> (Parts, Option<Usage>) {
    let usage = whole_usage(&body);
    (renamed(body, rename), usage)
}

/// A complete answer with the public model name put back: the name between
/// two slices of the upstream's bytes (nothing copied).
pub(crate) fn renamed(body: Bytes, rename: Option<&ModelRename>) -> Parts {
    match rename.and_then(|r| Some((r, r.find(&body)?))) {
        Some((r, start)) => Parts::splice(&body, start..start + r.from.len(), r.to.clone()),
        None => Parts::whole(body),
    }
}

const USAGE_KEY: &[u8] = b"\"usage\"";
const CHOICES_KEY: &[u8] = b"\"choices\"";

// Searchers for the fixed patterns, built once: building one costs more than
// searching a short event with it (callgrind, bench/instructions.py).
static USAGE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(USAGE_KEY));
static CHOICES: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(CHOICES_KEY));
static FINISH_REASON: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"finish_reason\""));
static MODEL: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"model\""));

/// Decodes a stream event by event.
pub(crate) struct StreamDecoder {
    /// The gateway asked for usage on the client's behalf: drop the chunk
    /// that carries only usage.
    drop_usage_chunk: bool,
    rename: Option<Arc<ModelRename>>,
    pub usage: Option<Usage>,
    /// A choice has finished: only the usage chunk (and `[DONE]`) can follow.
    pub finished: bool,
}

/// Where an event's (first) `"usage"` member's value starts, when it is an
/// object (not `null`): the usage is read there, without parsing the rest
/// of the chunk (see [`opens_member`]).
fn usage_object(event: &[u8]) -> Option<&[u8]> {
    let at = USAGE.find_iter(event).find(|&at| opens_member(event, at))? + USAGE_KEY.len();
    let value = event[at..].iter().position(|b| !matches!(b, b' ' | b'\t' | b':'))?;
    (event[at + value] == b'{').then(|| &event[at + value..])
}

/// Whether a chunk's `choices` is empty, `null` or missing: a chunk that
/// only carries usage.
fn without_choices(event: &[u8]) -> bool {
    let Some(at) = CHOICES.find(event) else { return true };
    let mut rest = event[at + CHOICES_KEY.len()..].iter().filter(|b| !b.is_ascii_whitespace());
    matches!(
        (rest.next(), rest.next(), rest.next()),
        (Some(b':'), Some(b'['), Some(b']')) | (Some(b':'), Some(b'n'), _)
    )
}

/// Whether an event carries a non-null `finish_reason`.
fn finish_reason_set(event: &[u8]) -> bool {
    let Some(at) = FINISH_REASON.find(event) else { return false };
    let rest = &event[at + 15..];
    rest.iter().find(|b| !matches!(b, b' ' | b'\t' | b':')).is_some_and(|b| *b == b'"')
}

impl StreamDecoder {
    pub fn new(drop_usage_chunk: bool, rename: Option<Arc<ModelRename>>) -> Self {
        Self { drop_usage_chunk, rename, usage: None, finished: false }
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        if !self.finished && finish_reason_set(event) {
            self.finished = true;
        }
        if let Some(usage) = usage_object(event).and_then(OpenAiUsage::read) {
            self.usage = Some(usage.into());
            if self.drop_usage_chunk && without_choices(event) {
                return EventAction::Drop;
            }
        }
        match self.rename.as_ref().and_then(|r| r.apply(event)) {
            Some(renamed) => EventAction::Replace(Bytes::from(renamed)),
            None => EventAction::Pass,
        }
    }
}

/// Turns a `200 application/json` answer to a streamed request into the
/// stream the client asked for (a role-and-content chunk, a finish chunk, a
/// usage chunk, `[DONE]`), or into the error it describes (an error object
/// such as `insufficient_quota`).
pub(crate) fn json_for_stream(body: &[u8]) -> Result<Bytes, ErrorFields> {
    let Ok(serde_json::Value::Object(whole)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(ErrorFields::parse(body));
    };
    if whole.contains_key("error") || !whole.contains_key("choices") {
        return Err(ErrorFields::parse(body));
    }
    let field = |name: &str| whole.get(name).cloned().unwrap_or(serde_json::Value::Null);
    let chunk = |choices: serde_json::Value| {
        serde_json::json!({
            "id": field("id"),
            "object": "chat.completion.chunk",
            "created": field("created"),
            "model": field("model"),
            "system_fingerprint": field("system_fingerprint"),
            "choices": choices,
        })
    };
    let choices = whole.get("choices").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let mut deltas = Vec::with_capacity(choices.len());
    let mut finishes = Vec::with_capacity(choices.len());
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(serde_json::json!(i));
        let mut delta = choice.get("message").cloned().unwrap_or_else(|| serde_json::json!({}));
        if let Some(calls) = delta.get_mut("tool_calls").and_then(|c| c.as_array_mut()) {
            for (n, call) in calls.iter_mut().enumerate() {
                if let Some(call) = call.as_object_mut() {
                    call.insert("index".into(), serde_json::json!(n));
                }
            }
        }
        deltas.push(serde_json::json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null}));
        finishes.push(serde_json::json!({
            "index": index, "delta": {}, "logprobs": null, "finish_reason": choice.get("finish_reason"),
        }));
    }
    let mut events = BytesMut::new();
    let mut push = |value: &serde_json::Value| {
        events.extend_from_slice(b"data: ");
        events.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
        events.extend_from_slice(b"\n\n");
    };
    push(&chunk(serde_json::Value::Array(deltas)));
    push(&chunk(serde_json::Value::Array(finishes)));
    if let Some(usage) = whole.get("usage").filter(|u| !u.is_null()) {
        let mut last = chunk(serde_json::json!([]));
        last["usage"] = usage.clone();
        push(&last);
    }
    events.extend_from_slice(b"data: [DONE]\n\n");
    Ok(events.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weaver_crds::money::Prices;
    use weaver_crds::snapshot::{Credential, TimeoutsSnapshot};

    fn channel(provider: Provider, base: &str, azure: Option<&str>) -> ChannelSnapshot {
        ChannelSnapshot {
            namespace: "ns".into(),
            name: "c".into(),
            provider,
            base_url: base.into(),
            credential: Some(Credential("k".into())),
            headers: vec![],
            models: vec![],
            timeouts: TimeoutsSnapshot::default(),
            azure_api_version: azure.map(str::to_owned),
            stream_usage: true,
            limits: Default::default(),
            health_check: None,
        }
    }

    fn model() -> ModelSnapshot {
        ModelSnapshot { name: "gpt-4o".into(), upstream: "prod-4o".into(), prices: Prices::default() }
    }

    #[test]
    fn azure_dated_api_puts_the_deployment_in_the_path() {
        let ch = channel(Provider::AzureOpenai, "https://r.openai.azure.com", Some("2024-10-21"));
        assert_eq!(
            url(&ch, &model(), Operation::Chat),
            "https://r.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        let (name, value) = auth_header(&ch).unwrap_or_else(|| panic!("no auth header"));
        assert_eq!((name.as_str(), value.to_str().ok()), ("api-key", Some("k")));
    }

    #[test]
    fn azure_v1_and_the_openai_family_append_the_operation_path() {
        let azure = channel(Provider::AzureOpenai, "https://r.openai.azure.com", None);
        assert_eq!(url(&azure, &model(), Operation::Embeddings), "https://r.openai.azure.com/openai/v1/embeddings");
        let qwen = channel(Provider::Qwen, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", None);
        assert_eq!(
            url(&qwen, &model(), Operation::Chat),
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
        );
        let (name, value) = auth_header(&qwen).unwrap_or_else(|| panic!("no auth header"));
        assert_eq!((name, value.to_str().ok()), (http::header::AUTHORIZATION, Some("Bearer k")));
        assert!(value.is_sensitive());
    }

    /// Zhipu, Qwen and ERNIE keep the roots and auth of
    /// `shared/reference/providers.md` (sections 7-9): their default roots,
    /// `POST {root}/chat/completions`, `Authorization: Bearer`.
    #[test]
    fn the_chinese_presets_keep_their_default_roots_and_bearer_auth() {
        for (provider, root) in [
            (Provider::Zhipu, "https://open.bigmodel.cn/api/paas/v4"),
            (Provider::Qwen, "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
            (Provider::Ernie, "https://qianfan.baidubce.com/v2"),
        ] {
            assert_eq!(provider.default_base_url(), Some(root), "{provider:?}");
            let ch = channel(provider, root, None);
            assert_eq!(url(&ch, &model(), Operation::Chat), format!("{root}/chat/completions"));
            let (name, value) = auth_header(&ch).unwrap_or_else(|| panic!("no auth header"));
            assert_eq!((name, value.to_str().ok()), (http::header::AUTHORIZATION, Some("Bearer k")), "{provider:?}");
        }
    }

    #[test]
    fn the_responses_api_has_its_own_path_and_azure_a_dated_one_without_the_deployment() {
        let dated = channel(Provider::AzureOpenai, "https://r.openai.azure.com", Some("2025-04-01-preview"));
        assert_eq!(
            url(&dated, &model(), Operation::Responses),
            "https://r.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
        );
        let v1 = channel(Provider::AzureOpenai, "https://r.openai.azure.com", None);
        assert_eq!(url(&v1, &model(), Operation::Responses), "https://r.openai.azure.com/openai/v1/responses");
        let openai = channel(Provider::Openai, "https://api.openai.com/v1", None);
        assert_eq!(url(&openai, &model(), Operation::Responses), "https://api.openai.com/v1/responses");
    }

    #[test]
    fn the_public_model_name_replaces_the_deployment_name() {
        let rename = ModelRename::new("gpt-4o", "eastus-prod-deploy-7f3a").unwrap_or_else(|| panic!("names differ"));
        let chunk = br#"{"id":"x","model": "eastus-prod-deploy-7f3a","choices":[{"delta":{"content":"\"model\":\"eastus-prod-deploy-7f3a\""}}]}"#;
        let out = String::from_utf8(rename.apply(chunk).unwrap_or_default()).unwrap_or_default();
        assert!(out.starts_with(r#"{"id":"x","model": "gpt-4o","choices""#), "{out}");
        assert!(out.contains(r#"\"model\":\"eastus-prod-deploy-7f3a\""#), "content is untouched: {out}");
        assert!(ModelRename::new("same", "same").is_none());
        let whole = Bytes::from_static(br#"{"id":"x","model":"eastus-prod-deploy-7f3a","usage":null}"#);
        let (parts, _) = decode_whole(whole, Some(&rename));
        assert_eq!(&parts.contiguous()[..], br#"{"id":"x","model":"gpt-4o","usage":null}"#);
    }

    #[test]
    fn the_usage_of_a_whole_answer_is_found_where_it_stands() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\":99}"}}],"usage" : {"prompt_tokens":7,"completion_tokens":2,"prompt_tokens_details":null}}"#;
        let (_, usage) = decode_whole(Bytes::from_static(body), None);
        assert_eq!(usage.map(|u| (u.input, u.output)), Some((7, 2)));
        let (_, none) = decode_whole(Bytes::from_static(br#"{"id":"x","usage":null}"#), None);
        assert_eq!(none, None);
    }

    /// Usage-shaped text the model wrote (content, a tool call's arguments)
    /// or a key that ends in `"usage` is not the answer's usage, whether the
    /// answer's own comes after it, is `null`, or is missing.
    #[test]
    fn only_a_usage_member_is_the_answers_usage() {
        let choices = r#""choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\":99}","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\"usage\":{\"prompt_tokens\":98}}"}}],"extra":{"\"usage": {"prompt_tokens":97}}}}]"#;
        let usage = |tail: &str| {
            let body = format!(r#"{{"id":"x",{choices}{tail}}}"#);
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "{body}");
            decode_whole(Bytes::from(body), None).1.map(|u| (u.input, u.output))
        };
        assert_eq!(usage(r#","usage":{"prompt_tokens":7,"completion_tokens":2}"#), Some((7, 2)));
        assert_eq!(usage(r#","usage":null"#), None);
        assert_eq!(usage(""), None);
        let mut decoder = StreamDecoder::new(false, None);
        let event = format!(r#"data: {{"id":"x",{choices},"usage":null}}"#);
        decoder.event(event.replace("message", "delta").as_bytes());
        assert_eq!(decoder.usage, None);
    }

    #[test]
    fn usage_with_null_members_is_read_and_the_chunk_dropped() {
        let mut decoder = StreamDecoder::new(true, None);
        let event = br#"data: {"id":"x","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null}}

"#;
        assert_eq!(decoder.event(event), EventAction::Drop);
        assert_eq!(decoder.usage.map(|u| (u.input, u.output)), Some((9, 3)));
    }

    #[test]
    fn a_json_completion_becomes_a_valid_stream_and_an_error_stays_an_error() {
        let whole = br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#;
        let events = json_for_stream(whole).unwrap_or_else(|e| panic!("a completion: {e:?}"));
        let text = String::from_utf8_lossy(&events);
        assert_eq!(text.matches("data: ").count(), 4, "{text}");
        assert!(
            text.contains(r#""delta":{"content":"hi","role":"assistant"}"#)
                || text.contains(r#""delta":{"role":"assistant","content":"hi"}"#),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let fields = json_for_stream(quota).err().unwrap_or_default();
        assert_eq!(fields.code.as_deref(), Some("insufficient_quota"));
    }
}
