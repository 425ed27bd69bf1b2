//! The Anthropic Messages API in front of every channel — over real loopback
//! HTTP against the mock upstream, which speaks both wire formats from its
//! own code. Anthropic behind the OpenAI API is in `provider_scenarios.rs`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::KEY;
use weaver_e2e::gateway::named_events;
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::anthropic::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS};
use weaver_e2e::provider_bed::{Provider, ProviderBed};

async fn setup(behaviour: Behaviour, key_spec: &str) -> anyhow::Result<ProviderBed> {
    Provider::Anthropic.bed(behaviour, key_spec).await
}

/// POSTs `body` to an Anthropic Messages API `path` as the Anthropic SDK
/// does: the key in `x-api-key`, with `anthropic-version`.
async fn messages(s: &ProviderBed, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
    Ok(s.client
        .post(s.gateway.url(path))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await?)
}

// --- The Messages API in front ---------------------------------------------------------------

/// Anthropic requires `max_tokens`, and answers its absence so: a request
/// for `model` without it is refused before it goes upstream.
async fn assert_max_tokens_is_required(s: &ProviderBed, model: &str) -> anyhow::Result<()> {
    let sent = s.upstream.requests().len();
    let mut body = messages_body(model, "x", false);
    body.as_object_mut().map(|b| b.remove("max_tokens"));
    let response = messages(s, "/v1/messages", &body).await?;
    let status = response.status();
    let error: Value = response.json().await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{model}: {error}");
    assert_eq!(
        error,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}),
        "{model}"
    );
    assert_eq!(s.upstream.requests().len(), sent, "{model}: nothing went upstream");
    Ok(())
}

fn messages_body(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 200, "system": "Be brief.",
           "messages": [{"role": "user", "content": content}], "stream": stream})
}

#[tokio::test]
async fn messages_pass_through_to_an_anthropic_channel_and_are_metered() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let raw = r#"{"model":"claude-test",  "max_tokens":200,"messages":[{"role":"user","content":"Say hi"}],"top_k":5}"#;
    let response = s
        .client
        .post(s.gateway.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "token-efficient-tools-2025-02-19")
        .header("content-type", "application/json")
        .header("x-request-id", "native-whole")
        .body(raw)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let message: Value = response.json().await?;
    assert_eq!((message["type"].as_str(), message["model"].as_str()), (Some("message"), Some("claude-test")));
    assert_eq!(message["content"][0]["text"], "This is LLM Weaver's mock channel. You said: Say hi");
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(seen.raw, raw.replace("claude-test", "claude-sonnet-4-6").as_bytes(), "the body was re-encoded");
    assert_eq!(
        seen.headers.get("anthropic-beta").and_then(|v| v.to_str().ok()),
        Some("token-efficient-tools-2025-02-19")
    );

    let response = s
        .request("/v1/messages")
        .header("x-request-id", "native-stream")
        .json(&messages_body("claude-test", "Say hi mock:cache", true))
        .send()
        .await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(response).await?;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"ping"));
    assert_eq!(events[0].1["message"]["model"], "claude-test");
    let text: String = events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, "This is LLM Weaver's mock channel. You said: Say hi mock:cache");
    let records = s.records().await?;
    let stream = records
        .iter()
        .find(|r| weaver_e2e::records::sent_id(r) == "native-stream")
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert!(!stream.estimated);
    assert_eq!((stream.cached_input_tokens, stream.cache_write_tokens), (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS));
    assert_eq!(stream.output_tokens, 11);
    assert!(stream.cost_nanos > 0);
    Ok(())
}

