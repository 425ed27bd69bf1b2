//! Gemini behind the OpenAI API — over real loopback HTTP against the mock
//! upstream, which speaks Gemini's wire format from its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::gemini_channel;
use weaver_e2e::gateway::{content_of, data_events, data_events_of, openai_error, read_until};
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::gemini::{CACHED_TOKENS, THOUGHT_SIGNATURE};
use weaver_e2e::provider_bed::{ProviderBed, UPSTREAM_KEY, chat_body};

/// The Gemini channel's prices (0.30 / 2.50 / 0.03 USD per million tokens)
/// in nano-dollars per token.
const INPUT_NANOS: u64 = 300;
const OUTPUT_NANOS: u64 = 2_500;
const CACHED_NANOS: u64 = 30;

/// The public model of the Gemini channel.
const MODEL: &str = "gemini-test";

async fn setup(behaviour: Behaviour) -> anyhow::Result<ProviderBed> {
    ProviderBed::start(behaviour, "", |root| gemini_channel(&format!("{root}/v1beta"))).await
}

#[tokio::test]
async fn openai_chat_over_a_gemini_channel_is_translated_both_ways() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let mut body = chat_body(MODEL, "Say hi", false);
    body["max_completion_tokens"] = json!(300);
    body["stop"] = json!(["never-said"]);
    body["seed"] = json!(7);
    body["temperature"] = json!(1.5);
    body["response_format"] = json!({"type": "json_object"});
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "gemini-test");
    assert_eq!(answer["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: Say hi");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    let usage = &answer["usage"];
    assert_eq!(usage["completion_tokens"], 10);
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap_or(0) + 10);

    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1beta/models/gemini-2.5-flash:generateContent");
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-goog-api-key").as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(header("authorization"), None);
    assert_eq!(
        seen.body,
        json!({
            "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"maxOutputTokens": 300, "temperature": 1.5, "stopSequences": ["never-said"],
                                 "seed": 7, "responseMimeType": "application/json"},
        })
    );

    // Images: inline data and file URLs.
    let body = json!({"model": "gemini-test", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]}]});
    let answer: Value = s.chat(&body).await?.json().await?;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "This is LLM Weaver's mock channel. You said: What is this? (and 2 images)"
    );
    let parts = &s.upstream.requests()[1].body["contents"][0]["parts"];
    assert_eq!(parts[1], json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}));
    assert_eq!(parts[2], json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}));
    Ok(())
}

