//! Token usage as OpenAI-family upstreams report it.

use serde::Deserialize;

/// Tokens of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// The `usage` member of a complete (non-streamed) answer, if any.
pub fn from_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        #[serde(default)]
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}
