//! The Anthropic Messages API (`provider: anthropic`,
//! <https://docs.anthropic.com/en/api/messages>): `POST {root}/v1/messages`
//! with `x-api-key` and `anthropic-version: 2023-06-01`.
//!
//! OpenAI-shaped requests are translated ([`request`]) and their answers
//! translated back, whole ([`response`]) or event by event ([`stream`]).
//! Requests to the gateway's own Messages ingress pass through untouched but
//! for the model name, and are metered from the events as they pass
//! ([`Passthrough`]); `count_tokens` passes through too.

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;
pub(crate) mod wire;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use weaver_crds::snapshot::ChannelSnapshot;

use super::openai::ModelRename;
use super::{ErrorFields, EventAction, Operation};
use crate::metering::Usage;
use crate::parts::Parts;
use crate::relay::sse;
use stream::EventView;
use wire::AnthropicUsage;

/// The API version every request names; the only one Anthropic has
/// (<https://docs.anthropic.com/en/api/versioning>).
pub(crate) const API_VERSION: &str = "2023-06-01";

/// The client's beta features header, passed on as sent.
pub(crate) const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The upstream URL of an operation; `None` for embeddings, which Anthropic
/// does not offer. The root is the API's (`https://api.anthropic.com`); a
/// root that already ends in `/v1` is taken as meaning the same.
pub(crate) fn url(channel: &ChannelSnapshot, operation: Operation) -> Option<String> {
    let root = channel.base_url.strip_suffix("/v1").unwrap_or(&channel.base_url);
    match operation {
        Operation::Chat | Operation::Messages | Operation::Responses => Some(format!("{root}/v1/messages")),
        Operation::CountTokens => Some(format!("{root}/v1/messages/count_tokens")),
        Operation::Embeddings => None,
    }
}

/// Every upstream request's headers: host, content type, user agent, the
/// API version, the channel's extra headers, and the key as `x-api-key`.
pub(crate) fn headers(channel: &ChannelSnapshot) -> HeaderMap {
    let mut headers = super::openai::common_headers(channel);
    headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
    if let Some(credential) = channel.credential.as_ref()
        && let Ok(mut value) = HeaderValue::from_str(&credential.0)
    {
        value.set_sensitive(true);
        headers.insert("x-api-key", value);
    }
    headers
}

/// A complete answer to the gateway's Messages ingress, passed through (the
/// model renamed), and its usage; the error it describes when it is one.
pub(crate) fn passthrough_whole(
    operation: Operation,
    body: Bytes,
    rename: Option<&ModelRename>,
) -> Result<(Parts, Option<Usage>), ErrorFields> {
    if response::is_error(&body) {
        return Err(ErrorFields::parse(&body));
    }
    let usage = match operation {
        // Counting costs nothing, and must not be counted as a prompt.
        Operation::CountTokens => Some(Usage::default()),
        _ => super::openai::last_usage_member::<AnthropicUsage>(&body).map(Usage::from),
    };
    Ok((super::openai::renamed(body, rename), usage))
}