#[tokio::test]
async fn streams_are_translated_event_by_event_as_they_arrive() -> anyhow::Result<()> {
    // Frames: the first two words; then the upstream holds the stream.
    let s = setup(Behaviour { hold_after: Some(2), ..Behaviour::default() }).await?;
    let mut body = chat_body(MODEL, "Say hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, |text| text.contains("\"content\":\"is \"")).await?;
    assert!(text.contains(r#""role":"assistant""#), "{text}");
    assert!(!text.contains("finish_reason\":\"stop"), "{text}");
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
    assert!(chunks.iter().all(|c| !c.is_object() || c["model"] == "gemini-test"));
    assert_eq!(s.upstream.requests()[0].uri, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
    Ok(())
}

#[tokio::test]
async fn a_two_turn_tool_conversation_keeps_its_thought_signature() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let mut ids = Vec::new();
    for stream in [false, true] {
        let first = json!({"model": "gemini-test", "messages": [question], "tools": tools, "stream": stream,
                           "tool_choice": "required"});
        let response = s.chat(&first).await?;
        let (id, arguments, finish) = if stream {
            let chunks = data_events(response).await?;
            let calls: Vec<&Value> =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
            assert_eq!(calls.len(), 1, "Gemini sends a call whole: {calls:?}");
            let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            (calls[0]["id"].clone(), calls[0]["function"]["arguments"].as_str().unwrap_or_default().to_owned(), finish)
        } else {
            let answer: Value = response.json().await?;
            let call = &answer["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["type"], "function");
            let finish = answer["choices"][0]["finish_reason"].as_str().map(str::to_owned);
            (call["id"].clone(), call["function"]["arguments"].as_str().unwrap_or_default().to_owned(), finish)
        };
        assert!(id.as_str().is_some_and(|id| id.starts_with("call_")), "stream: {stream}: {id}");
        assert_eq!(serde_json::from_str::<Value>(&arguments)?, json!({"city": "mock \"value\""}), "stream: {stream}");
        assert_eq!(finish.as_deref(), Some("tool_calls"));
        assert_eq!(
            s.upstream.requests().last().map(|r| r.body["toolConfig"].clone()),
            Some(json!({"functionCallingConfig": {"mode": "ANY"}}))
        );
        ids.push(id.clone());

        let second = json!({"model": "gemini-test", "stream": stream, "tools": tools, "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"},
        ]});
        let response = s.chat(&second).await?;
        assert_eq!(response.status(), StatusCode::OK, "the signed call is accepted (stream: {stream})");
        let text = if stream {
            content_of(&data_events(response).await?)
        } else {
            let answer: Value = response.json().await?;
            answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(text, "The tool said: sunny", "stream: {stream}");
        let seen = s.upstream.requests().pop().map(|r| r.body).unwrap_or_default();
        assert_eq!(seen["contents"][1]["parts"][0]["thoughtSignature"], THOUGHT_SIGNATURE);
        assert_eq!(
            seen["contents"][2]["parts"][0],
            json!({"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}})
        );
    }
    assert_eq!(ids[0], ids[1], "a streamed answer names its call as the whole one does");

    // Parallel calls: two calls in one turn, indices and ids kept apart; both
    // answered in the next turn.
    let parallel = json!({"model": "gemini-test", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris and Oslo? mock:parallel"}]});
    let chunks = data_events(s.chat(&parallel).await?).await?;
    let calls: Vec<Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).cloned().collect();
    assert_eq!(calls.iter().map(|c| c["index"].clone()).collect::<Vec<_>>(), [json!(0), json!(1)]);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    let mut messages = vec![
        json!({"role": "user", "content": "Weather in Paris and Oslo? mock:parallel"}),
        json!({
        "role": "assistant", "tool_calls": calls.iter().map(|c| json!({"id": c["id"], "type": "function",
            "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}})).collect::<Vec<_>>()}),
    ];
    for (call, said) in calls.iter().zip(["sunny", "rainy"]) {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": said}));
    }
    let answer: Value =
        s.chat(&json!({"model": "gemini-test", "tools": tools, "messages": messages})).await?.json().await?;
    assert_eq!(answer["choices"][0]["message"]["content"], "The tool said: sunny | rainy", "{answer}");
    Ok(())
}

#[tokio::test]
async fn usage_and_cost_of_a_gemini_channel_are_recorded_to_the_nano_dollar() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let mut reported = Vec::new();
    for (id, content, stream) in [
        ("cache-whole", "Hello mock:cache", false),
        ("cache-stream", "Hello mock:cache", true),
        ("late-stream", "Hello mock:cache mock:usage-late", true),
    ] {
        let mut body = chat_body(MODEL, content, stream);
        body["reasoning_effort"] = json!("medium");
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = s.request("/v1/chat/completions").header("x-request-id", id).json(&body).send().await?;
        let (usage, reasoning) = if stream {
            let chunks = data_events(response).await?;
            let reasoning: String =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
            (chunks.iter().rev().find(|c| c["usage"].is_object()).map(|c| c["usage"].clone()), reasoning)
        } else {
            let answer = response.json::<Value>().await?;
            let reasoning =
                answer["choices"][0]["message"]["reasoning_content"].as_str().unwrap_or_default().to_owned();
            (Some(answer["usage"].clone()), reasoning)
        };
        assert_eq!(reasoning, "Let me think about that.", "{id}");
        reported.push((id, usage.unwrap_or_default()));
    }
    let seen = s.upstream.requests()[0].body["generationConfig"]["thinkingConfig"].clone();
    assert_eq!(seen, json!({"thinkingBudget": 4096, "includeThoughts": true}));
    let records = s.records().await?;
    for (id, usage) in reported {
        let r = records.iter().find(|r| r.request_id == id).ok_or_else(|| anyhow::anyhow!("no record {id}"))?;
        assert!(!r.estimated, "{id}");
        assert_eq!(r.channel.as_deref(), Some("gemini"), "{id}");
        assert_eq!((r.model.as_str(), r.upstream_model.as_str()), ("gemini-test", "gemini-2.5-flash"));
        assert_eq!(r.input_tokens, usage["prompt_tokens"].as_u64().unwrap_or_default(), "{id}");
        assert_eq!(r.cached_input_tokens, CACHED_TOKENS, "{id}");
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], CACHED_TOKENS, "{id}");
        assert_eq!(r.output_tokens, usage["completion_tokens"].as_u64().unwrap_or_default(), "{id}");
        // Thoughts are output, and reasoning.
        assert_eq!(r.reasoning_tokens, 6, "{id}");
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 6, "{id}");
        let cost = (r.input_tokens - CACHED_TOKENS) * INPUT_NANOS
            + CACHED_TOKENS * CACHED_NANOS
            + r.output_tokens * OUTPUT_NANOS;
        assert_eq!(r.cost_nanos, cost, "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn gemini_errors_become_openai_errors_with_the_right_status() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    s.set(Behaviour { error_status: Some(429), retry_after: Some(7), ..Behaviour::default() });
    let (status, retry_after, error) = openai_error(s.chat(&chat_body(MODEL, "x", false)).await?).await?;
    assert_eq!((status, retry_after.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("7")));
    assert_eq!(
        (error["type"].as_str(), error["message"].as_str()),
        (Some("RESOURCE_EXHAUSTED"), Some("injected failure"))
    );

    s.set(Behaviour { error_status: Some(503), ..Behaviour::default() });
    let (status, _, _) = openai_error(s.chat(&chat_body(MODEL, "x", false)).await?).await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // A 400 keeps Google's message.
    s.set(Behaviour::default());
    let mut bad = chat_body(MODEL, "x", false);
    bad["temperature"] = json!(2.5);
    let (status, _, error) = openai_error(s.chat(&bad).await?).await?;
    assert_eq!((status, error["type"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT")));
    assert!(error["message"].as_str().is_some_and(|m| m.contains("temperature")), "{error}");

    // A 200 whose body is an error: for a plain request and a streamed one.
    for stream in [false, true] {
        let (status, _, error) = openai_error(s.chat(&chat_body(MODEL, "mock:error-200", stream)).await?).await?;
        assert_eq!((status, error["type"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("RESOURCE_EXHAUSTED")));
    }

    // An error event mid-stream: what came before, then an error event.
    let chunks = data_events(s.chat(&chat_body(MODEL, "mock:error-mid-stream", true)).await?).await?;
    assert_eq!(content_of(&chunks), "This ");
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_overloaded", "{last}");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("overloaded")));

    // Blocked content ends as `content_filter`.
    let answer: Value = s.chat(&chat_body(MODEL, "mock:safety", false)).await?.json().await?;
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
    let records = s.records().await?;
    assert!(records.iter().any(|r| r.status == 503 && r.output_tokens > 0), "the cut stream is recorded and charged");
    Ok(())
}

#[tokio::test]
async fn embeddings_over_a_gemini_channel_are_one_batch() -> anyhow::Result<()> {
    let s = setup(Behaviour::default()).await?;
    let response = s
        .post("/v1/embeddings", &json!({"model": "gemini-embed", "input": ["first", "second"], "dimensions": 8}))
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "gemini-embed");
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.iter().map(|d| d["index"].clone()).collect::<Vec<_>>(), [json!(0), json!(1)]);
    assert!(data.iter().all(|d| d["embedding"].as_array().is_some_and(|v| v.len() == 8)));
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1beta/models/gemini-embedding-001:batchEmbedContents");
    assert_eq!(seen.body["requests"][1]["content"], json!({"parts": [{"text": "second"}]}));
    let records = s.records().await?;
    assert!(records.iter().all(|r| r.estimated && r.input_tokens > 0), "Gemini reports no tokens: counted");
    Ok(())
}
