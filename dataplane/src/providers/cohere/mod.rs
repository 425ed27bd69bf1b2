//! Cohere's v2 API (`provider: cohere`, <https://docs.cohere.com/reference/chat>):
//! `POST {root}/v2/chat` (streamed with `"stream": true`) and `POST
//! {root}/v2/embed`, with `Authorization: Bearer`. The root is the API's
//! (`https://api.cohere.com`); a root that already ends in `/v2` (the
//! Channel default) is taken as meaning the same.
//!
//! OpenAI-shaped requests are translated ([`request`]) and their answers
//! translated back, whole ([`response`]) or event by event ([`stream`]).

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;
pub(crate) mod wire;

use bytes::Bytes;
use weaver_crds::snapshot::ChannelSnapshot;

use super::{ErrorFields, Operation};
use crate::relay::sse;

/// The upstream URL of an operation (Messages and Responses requests go to
/// chat translated); `None` for `count_tokens`, which the gateway counts
/// itself (Cohere's `tokenize` needs the model's own tokenizer name).
pub(crate) fn url(channel: &ChannelSnapshot, operation: Operation) -> Option<String> {
    let root = channel.base_url.strip_suffix("/v2").unwrap_or(&channel.base_url);
    match operation {
        Operation::Chat | Operation::Messages | Operation::Responses => Some(format!("{root}/v2/chat")),
        Operation::Embeddings => Some(format!("{root}/v2/embed")),
        Operation::CountTokens => None,
    }
}

/// A JSON answer to a streamed request: the error it describes (an error
/// object with a 200), or the whole answer as the events Cohere would have
/// streamed, for the stream decoder that follows.
pub(crate) fn json_for_stream(body: &[u8]) -> Result<Bytes, ErrorFields> {
    use serde_json::{Value, json};
    let error = || ErrorFields::parse(body);
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else { return Err(error()) };
    let (Some(message), Some(reason)) = (answer.get("message").filter(|m| m.is_object()), answer.get("finish_reason"))
    else {
        return Err(error());
    };
    let mut out = Vec::new();
    let mut push = |name: &str, data: Value| out.extend(sse::named_event(name, &data));
    push(
        "message-start",
        json!({"type": "message-start", "id": answer.get("id"), "delta": {"message": {"role": "assistant"}}}),
    );
    if let Some(plan) = message.get("tool_plan") {
        push("tool-plan-delta", json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": plan}}}));
    }
    for (index, item) in message.get("content").and_then(Value::as_array).into_iter().flatten().enumerate() {
        push(
            "content-delta",
            json!({"type": "content-delta", "index": index, "delta": {"message": {"content": item}}}),
        );
    }
    for (index, call) in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
        push(
            "tool-call-start",
            json!({"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": call}}}),
        );
    }
    push(
        "message-end",
        json!({"type": "message-end", "delta": {"finish_reason": reason, "usage": answer.get("usage")}}),
    );
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests;
