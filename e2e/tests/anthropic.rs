//! Anthropic behind the OpenAI API, and the Anthropic Messages API in front
//! of every channel — over real loopback HTTP against the mock upstream,
//! which speaks both wire formats from its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, anthropic_channel};
use weaver_e2e::gateway::{content_of, data_events, data_events_of, named_events, openai_error, read_until};
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::anthropic::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS};
use weaver_e2e::provider_bed::{ProviderBed, UPSTREAM_KEY, chat_body};

/// The Anthropic channel's prices (3 / 15 / 0.30 / 3.75 USD per million
/// tokens) in nano-dollars per token.
const INPUT_NANOS: u64 = 3_000;
const OUTPUT_NANOS: u64 = 15_000;
const CACHE_READ_NANOS: u64 = 300;
const CACHE_WRITE_NANOS: u64 = 3_750;

/// The public model of the Anthropic channel.
const MODEL: &str = "claude-test";

async fn setup(behaviour: Behaviour, key_spec: &str) -> anyhow::Result<ProviderBed> {
    ProviderBed::start(behaviour, key_spec, anthropic_channel).await
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

// --- OpenAI clients, Anthropic channel -----------------------------------------------------

#[tokio::test]
async fn openai_chat_over_an_anthropic_channel_is_translated_both_ways() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let mut body = chat_body(MODEL, "Say hi", false);
    body["max_completion_tokens"] = json!(300);
    body["stop"] = json!(["never-said"]);
    body["user"] = json!("user-7");
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "claude-test");
    assert_eq!(answer["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: Say hi");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let usage = &answer["usage"];
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap_or(0) + 10);

    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/messages");
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-api-key").as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header("authorization"), None);
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-sonnet-4-6",
            "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
            "stop_sequences": ["never-said"],
            "metadata": {"user_id": "user-7"},
        })
    );
    Ok(())
}

#[tokio::test]
async fn images_reach_an_anthropic_channel() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let body = json!({"model": "claude-test", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]}]});
    let answer: Value = s.chat(&body).await?.json().await?;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "This is LLM Weaver's mock channel. You said: What is this? (and 2 images)"
    );
    let seen = &s.upstream.requests()[0].body["messages"][0]["content"];
    assert_eq!(
        seen[1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(seen[2], json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}));
    Ok(())
}

#[tokio::test]
async fn streams_are_translated_event_by_event_as_they_arrive() -> anyhow::Result<()> {
    // Frames: message_start, ping, content_block_start, an empty text delta,
    // the first word; then the upstream holds the stream.
    let s = setup(Behaviour { hold_after: Some(5), ..Behaviour::default() }, "").await?;
    let mut body = chat_body(MODEL, "Say hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, |text| text.contains("\"content\":\"This \"")).await?;
    assert!(text.contains(r#""role":"assistant""#), "{text}");
    s.upstream.release();
    read_until(&mut stream, &mut text, |_| false).await?;
    let chunks = data_events_of(&text);
    assert_eq!(content_of(&chunks), "This is LLM Weaver's mock channel. You said: Say hi");
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));
    let finish = &chunks[chunks.len() - 3];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    assert!(chunks.iter().all(|c| !c.is_object() || c["model"] == "claude-test"));
    assert_eq!(s.upstream.requests()[0].body["stream"], true);
    Ok(())
}

