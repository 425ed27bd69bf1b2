//! The provider tests' world: the mock upstream (requiring
//! [`UPSTREAM_KEY`]) and a standalone gateway serving
//! [`openai_namespace`] plus one channel of the provider under test, with a
//! client that calls it as the namespace's key [`KEY`]; and the translated
//! providers ([`Provider`]) a bed can front.

use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use weaver_store::UsageRecord;

use crate::fixtures::{KEY, anthropic_channel, cohere_channel, gemini_channel, openai_namespace};
use crate::gateway::TestGateway;
use crate::mock_upstream::{Behaviour, MockUpstream};

/// The upstream credential of [`openai_namespace`]'s Secret, which every
/// channel there shares and the mock requires.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";

/// A mock upstream and the standalone gateway in front of it.
pub struct ProviderBed {
    pub upstream: MockUpstream,
    pub gateway: TestGateway,
    pub client: reqwest::Client,
}

impl ProviderBed {
    /// Starts the upstream with `behaviour` (plus the key requirement) and a
    /// gateway serving [`openai_namespace`] (`key_spec` is extra lines of its
    /// ApiKey's spec) and the channel manifest `channel` builds from the
    /// upstream's root URL (`http://127.0.0.1:PORT`, no path).
    pub async fn start(
        behaviour: Behaviour,
        key_spec: &str,
        channel: impl FnOnce(&str) -> String,
    ) -> anyhow::Result<Self> {
        let upstream = MockUpstream::start(keyed(behaviour)).await?;
        let yaml = openai_namespace(&upstream.base_url(), key_spec) + &channel(&format!("http://{}", upstream.addr));
        let gateway = TestGateway::start(&yaml, &[]).await?;
        Ok(Self { upstream, gateway, client: reqwest::Client::new() })
    }

    /// Changes how the upstream answers (it keeps requiring the key).
    pub fn set(&self, behaviour: Behaviour) {
        self.upstream.set(keyed(behaviour));
    }

    /// A POST to the gateway's `path` with [`KEY`] as bearer token, for a
    /// test to add headers and a body to.
    pub fn request(&self, path: &str) -> RequestBuilder {
        self.client.post(self.gateway.url(path)).bearer_auth(KEY)
    }

    /// POSTs `body` as JSON to `path` with [`KEY`].
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        Ok(self.request(path).json(body).send().await?)
    }

    /// POSTs `body` to `/v1/chat/completions` with [`KEY`].
    pub async fn chat(&self, body: &Value) -> anyhow::Result<Response> {
        self.post("/v1/chat/completions", body).await
    }

    /// Shuts the gateway down (which writes every record) and reads them all.
    pub async fn records(self) -> anyhow::Result<Vec<UsageRecord>> {
        self.gateway.usage_records().await
    }
}

/// A provider the gateway translates OpenAI's API to, as one channel of
/// the fixtures ([`anthropic_channel`], [`gemini_channel`],
/// [`cohere_channel`]) serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    Gemini,
    Cohere,
}

impl Provider {
    /// Starts a bed serving this provider's channel (`key_spec` as in
    /// [`ProviderBed::start`]).
    pub async fn bed(self, behaviour: Behaviour, key_spec: &str) -> anyhow::Result<ProviderBed> {
        ProviderBed::start(behaviour, key_spec, |root| match self {
            Self::Anthropic => anthropic_channel(root),
            Self::Gemini => gemini_channel(&format!("{root}/v1beta")),
            Self::Cohere => cohere_channel(&format!("{root}/v2")),
        })
        .await
    }

    /// The channel's name (as usage records name it).
    pub fn channel(self) -> &'static str {
        match self {
            Self::Anthropic => "claude",
            Self::Gemini => "gemini",
            Self::Cohere => "cohere",
        }
    }

    /// The public chat model the channel serves.
    pub fn model(self) -> &'static str {
        match self {
            Self::Anthropic => "claude-test",
            Self::Gemini => "gemini-test",
            Self::Cohere => "command-test",
        }
    }

    /// The upstream model [`Self::model`] is sent as.
    pub fn upstream_model(self) -> &'static str {
        match self {
            Self::Anthropic => "claude-sonnet-4-6",
            Self::Gemini => "gemini-2.5-flash",
            Self::Cohere => "command-a-03-2025",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

fn keyed(behaviour: Behaviour) -> Behaviour {
    Behaviour { require_key: Some(UPSTREAM_KEY.into()), ..behaviour }
}

/// An OpenAI chat request for `model`: a system prompt, then `content` from
/// the user, streamed or not.
pub fn chat_body(model: &str, content: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        "stream": stream,
    })
}
