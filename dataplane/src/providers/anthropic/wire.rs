//! The parts of Anthropic's wire format both translations read: usage, stop
//! reasons, and errors (members as in the official SDK's `Usage`,
//! `MessageDeltaUsage`, `StopReason` and `ErrorResponse` types,
//! <https://github.com/anthropics/anthropic-sdk-python/tree/main/src/anthropic/types>).

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::metering::Usage;

type Str<'a> = Cow<'a, str>;

/// Any content block, of a request or an answer; the members of block
/// types nothing translates are skipped.
#[derive(Default, Deserialize)]
pub(crate) struct BlockView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow)]
    pub text: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub source: Option<SourceView<'a>>,
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub name: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub tool_use_id: Option<Str<'a>>,
    /// A tool result's content: a string or blocks.
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    #[serde(default)]
    pub is_error: Option<bool>,
}

/// An image's or a document's source.
#[derive(Deserialize)]
pub(crate) struct SourceView<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow)]
    pub media_type: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub data: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub url: Option<Str<'a>>,
}

/// `null` and a missing member both mean "not said".
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// A `usage` object: whole in a message (`message_start`, a complete
/// answer); in `message_delta` every member is cumulative and only
/// `output_tokens` is sure to be there.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct AnthropicUsage {
    /// Input tokens that were neither read from nor written to the cache.
    #[serde(default, deserialize_with = "nullable")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub output_tokens_details: Option<OutputDetails>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct OutputDetails {
    #[serde(default)]
    pub thinking_tokens: u64,
}

impl AnthropicUsage {
    /// Takes what a later report says (a `message_delta` after `message_start`).
    pub fn update(&mut self, later: AnthropicUsage) {
        let keep = |old: &mut Option<u64>, new: Option<u64>| {
            if new.is_some() {
                *old = new;
            }
        };
        keep(&mut self.input_tokens, later.input_tokens);
        keep(&mut self.output_tokens, later.output_tokens);
        keep(&mut self.cache_creation_input_tokens, later.cache_creation_input_tokens);
        keep(&mut self.cache_read_input_tokens, later.cache_read_input_tokens);
        if later.output_tokens_details.is_some() {
            self.output_tokens_details = later.output_tokens_details;
        }
    }
}

impl From<AnthropicUsage> for Usage {
    /// Anthropic's input is the sum of uncached input, cache reads and
    /// cache writes ("Total input tokens in a request is the summation of
    /// `input_tokens`, `cache_creation_input_tokens`, and
    /// `cache_read_input_tokens`", the SDK's `Usage`); the record's input
    /// includes the cached ones, as OpenAI's `prompt_tokens` does.
    fn from(u: AnthropicUsage) -> Self {
        let read = u.cache_read_input_tokens.unwrap_or(0);
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        let output = u.output_tokens.unwrap_or(0);
        Self {
            input: u.input_tokens.unwrap_or(0).saturating_add(read).saturating_add(written),
            cached_input: read,
            cache_write: written,
            output,
            reasoning: u.output_tokens_details.map_or(0, |d| d.thinking_tokens.min(output)),
        }
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason` (unknown reasons,
/// which Anthropic may add within a version, read as `stop`).
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and any new reason.
        _ => "stop",
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub(crate) fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's error `type` for an HTTP status (the table of
/// <https://docs.claude.com/en/api/errors>; 502 and 504 have no entry there,
/// and are `api_error` and `timeout_error`, which the SDK's `ErrorType` lists).
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Whether `kind` is an error `type` Anthropic's SDKs know.
pub(crate) fn is_error_type(kind: &str) -> bool {
    matches!(
        kind,
        "invalid_request_error"
            | "authentication_error"
            | "billing_error"
            | "permission_error"
            | "not_found_error"
            | "request_too_large"
            | "rate_limit_error"
            | "timeout_error"
            | "api_error"
            | "overloaded_error"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_counts_cache_reads_and_writes_and_later_reports_win() {
        let mut usage: AnthropicUsage = serde_json::from_str(
            r#"{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":1}"#,
        )
        .unwrap_or_default();
        usage.update(serde_json::from_str(r#"{"output_tokens":7,"input_tokens":null}"#).unwrap_or_default());
        assert_eq!(Usage::from(usage), Usage { input: 60, cached_input: 30, cache_write: 20, output: 7, reasoning: 0 });
    }
}
