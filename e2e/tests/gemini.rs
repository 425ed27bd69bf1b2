//! What only Gemini does behind the OpenAI API — over real loopback HTTP
//! against the mock upstream, which speaks Gemini's wire format from its own
//! code. What every translated provider does is in `provider_scenarios.rs`.

use serde_json::Value;
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::provider_bed::{Provider, chat_body};

#[tokio::test]
async fn blocked_content_ends_as_content_filter() -> anyhow::Result<()> {
    let s = Provider::Gemini.bed(Behaviour::default(), "").await?;
    let answer: Value = s.chat(&chat_body(Provider::Gemini.model(), "mock:safety", false)).await?.json().await?;
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    Ok(())
}
