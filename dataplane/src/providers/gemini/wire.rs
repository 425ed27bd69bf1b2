//! The parts of Gemini's answers both translations read: candidates and
//! their parts, usage, finish reasons and errors (members as in the
//! `GenerateContentResponse` reference,
//! <https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse>).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::ApiError;
use crate::metering::Usage;

type Str<'a> = Cow<'a, str>;

/// One `GenerateContentResponse`: a whole answer, or one event of a stream.
/// A body with `error` is Google's error object.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResponseView<'a> {
    #[serde(default, borrow)]
    pub candidates: Vec<CandidateView<'a>>,
    #[serde(default)]
    pub usage_metadata: Option<GeminiUsage>,
    #[serde(default, borrow)]
    pub response_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default, borrow)]
    pub error: Option<ErrorView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CandidateView<'a> {
    #[serde(default, borrow)]
    pub content: Option<ContentView<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ContentView<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<PartView<'a>>,
}

/// A part of an answer: text (a thought summary when `thought`), or a
/// function call; other kinds (code, inline data) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PartView<'a> {
    #[serde(default, borrow)]
    pub text: Option<Str<'a>>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default, borrow)]
    pub function_call: Option<FunctionCallView<'a>>,
    #[serde(default, borrow)]
    pub thought_signature: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionCallView<'a> {
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub name: Str<'a>,
    #[serde(default, borrow)]
    pub args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromptFeedback<'a> {
    #[serde(default, borrow)]
    pub block_reason: Option<Str<'a>>,
}

/// Google's error object (`google.rpc.Status` as JSON):
/// `{"error":{"code":429,"message":"...","status":"RESOURCE_EXHAUSTED"}}`.
#[derive(Deserialize)]
pub(crate) struct ErrorView<'a> {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default, borrow)]
    pub message: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub status: Option<Str<'a>>,
}

impl ErrorView<'_> {
    /// The error the client gets for an error in a stream that already
    /// began: an overloaded or rate-limited upstream is 503-class (another
    /// try may succeed), anything else a failed upstream (502).
    pub fn api_error(&self) -> ApiError {
        let status = self.status.as_deref().unwrap_or("UNKNOWN");
        let message =
            format!("The upstream stream failed: {status}: {}", self.message.as_deref().unwrap_or("no message"));
        if matches!(self.code, Some(429 | 503)) || matches!(status, "UNAVAILABLE" | "RESOURCE_EXHAUSTED") {
            ApiError::unavailable("upstream_overloaded", message)
        } else {
            ApiError::bad_gateway("upstream_stream_error", message)
        }
    }
}

/// `usageMetadata`: in a stream, each report covers the answer so far, so
/// the last one wins.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiUsage {
    /// The whole prompt, cached content included.
    #[serde(default)]
    pub prompt_token_count: u64,
    /// The answer's tokens, thoughts not included.
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    /// Results of the model's own tools (search...), read as input.
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
}

impl From<GeminiUsage> for Usage {
    /// Thoughts are billed as output and are not part of
    /// `candidatesTokenCount` (`totalTokenCount` is prompt + tool-use
    /// prompt + candidates + thoughts), so output is their sum; cached
    /// content is part of the prompt, as OpenAI's cached tokens are.
    fn from(u: GeminiUsage) -> Self {
        let input = u.prompt_token_count.saturating_add(u.tool_use_prompt_token_count);
        Self {
            input,
            cached_input: u.cached_content_token_count.min(input),
            cache_write: 0,
            output: u.candidates_token_count.saturating_add(u.thoughts_token_count),
            reasoning: u.thoughts_token_count,
        }
    }
}

/// OpenAI's `finish_reason` for a Gemini `finishReason`; a turn that called
/// functions is `tool_calls` (Gemini says `STOP`).
pub(crate) fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE" => {
            "content_filter"
        }
        _ if called => "tool_calls",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL and reasons added later.
        _ => "stop",
    }
}

/// Separates a tool call id from the thought signature it carries. Gemini's
/// thinking models sign their function calls and refuse a later turn that
/// replays a call without its signature; OpenAI clients send back only the
/// call's id, so the signature travels inside it.
pub(crate) const SIGNATURE_MARK: &str = "_ts_";

/// A tool call id for the `index`th call of an answer: Gemini's own id when
/// it gave one, else one derived from the answer's id, the index and the
/// call (so a retried stream and its whole twin name calls alike); the
/// thought signature, when there is one, appended after [`SIGNATURE_MARK`].
pub(crate) fn call_id(response_id: &str, index: usize, call: &FunctionCallView<'_>, signature: Option<&str>) -> String {
    use sha2::Digest as _;
    let mut id = match call.id.as_deref().filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None => {
            let mut hash = sha2::Sha256::new();
            for piece in [response_id, &index.to_string(), &call.name, call.args.map_or("", RawValue::get)] {
                hash.update(piece.as_bytes());
                hash.update([0]);
            }
            format!("call_{}", &hex::encode(hash.finalize())[..24])
        }
    };
    if let Some(signature) = signature.filter(|s| !s.is_empty()) {
        id.push_str(SIGNATURE_MARK);
        id.push_str(signature);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_are_output_and_cached_content_is_input() {
        let usage: GeminiUsage = serde_json::from_str(
            r#"{"promptTokenCount":100,"candidatesTokenCount":20,"cachedContentTokenCount":60,"thoughtsTokenCount":30,"totalTokenCount":150}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            Usage::from(usage),
            Usage { input: 100, cached_input: 60, cache_write: 0, output: 50, reasoning: 30 }
        );
    }

    #[test]
    fn finish_reasons_map_and_calls_win_over_stop() {
        assert_eq!(finish_reason("STOP", true), "tool_calls");
        assert_eq!(finish_reason("STOP", false), "stop");
        assert_eq!(finish_reason("MAX_TOKENS", true), "length");
        assert_eq!(finish_reason("SAFETY", false), "content_filter");
    }
}