/// A JSON answer to a streamed request: the error it describes (an error
/// object with a 200), or the message as the events Anthropic would have
/// streamed, for the stream decoder that follows.
pub(crate) fn json_for_stream(body: &[u8]) -> Result<Bytes, ErrorFields> {
    use serde_json::{Value, json};
    let error = || ErrorFields::parse(body);
    if response::is_error(body) {
        return Err(error());
    }
    let Ok(Value::Object(mut message)) = serde_json::from_slice::<Value>(body) else { return Err(error()) };
    let content = match message.insert("content".into(), json!([])) {
        Some(Value::Array(blocks)) => blocks,
        _ => Vec::new(),
    };
    let stop_reason = message.insert("stop_reason".into(), Value::Null).unwrap_or(Value::Null);
    let stop_sequence = message.insert("stop_sequence".into(), Value::Null).unwrap_or(Value::Null);
    let output_tokens = message.get("usage").and_then(|u| u.get("output_tokens")).cloned().unwrap_or(json!(0));
    let mut out = Vec::new();
    let mut push = |name: &str, data: Value| out.extend(sse::named_event(name, &data));
    push("message_start", json!({"type": "message_start", "message": message}));
    for (index, mut block) in content.into_iter().enumerate() {
        let delta = match block.get("type").and_then(Value::as_str) {
            Some("text") => Some(json!({"type": "text_delta", "text": block["text"].take()})),
            Some("thinking") => Some(json!({"type": "thinking_delta", "thinking": block["thinking"].take()})),
            Some("tool_use") => {
                let input = block["input"].take();
                block["input"] = json!({});
                Some(json!({"type": "input_json_delta", "partial_json": input.to_string()}))
            }
            _ => None,
        };
        if block.get("text").is_some() {
            block["text"] = json!("");
        }
        if block.get("thinking").is_some() {
            block["thinking"] = json!("");
        }
        push("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": block}));
        if let Some(delta) = delta {
            push("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}));
        }
        push("content_block_stop", json!({"type": "content_block_stop", "index": index}));
    }
    push(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
               "usage": {"output_tokens": output_tokens}}),
    );
    push("message_stop", json!({"type": "message_stop"}));
    Ok(Bytes::from(out))
}

/// Meters a Messages stream passed through to the client: usage from
/// `message_start` and each `message_delta`, the model renamed in
/// `message_start`, and an `error` event ending the stream as the client's
/// dialect says. Text and tool deltas — nearly every event — pass on the
/// name of their `event:` line alone, unparsed.
pub(crate) struct Passthrough {
    rename: Option<Arc<ModelRename>>,
    usage: AnthropicUsage,
    /// `message_delta` arrived: usage is complete and the answer finished.
    pub finished: bool,
}

impl Passthrough {
    pub fn new(rename: Option<Arc<ModelRename>>) -> Self {
        Self { rename, usage: AnthropicUsage::default(), finished: false }
    }

    /// The usage, once the answer is complete (a stream cut earlier is
    /// counted by the gateway instead).
    pub fn usage(&self) -> Option<Usage> {
        self.finished.then(|| self.usage.into())
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let fields = sse::fields(event);
        // Anthropic names every event; the data's `type` is the fallback.
        let interesting = match fields.name {
            Some(name) => matches!(name, b"message_start" | b"message_delta" | b"error"),
            None => !fields.data.is_empty(),
        };
        if !interesting {
            return EventAction::Pass;
        }
        let Ok(view) = serde_json::from_slice::<EventView<'_>>(&fields.data) else {
            return EventAction::Pass;
        };
        match view.kind.as_ref() {
            "message_start" => {
                if let Some(usage) = view.message.and_then(|m| m.usage) {
                    self.usage = usage;
                }
                match self.rename.as_ref().and_then(|r| r.apply(event)) {
                    Some(renamed) => EventAction::Replace(Bytes::from(renamed)),
                    None => EventAction::Pass,
                }
            }
            "message_delta" => {
                if let Some(usage) = view.usage {
                    self.usage.update(usage);
                }
                self.finished = true;
                EventAction::Pass
            }
            "error" => EventAction::Fail(view.error.map_or_else(
                || crate::api::ApiError::bad_gateway("upstream_stream_error", "The upstream stream failed."),
                |e| e.api_error(),
            )),
            _ => EventAction::Pass,
        }
    }

    /// The upstream closed: a stream without its `message_delta` was cut.
    pub fn end(&mut self) -> EventAction {
        if self.finished {
            EventAction::Drop
        } else {
            EventAction::Fail(crate::api::ApiError::bad_gateway(
                "upstream_stream_error",
                "The upstream stream ended before the answer was complete.",
            ))
        }
    }
}

#[cfg(test)]
mod tests;
