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
    /// Nearly every answer's usage is a flat object of integers (plus the
    /// two details objects), which [`quick`] reads without serde's
    /// per-key string handling and UTF-8 checks (OpenAI's usage object:
    /// ~3.8k instructions instead of ~5.4k, callgrind); anything else goes
    /// to serde, so the result is always serde's.
    pub fn read(json: &[u8]) -> Option<Self> {
        quick::openai(json).or_else(|| Self::deserialize(&mut serde_json::Deserializer::from_slice(json)).ok())
    }
}

/// A reader for the common shape of OpenAI's `usage` object. It answers
/// only where its answer is certainly serde's: on anything outside that
/// shape (escapes or non-ASCII in a key, a string, float, negative or
/// oversized number, an array, a repeated member, deeper nesting) it gives
/// up (`None`) and the caller asks serde, which decides. The property test
/// below holds it to serde.
mod quick {
    use super::{CompletionDetails, OpenAiUsage, PromptDetails};

    struct Cursor<'a> {
        json: &'a [u8],
        at: usize,
    }

    impl<'a> Cursor<'a> {
        fn peek(&self) -> Option<u8> {
            self.json.get(self.at).copied()
        }

        /// JSON's whitespace, as serde_json skips it.
        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            self.skip_ws();
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// A member's key: printable ASCII without escapes only. Found
        /// with memchr and checked in a pass without early exit (a
        /// byte-by-byte loop cost a quarter more in callgrind).
        fn key(&mut self) -> Option<&'a [u8]> {
            self.eat(b'"')?;
            let rest = &self.json[self.at..];
            let len = memchr::memchr2(b'"', b'\\', rest)?;
            let key = &rest[..len];
            let unusual = key.iter().fold(false, |unusual, b| unusual | !(b' '..=b'~').contains(b));
            if rest[len] != b'"' || unusual {
                return None;
            }
            self.at += len + 1;
            self.eat(b':')?;
            Some(key)
        }

        /// A count: `null` (zero) or an integer serde reads as `u64`.
        fn count(&mut self) -> Option<u64> {
            self.skip_ws();
            if self.json[self.at..].starts_with(b"null") {
                self.at += 4;
                return Some(0);
            }
            let start = self.at;
            let mut n: u64 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                self.at += 1;
            }
            let digits = self.at - start;
            // No digits, a leading zero, or a float: serde decides.
            if digits == 0
                || (digits > 1 && self.json[start] == b'0')
                || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            Some(n)
        }

        /// After a member: `true` at the object's end, `false` before the
        /// next member.
        fn end(&mut self) -> Option<bool> {
            self.skip_ws();
            let end = match self.peek()? {
                b'}' => true,
                b',' => false,
                _ => return None,
            };
            self.at += 1;
            Some(end)
        }

        /// An object (or `null`: zero) whose only counted member is `name`;
        /// other members must be counts too.
        fn details(&mut self, name: &[u8]) -> Option<u64> {
            self.skip_ws();
            if self.json[self.at..].starts_with(b"null") {
                self.at += 4;
                return Some(0);
            }
            self.eat(b'{')?;
            self.skip_ws();
            let mut value = None;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(0);
            }
            loop {
                let key = self.key()?;
                let n = self.count()?;
                if key == name {
                    // A repeated member is serde's error.
                    if value.replace(n).is_some() {
                        return None;
                    }
                }
                if self.end()? {
                    return Some(value.unwrap_or(0));
                }
            }
        }
    }

    pub(super) fn openai(json: &[u8]) -> Option<OpenAiUsage> {
        let mut c = Cursor { json, at: 0 };
        let mut usage = OpenAiUsage::default();
        // Members seen, one bit each: a repeated one is serde's error.
        let mut seen = 0u8;
        c.eat(b'{')?;
        c.skip_ws();
        if c.peek()? == b'}' {
            return Some(usage);
        }
        loop {
            let key = c.key()?;
            let bit = match key {
                b"prompt_tokens" => {
                    usage.prompt_tokens = c.count()?;
                    1
                }
                b"completion_tokens" => {
                    usage.completion_tokens = c.count()?;
                    2
                }
                b"prompt_tokens_details" => {
                    usage.prompt_tokens_details = PromptDetails { cached_tokens: c.details(b"cached_tokens")? };
                    4
                }
                b"completion_tokens_details" => {
                    usage.completion_tokens_details =
                        CompletionDetails { reasoning_tokens: c.details(b"reasoning_tokens")? };
                    8
                }
                _ => {
                    c.count()?;
                    0
                }
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            if c.end()? {
                return Some(usage);
            }
        }
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
    use proptest::prelude::*;

    use super::*;

    /// Serde's reading of the object that starts `json`, as the decoders
    /// read it: what follows the object is not looked at.
    fn serde(json: &str) -> Option<Usage> {
        OpenAiUsage::deserialize(&mut serde_json::Deserializer::from_str(json)).ok().map(Usage::from)
    }

    /// The quick reader takes the usage OpenAI and its family send (so
    /// the common case does not fall back to serde) and reads it as serde does.
    #[test]
    fn the_usual_usage_objects_are_read_quickly() {
        for json in [
            r#"{"prompt_tokens":13,"completion_tokens":13,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
            r#"{ "prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": { "cached_tokens": 4 }, "completion_tokens_details": {"reasoning_tokens": 2} }"#,
            r#"{"prompt_tokens":12,"completion_tokens":null,"prompt_tokens_details":null,"completion_tokens_details":{}}"#,
            "{}",
        ] {
            let quick = quick::openai(json.as_bytes()).map(Usage::from);
            assert!(quick.is_some(), "{json}");
            assert_eq!(quick, serde(json), "{json}");
        }
    }

    /// One member of a usage object, valid or not, in the shapes upstreams
    /// send and the ones the quick reader leaves to serde.
    fn member() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "cached_tokens",
            "reasoning_tokens",
            "total_tokens",
            r"prompt\u005ftokens",
            "caf\u{e9}",
            "",
        ]);
        let leaf = prop::sample::select(vec![
            "0",
            "13",
            "007",
            "-1",
            "1.5",
            "2e3",
            "null",
            "nul",
            "true",
            r#""7""#,
            "[1]",
            "18446744073709551615",
            "18446744073709551616",
            "",
        ]);
        let inner = (key.clone(), leaf.clone(), prop::sample::select(vec![" ", "", "\n\t"]))
            .prop_map(|(k, v, ws)| format!(r#"{ws}"{k}"{ws}:{ws}{v}{ws}"#));
        let object = proptest::collection::vec(inner, 0..4).prop_map(|m| format!("{{{}}}", m.join(",")));
        let value = prop_oneof![leaf.prop_map(str::to_owned), object];
        (key, value, prop::sample::select(vec![" ", "", "\r\n"]))
            .prop_map(|(k, v, ws)| format!(r#"{ws}"{k}"{ws}:{ws}{v}{ws}"#))
    }

    proptest! {
        /// Whatever the object, the quick reader either gives up or gives
        /// serde's answer, and `read` always gives serde's.
        #[test]
        fn the_quick_reader_agrees_with_serde(
            members in proptest::collection::vec(member(), 0..7),
            separator in prop::sample::select(vec![",", ", ", ",,", ""]),
            tail in prop::sample::select(vec!["", ",", "]", r#","choices":[]}"#]),
        ) {
            let json = format!("{{{}}}{tail}", members.join(separator));
            let expected = serde(&json);
            if let Some(quick) = quick::openai(json.as_bytes()) {
                prop_assert_eq!(Some(Usage::from(quick)), expected, "{}", json);
            }
            prop_assert_eq!(OpenAiUsage::read(json.as_bytes()).map(Usage::from), expected, "{}", json);
        }
    }

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
