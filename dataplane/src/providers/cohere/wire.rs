//! The parts of Cohere's v2 answers both translations read: usage, finish
//! reasons and tool calls (members as in the v2 chat reference,
//! <https://docs.cohere.com/reference/chat> and
//! <https://docs.cohere.com/reference/chat-stream>).

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use crate::metering::Usage;

type Str<'a> = Cow<'a, str>;

/// A count Cohere may write as a float (`billed_units` are numbers).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = Option::<f64>::deserialize(d)?;
    Ok(n.filter(|n| n.is_finite() && *n >= 0.0).map(|n| n.round() as u64))
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct Tokens {
    #[serde(default, deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub output_tokens: Option<u64>,
}

/// A `usage` object: `billed_units` (what is billed) and `tokens` (what the
/// model read and wrote, prompt template included).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct CohereUsage {
    #[serde(default)]
    pub billed_units: Option<Tokens>,
    #[serde(default)]
    pub tokens: Option<Tokens>,
    /// Prompt tokens read from Cohere's cache, where reported.
    #[serde(default, deserialize_with = "count")]
    pub cached_tokens: Option<u64>,
}

impl From<CohereUsage> for Usage {
    /// What is billed: `billed_units`, each count falling back to `tokens`.
    fn from(u: CohereUsage) -> Self {
        let billed = u.billed_units.unwrap_or_default();
        let raw = u.tokens.unwrap_or_default();
        let input = billed.input_tokens.or(raw.input_tokens).unwrap_or(0);
        Self {
            input,
            cached_input: u.cached_tokens.unwrap_or(0).min(input),
            cache_write: 0,
            output: billed.output_tokens.or(raw.output_tokens).unwrap_or(0),
            reasoning: 0,
        }
    }
}

/// OpenAI's `finish_reason` for a Cohere `finish_reason` (compared without
/// case: some schemas write them in lower case); `None` for the reasons that
/// mean the answer failed (`ERROR`, `TIMEOUT`).
pub(crate) fn finish_reason(reason: &str) -> Option<&'static str> {
    Some(match reason.to_ascii_uppercase().as_str() {
        "MAX_TOKENS" => "length",
        "TOOL_CALL" => "tool_calls",
        "ERROR" | "TIMEOUT" => return None,
        // COMPLETE, STOP_SEQUENCE and reasons added later.
        _ => "stop",
    })
}

/// A tool call of an answer, whole or as a stream delta.
#[derive(Deserialize)]
pub(crate) struct ToolCallView<'a> {
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct FunctionView<'a> {
    #[serde(default, borrow)]
    pub name: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub arguments: Option<Str<'a>>,
}

/// A content item of an answer: text, or a reasoning model's thinking.
#[derive(Deserialize)]
pub(crate) struct ContentView<'a> {
    #[serde(default, borrow)]
    pub text: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub thinking: Option<Str<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billed_units_win_and_floats_count() {
        let usage: CohereUsage = serde_json::from_str(
            r#"{"billed_units":{"input_tokens":5.0,"output_tokens":null},"tokens":{"input_tokens":70,"output_tokens":9}}"#,
        )
        .unwrap_or_default();
        assert_eq!(Usage::from(usage), Usage { input: 5, cached_input: 0, cache_write: 0, output: 9, reasoning: 0 });
        assert_eq!(finish_reason("complete"), Some("stop"));
        assert_eq!(finish_reason("TOOL_CALL"), Some("tool_calls"));
        assert_eq!(finish_reason("ERROR"), None);
    }
}
