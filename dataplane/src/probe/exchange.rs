//! One small chat completion through one channel, outside the client
//! pipeline: no key, no admission, no routing, no usage record. The active
//! health checks and the channel test send theirs this way, through the
//! channel's own adapter (so translation, credentials, headers and the
//! pooled connections are the ones clients use).

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::json;
use tokio::time::Instant;

use crate::api::{RequestBody, Rewrite, StreamOptionsEdit};
use crate::pipeline::{error_with_200, read_bounded, status_error};
use crate::providers::messages::request::LimitMember;
use crate::providers::{Adapter, Answering, Operation, UpstreamError};
use crate::state::{ChannelRuntime, ModelRuntime};

/// Characters of the answer's text an outcome keeps.
pub const FIRST_CHARS: usize = 200;

/// What one exchange came to.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// From sending until the whole answer (or the failure).
    pub latency: Duration,
    /// The answer's first [`FIRST_CHARS`] characters of text, or why there
    /// is none.
    pub result: Result<String, UpstreamError>,
}

impl Outcome {
    /// The HTTP status the upstream answered (502/504 for no answer).
    pub fn status(&self) -> u16 {
        match &self.result {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }
}

/// The probe's body, in OpenAI's format (the adapter translates it for
/// other wire formats). OpenAI and Azure take `max_completion_tokens`
/// (reasoning models refuse `max_tokens`); the rest `max_tokens`.
fn body(channel: &ChannelRuntime, model: &ModelRuntime, prompt: &str, max_tokens: u32) -> Bytes {
    let limit = match &channel.adapter {
        Adapter::OpenAi { limit: LimitMember::MaxCompletionTokens, .. } => "max_completion_tokens",
        _ => "max_tokens",
    };
    let mut body = json!({
        "model": model.label.as_str(),
        "messages": [{"role": "user", "content": prompt}],
        "stream": false,
    });
    body[limit] = json!(max_tokens);
    Bytes::from(body.to_string())
}

/// Sends `prompt` to `model` on `channel` and waits for the whole answer,
/// at most `timeout`.
pub(crate) async fn exchange(
    channel: &ChannelRuntime,
    model: &ModelRuntime,
    prompt: &str,
    max_tokens: u32,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let deadline = started + timeout;
    let result = tokio::time::timeout_at(deadline, send(channel, model, prompt, max_tokens, deadline))
        .await
        .unwrap_or(Err(UpstreamError::Timeout(timeout)));
    Outcome { latency: started.elapsed(), result }
}

async fn send(
    channel: &ChannelRuntime,
    model: &ModelRuntime,
    prompt: &str,
    max_tokens: u32,
    deadline: Instant,
) -> Result<String, UpstreamError> {
    let original = body(channel, model, prompt, max_tokens);
    let request = RequestBody::parse(&original).map_err(UpstreamError::Translation)?;
    let rewrite = Rewrite { model: Some(&model.upstream_json), stream_options: StreamOptionsEdit::Keep };
    let prepared = channel
        .adapter
        .prepare(Operation::Chat, &request, &original, rewrite, model)
        .map_err(UpstreamError::Translation)?;
    let id = crate::server::new_request_id();
    let response =
        channel.adapter.send(Operation::Chat, model.uri(Operation::Chat), prepared, &id, &HeaderMap::new()).await?;
    let (parts, mut body) = response.into_parts();
    if !parts.status.is_success() {
        return Err(status_error(&parts, &mut body, deadline).await);
    }
    let whole = read_bounded(&mut body, usize::MAX, deadline).await?;
    let answering = Answering {
        operation: Operation::Chat,
        rename: model.rename.as_ref(),
        model: model.label.as_str(),
        include_usage: false,
        drop_usage_chunk: false,
        request: &request,
    };
    let (answer, _usage) = channel.adapter.decode_whole(whole, &answering).map_err(error_with_200)?;
    Ok(first_text(&answer.contiguous()))
}

/// The first characters of a chat completion's first message.
fn first_text(answer: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(answer).unwrap_or_default();
    let text = value.pointer("/choices/0/message/content").and_then(|c| c.as_str()).unwrap_or_default();
    text.chars().take(FIRST_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(FIRST_CHARS + 10);
        let answer = json!({"choices": [{"message": {"content": long}}]}).to_string();
        assert_eq!(first_text(answer.as_bytes()).chars().count(), FIRST_CHARS);
        assert_eq!(first_text(b"{}"), "");
    }
}