#[tokio::test]
async fn a_two_turn_tool_conversation_keeps_its_ids() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    for stream in [false, true] {
        let first = json!({"model": "claude-test", "messages": [question], "tools": tools, "stream": stream});
        let response = s.chat(&first).await?;
        let (id, arguments, finish) = if stream {
            let chunks = data_events(response).await?;
            let calls: Vec<&Value> =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
            assert!(calls.len() > 3, "the arguments arrive in fragments: {calls:?}");
            assert!(calls.iter().all(|c| c["index"] == 0));
            let arguments: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
            let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            (calls[0]["id"].clone(), arguments, finish)
        } else {
            let answer: Value = response.json().await?;
            let call = &answer["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["type"], "function");
            let finish = answer["choices"][0]["finish_reason"].as_str().map(str::to_owned);
            (call["id"].clone(), call["function"]["arguments"].as_str().unwrap_or_default().to_owned(), finish)
        };
        assert_eq!(id, "toolu_mock_0", "stream: {stream}");
        assert_eq!(serde_json::from_str::<Value>(&arguments)?, json!({"city": "mock \"value\""}), "stream: {stream}");
        assert_eq!(finish.as_deref(), Some("tool_calls"));

        let second = json!({"model": "claude-test", "stream": stream, "tools": tools, "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"},
        ]});
        let response = s.chat(&second).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let text = if stream {
            content_of(&data_events(response).await?)
        } else {
            let answer: Value = response.json().await?;
            answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(text, "The tool said: sunny", "stream: {stream}");
        let seen = s.upstream.requests().pop().map(|r| r.body).unwrap_or_default();
        assert_eq!(seen["messages"][1]["content"][0]["id"], "toolu_mock_0");
        assert_eq!(seen["messages"][2]["content"][0]["tool_use_id"], "toolu_mock_0");
    }

    // Parallel calls: two calls in one turn, indices kept apart.
    let parallel = json!({"model": "claude-test", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris and Oslo? mock:parallel"}]});
    let chunks = data_events(s.chat(&parallel).await?).await?;
    let starts: Vec<(Value, Value)> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .filter(|c| c.get("id").is_some())
        .map(|c| (c["index"].clone(), c["id"].clone()))
        .collect();
    assert_eq!(starts, [(json!(0), json!("toolu_mock_0")), (json!(1), json!("toolu_mock_1"))]);
    Ok(())
}

#[tokio::test]
async fn usage_and_cost_of_an_anthropic_channel_are_recorded_to_the_nano_dollar() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    let mut reported = Vec::new();
    for (id, content, stream) in [
        ("cache-whole", "Hello mock:cache", false),
        ("cache-stream", "Hello mock:cache", true),
        ("late-stream", "Hello mock:cache mock:usage-late", true),
    ] {
        let mut body = chat_body(MODEL, content, stream);
        body["stream_options"] = json!({"include_usage": stream});
        if !stream {
            body.as_object_mut().map(|b| b.remove("stream_options"));
        }
        let response = s.request("/v1/chat/completions").header("x-request-id", id).json(&body).send().await?;
        let usage = if stream {
            data_events(response).await?.iter().rev().find(|c| c["usage"].is_object()).map(|c| c["usage"].clone())
        } else {
            Some(response.json::<Value>().await?["usage"].clone())
        };
        reported.push((id, usage.unwrap_or_default()));
    }
    let records = s.records().await?;
    for (id, usage) in reported {
        let r = records.iter().find(|r| r.request_id == id).ok_or_else(|| anyhow::anyhow!("no record {id}"))?;
        assert!(!r.estimated, "{id}");
        assert_eq!(r.channel.as_deref(), Some("claude"), "{id}");
        assert_eq!((r.model.as_str(), r.upstream_model.as_str()), ("claude-test", "claude-sonnet-4-6"));
        assert_eq!(r.input_tokens, usage["prompt_tokens"].as_u64().unwrap_or_default(), "{id}");
        assert_eq!(r.cached_input_tokens, CACHE_READ_TOKENS, "{id}");
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], CACHE_READ_TOKENS, "{id}");
        assert_eq!(r.cache_write_tokens, CACHE_WRITE_TOKENS, "{id}");
        assert_eq!(r.output_tokens, usage["completion_tokens"].as_u64().unwrap_or_default(), "{id}");
        let uncached = r.input_tokens - CACHE_READ_TOKENS - CACHE_WRITE_TOKENS;
        assert!(uncached > 0, "{id}");
        let cost = uncached * INPUT_NANOS
            + CACHE_READ_TOKENS * CACHE_READ_NANOS
            + CACHE_WRITE_TOKENS * CACHE_WRITE_NANOS
            + r.output_tokens * OUTPUT_NANOS;
        assert_eq!(r.cost_nanos, cost, "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn anthropic_errors_become_openai_errors_with_the_right_status() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "").await?;
    s.set(Behaviour { error_status: Some(429), retry_after: Some(7), ..Behaviour::default() });
    let (status, retry_after, error) = openai_error(s.chat(&chat_body(MODEL, "x", false)).await?).await?;
    assert_eq!(
        (status, retry_after.as_deref(), error["type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("7"), Some("rate_limit_error"))
    );

    s.set(Behaviour { error_status: Some(529), ..Behaviour::default() });
    let (status, _, error) = openai_error(s.chat(&chat_body(MODEL, "x", false)).await?).await?;
    assert_eq!((status, error["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_overloaded")));

    s.set(Behaviour::default());
    let mut hot = chat_body(MODEL, "x", false);
    hot["messages"] = json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "not-t", "content": "?"}]);
    let (status, _, error) = openai_error(s.chat(&hot).await?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("tool_use_id")),
        "the upstream's message is kept: {error}"
    );

    // A 200 whose body is an error: for a plain request and a streamed one.
    for stream in [false, true] {
        let (status, _, error) = openai_error(s.chat(&chat_body(MODEL, "mock:error-200", stream)).await?).await?;
        assert_eq!((status, error["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_overloaded")));
    }

    // An error event mid-stream: what came before, then an error event.
    let chunks = data_events(s.chat(&chat_body(MODEL, "mock:error-mid-stream", true)).await?).await?;
    assert_eq!(content_of(&chunks), "This ");
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_overloaded", "{last}");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("Overloaded")));
    let records = s.records().await?;
    assert!(records.iter().any(|r| r.status == 503 && r.output_tokens > 0), "the cut stream is recorded and charged");
    Ok(())
}

// --- The Messages API in front ---------------------------------------------------------------

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
    let stream =
        records.iter().find(|r| r.request_id == "native-stream").ok_or_else(|| anyhow::anyhow!("no record"))?;
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
    // Anthropic requires `max_tokens`, and answers its absence so.
    for model in ["claude-test", "gpt-4o-mini"] {
        let mut body = messages_body(model, "x", false);
        body.as_object_mut().map(|b| b.remove("max_tokens"));
        let response = messages(&s, "/v1/messages", &body).await?;
        let status = response.status();
        let error: Value = response.json().await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{model}: {error}");
        assert_eq!(
            error,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}),
            "{model}"
        );
    }
    assert!(s.upstream.requests().is_empty(), "no refused request went upstream");

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
