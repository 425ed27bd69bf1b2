//! Cohere behind the OpenAI API — over real loopback HTTP against the mock
//! upstream, which speaks Cohere's v2 wire format from its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::cohere_channel;
use weaver_e2e::gateway::{content_of, data_events, data_events_of, openai_error, read_until};
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::provider_bed::{ProviderBed, UPSTREAM_KEY, chat_body};

/// The Cohere channel's prices (2.50 / 10 USD per million tokens) in
/// nano-dollars per token.
const INPUT_NANOS: u64 = 2_500;
const OUTPUT_NANOS: u64 = 10_000;

/// The public model of the Cohere channel.
const MODEL: &str = "command-test";

async fn setup(behaviour: Behaviour) -> anyhow::Result<ProviderBed> {
    ProviderBed::start(behaviour, "", |root| cohere_channel(&format!("{root}/v2"))).await
}

#[tokio::test]
async fn openai_chat_over_a_cohere_channel_is_translated_both_ways() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let mut body = chat_body(MODEL, "Say hi", false);
    body["max_completion_tokens"] = json!(300);
    body["top_p"] = json!(0.5);
    body["stop"] = "never-said".into();
    body["user"] = json!("u-1");
    body["response_format"] = json!({"type": "json_object"});
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "command-test");
    assert_eq!(answer["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: Say hi");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["completion_tokens"], 10);

    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v2/chat");
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}")));
    assert_eq!(
        seen.body,
        json!({
            "model": "command-a-03-2025",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
            "max_tokens": 300, "p": 0.5, "stop_sequences": ["never-said"],
            "response_format": {"type": "json_object"},
        })
    );
    Ok(())
}