#[tokio::test]
async fn messages_are_translated_for_an_openai_channel() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let response = messages(&s, "/v1/messages", &messages_body("gpt-4o-mini", "Say hi", false)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let message: Value = response.json().await?;
    assert_eq!(message["type"], "message");
    assert!(message["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "Anthropic's id form: {message}");
    assert_eq!(message["model"], "gpt-4o-mini");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "This is LLM Weaver's mock channel. You said: Say hi"}])
    );
    assert!(message["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0));
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/chat/completions");
    assert_eq!(
        seen.body,
        json!({"model": "gpt-4o-mini-2024-07-18", "max_completion_tokens": 200, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]})
    );

    let events =
        named_events(messages(&s, "/v1/messages", &messages_body("gpt-4o-mini", "Say hi", true)).await?).await?;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..3], ["message_start", "ping", "content_block_start"]);
    let id = events[0].1["message"]["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("msg_") && !id.contains("chatcmpl"), "Anthropic's id form: {id}");
    assert_eq!(&names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let text: String = events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, "This is LLM Weaver's mock channel. You said: Say hi");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 10);
    assert_eq!(s.upstream.requests()[1].body["stream_options"], json!({"include_usage": true}));

    // A tool call, whole and streamed.
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let mut ask = messages_body("gpt-4o-mini", "Weather in Paris?", false);
    ask["tools"] = tools;
    let message: Value = messages(&s, "/v1/messages", &ask).await?.json().await?;
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"],
        json!([{"type": "tool_use", "id": "call_mock_0", "name": "get_weather", "input": {"city": "mock \"value\""}}])
    );
    ask["stream"] = json!(true);
    let events = named_events(messages(&s, "/v1/messages", &ask).await?).await?;
    let start = events.iter().find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use");
    assert_eq!(start.map(|(_, d)| d["content_block"]["id"].clone()), Some(json!("call_mock_0")));
    let arguments: String = events.iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments)?, json!({"city": "mock \"value\""}));

    assert_max_tokens_is_required(&s, "gpt-4o-mini").await?;
    Ok(())
}

#[tokio::test]
async fn count_tokens_works_for_every_channel() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let body = json!({"model": "claude-test", "messages": [{"role": "user", "content": "Hello, world"}]});
    let counted: Value = messages(&s, "/v1/messages/count_tokens", &body).await?.json().await?;
    assert!(counted["input_tokens"].as_u64().is_some_and(|n| n > 0), "{counted}");
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/messages/count_tokens");
    assert_eq!(seen.body["model"], "claude-sonnet-4-6");

    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello, world"}]});
    let counted: Value = messages(&s, "/v1/messages/count_tokens", &body).await?.json().await?;
    // The gateway counts itself: the text, 3 tokens a message and 3 a request.
    let text = bpe_openai::o200k_base().count("Hello, world") as u64;
    assert_eq!(counted, json!({"input_tokens": text + 6}));
    assert_eq!(s.upstream.requests().len(), 1, "nothing went upstream");
    let records = s.records().await?;
    assert!(records.iter().all(|r| r.status == 200 && r.cost_nanos == 0 && r.input_tokens == 0), "counting is free");
    Ok(())
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), r#"allowedModels: ["claude-*"]"#).await?;
    let anthropic_error = |response: reqwest::Response| async move {
        let status = response.status();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body: Value = response.json().await?;
        assert_eq!(body["type"], "error", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        anyhow::Ok((status, body["error"]["type"].as_str().unwrap_or_default().to_owned(), retry_after))
    };
    let no_key =
        s.client.post(s.gateway.url("/v1/messages")).json(&messages_body("claude-test", "x", false)).send().await?;
    assert_eq!(anthropic_error(no_key).await?, (StatusCode::UNAUTHORIZED, "authentication_error".into(), None));
    let forbidden = messages(&s, "/v1/messages", &messages_body("gpt-4o-mini", "x", false)).await?;
    assert_eq!(anthropic_error(forbidden).await?, (StatusCode::FORBIDDEN, "permission_error".into(), None));
    let unknown = messages(&s, "/v1/messages/count_tokens", &messages_body("claude-nope", "x", false)).await?;
    assert_eq!(anthropic_error(unknown).await?, (StatusCode::NOT_FOUND, "not_found_error".into(), None));
    let no_messages = messages(&s, "/v1/messages", &json!({"model": "claude-test", "max_tokens": 5})).await?;
    assert_eq!(anthropic_error(no_messages).await?.0, StatusCode::BAD_REQUEST);
    assert_max_tokens_is_required(&s, "claude-test").await?;

    s.set(Behaviour { error_status: Some(429), retry_after: Some(3), ..Behaviour::default() });
    let limited = messages(&s, "/v1/messages", &messages_body("claude-test", "x", false)).await?;
    assert_eq!(
        anthropic_error(limited).await?,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error".into(), Some("3".into()))
    );
    s.set(Behaviour { error_status: Some(529), ..Behaviour::default() });
    let overloaded = messages(&s, "/v1/messages", &messages_body("claude-test", "x", false)).await?;
    assert_eq!(anthropic_error(overloaded).await?, (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error".into(), None));

    s.set(Behaviour::default());
    let events =
        named_events(messages(&s, "/v1/messages", &messages_body("claude-test", "mock:error-mid-stream", true)).await?)
            .await?;
    let (name, data) = events.last().cloned().unwrap_or_default();
    assert_eq!(name, "error");
    assert_eq!((data["type"].as_str(), data["error"]["type"].as_str()), (Some("error"), Some("overloaded_error")));
    Ok(())
}
