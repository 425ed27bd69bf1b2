//! Token usage, and the OpenAI wire form it is read from
//! (<https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage>).

use serde::{Deserialize, Deserializer};

/// Tokens of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_input: u64,
    /// Prompt tokens written to the provider's prompt cache (Anthropic's
    /// cache creation; part of `input`, billed at the cache-write price).
    pub cache_write: u64,
    /// Completion tokens, reasoning ones included.
    pub output: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning: u64,
}

/// `null` and a missing member both mean zero: OpenAI-compatible servers write
/// `"cached_tokens": null` or `"prompt_tokens_details": null`, and a strict
/// reading would lose the whole usage object.
fn zero_if_null<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// OpenAI's `usage` object.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct OpenAiUsage {
    #[serde(default, deserialize_with = "zero_if_null")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "zero_if_null")]
    completion_tokens: u64,
    #[serde(default, deserialize_with = "zero_if_null")]
    prompt_tokens_details: PromptDetails,
    #[serde(default, deserialize_with = "zero_if_null")]
    completion_tokens_details: CompletionDetails,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default, deserialize_with = "zero_if_null")]
    cached_tokens: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default, deserialize_with = "zero_if_null")]
    reasoning_tokens: u64,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Self {
        Self {
            input: u.prompt_tokens,
            cached_input: u.prompt_tokens_details.cached_tokens,
            cache_write: 0,
            output: u.completion_tokens,
            reasoning: u.completion_tokens_details.reasoning_tokens,
        }
    }
}

impl OpenAiUsage {
    /// The `usage` object that starts `json` (what follows it is not read).
    pub fn read(json: &[u8]) -> Option<Self> {
        Self::deserialize(&mut serde_json::Deserializer::from_slice(json)).ok()
    }
}

/// The Responses API's `usage` object
/// (<https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage>).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct ResponsesUsage {
    #[serde(default, deserialize_with = "zero_if_null")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "zero_if_null")]
    output_tokens: u64,
    #[serde(default, deserialize_with = "zero_if_null")]
    input_tokens_details: PromptDetails,
    #[serde(default, deserialize_with = "zero_if_null")]
    output_tokens_details: CompletionDetails,
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Self {
        Self {
            input: u.input_tokens,
            cached_input: u.input_tokens_details.cached_tokens,
            cache_write: 0,
            output: u.output_tokens,
            reasoning: u.output_tokens_details.reasoning_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_members_mean_zero() {
        let text = r#"{"prompt_tokens":12,"completion_tokens":null,"prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null}"#;
        let usage: Usage = serde_json::from_str::<OpenAiUsage>(text).map(Usage::from).unwrap_or_default();
        assert_eq!(usage, Usage { input: 12, cached_input: 0, cache_write: 0, output: 0, reasoning: 0 });
        let full = r#"{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}"#;
        let usage: Usage = serde_json::from_str::<OpenAiUsage>(full).map(Usage::from).unwrap_or_default();
        assert_eq!(usage, Usage { input: 10, cached_input: 4, cache_write: 0, output: 5, reasoning: 2 });
    }
}