#[tokio::test]
async fn streams_are_translated_event_by_event_as_they_arrive() -> anyhow::Result<()> {
    // Frames: message-start, content-start, an empty delta, the first word;
    // then the upstream holds the stream.
    let s = setup(Behaviour { hold_after: Some(4), ..Behaviour::default() }).await?;
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
    assert_eq!(chunks[chunks.len() - 3]["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 2];
    assert_eq!((usage["choices"].clone(), usage["usage"]["completion_tokens"].clone()), (json!([]), json!(10)));
    assert!(chunks.iter().all(|c| !c.is_object() || c["model"] == "command-test"));
    assert_eq!(s.upstream.requests()[0].body["stream"], true);
    Ok(())
}

#[tokio::test]
async fn a_two_turn_tool_conversation_keeps_its_ids() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    for stream in [false, true] {
        let first = json!({"model": "command-test", "messages": [question], "tools": tools, "stream": stream,
                           "tool_choice": "required"});
        let response = s.chat(&first).await?;
        let (id, arguments, finish, plan) = if stream {
            let chunks = data_events(response).await?;
            let calls: Vec<&Value> =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
            assert!(calls.len() > 3, "the arguments arrive in fragments: {calls:?}");
            assert!(calls.iter().all(|c| c["index"] == 0));
            let arguments: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
            let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            let plan: String =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
            (calls[0]["id"].clone(), arguments, finish, plan)
        } else {
            let answer: Value = response.json().await?;
            let message = &answer["choices"][0]["message"];
            let call = &message["tool_calls"][0];
            let finish = answer["choices"][0]["finish_reason"].as_str().map(str::to_owned);
            let plan = message["reasoning_content"].as_str().unwrap_or_default().to_owned();
            (call["id"].clone(), call["function"]["arguments"].as_str().unwrap_or_default().to_owned(), finish, plan)
        };
        assert_eq!(id, "get_weather_mock0", "stream: {stream}");
        assert_eq!(serde_json::from_str::<Value>(&arguments)?, json!({"city": "mock \"value\""}), "stream: {stream}");
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(plan, "I will call get_weather.", "the tool plan is reasoning");
        assert_eq!(s.upstream.requests().last().map(|r| r.body["tool_choice"].clone()), Some(json!("REQUIRED")));

        let second = json!({"model": "command-test", "stream": stream, "tools": tools, "messages": [
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
        assert_eq!(
            seen["messages"][2],
            json!({"role": "tool", "tool_call_id": "get_weather_mock0", "content": "sunny"})
        );
    }

    // Parallel calls: two calls in one turn, indices kept apart.
    let parallel = json!({"model": "command-test", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris and Oslo? mock:parallel"}]});
    let chunks = data_events(s.chat(&parallel).await?).await?;
    let starts: Vec<(Value, Value)> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .filter(|c| c.get("id").is_some())
        .map(|c| (c["index"].clone(), c["id"].clone()))
        .collect();
    assert_eq!(starts, [(json!(0), json!("get_weather_mock0")), (json!(1), json!("get_weather_mock1"))]);
    Ok(())
}

#[tokio::test]
async fn billed_usage_and_cost_of_a_cohere_channel_are_recorded() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let mut reported = Vec::new();
    for (id, stream) in [("whole", false), ("stream", true)] {
        let mut body = chat_body(MODEL, "Hello", stream);
        if stream {
            body["stream_options"] = json!({"include_usage": true});
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
        assert_eq!(r.channel.as_deref(), Some("cohere"), "{id}");
        assert_eq!((r.model.as_str(), r.upstream_model.as_str()), ("command-test", "command-a-03-2025"));
        // Billed units, not the template-inflated raw counts.
        assert_eq!(r.input_tokens, usage["prompt_tokens"].as_u64().unwrap_or_default(), "{id}");
        assert!(r.input_tokens > 0 && r.input_tokens < 100, "{id}: {}", r.input_tokens);
        assert_eq!(r.output_tokens, 9, "{id}: one token a word of the answer");
        assert_eq!(r.cost_nanos, r.input_tokens * INPUT_NANOS + r.output_tokens * OUTPUT_NANOS, "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn cohere_errors_become_openai_errors_with_the_right_status() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    s.set(Behaviour { error_status: Some(429), retry_after: Some(7), ..Behaviour::default() });
    let (status, retry_after, error) = openai_error(s.chat(&chat_body(MODEL, "x", false)).await?).await?;
    assert_eq!((status, retry_after.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("7")));
    assert_eq!(error["message"], "injected failure");

    // A 400 keeps Cohere's message.
    s.set(Behaviour::default());
    let mut bad = chat_body(MODEL, "x", false);
    bad["messages"] = json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "not-t", "content": "?"}]);
    let (status, _, error) = openai_error(s.chat(&bad).await?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["message"].as_str().is_some_and(|m| m.contains("tool_call_id")), "{error}");

    // A 200 whose body is an error: for a plain request and a streamed one.
    for stream in [false, true] {
        let (status, _, error) = openai_error(s.chat(&chat_body(MODEL, "mock:error-200", stream)).await?).await?;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "stream: {stream}");
        assert!(error["message"].as_str().is_some_and(|m| m.contains("Trial key")), "{error}");
    }

    // An error in `message-end` mid-stream: what came before, then an error event.
    let chunks = data_events(s.chat(&chat_body(MODEL, "mock:error-mid-stream", true)).await?).await?;
    assert_eq!(content_of(&chunks), "This ");
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{last}");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("internal server error")), "{last}");
    Ok(())
}

#[tokio::test]
async fn embeddings_over_a_cohere_channel_name_their_input_type() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let response = s.post("/v1/embeddings", &json!({"model": "cohere-embed", "input": ["first", "second"]})).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["model"], "cohere-embed");
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2);
    assert!(data.iter().all(|d| d["embedding"].as_array().is_some_and(|v| v.len() == 16)));
    assert!(answer["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0));
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v2/embed");
    assert_eq!(
        seen.body,
        json!({"model": "embed-v4.0", "texts": ["first", "second"], "input_type": "search_document", "embedding_types": ["float"]})
    );
    let records = s.records().await?;
    assert!(records.iter().all(|r| !r.estimated && r.input_tokens > 0), "billed units are the usage");
    Ok(())
}
