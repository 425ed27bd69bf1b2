//! The scenarios every translated provider (Anthropic, Gemini, Cohere) must
//! pass behind the OpenAI API, written once and run against each provider
//! they apply to — over real loopback HTTP against the mock upstream, which
//! speaks each wire format from its own code. A test is named
//! `PROVIDER::SCENARIO`, and its assertions name the provider; what differs
//! by provider (wire details, ids, prices, error mapping) is spelt out in a
//! `match` inside the scenario. What only one provider has stays in its own
//! file (`anthropic.rs`, `gemini.rs`).

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::gateway::{content_of, data_events, data_events_of, openai_error, read_until};
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::anthropic::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS};
use weaver_e2e::mock_upstream::gemini::{CACHED_TOKENS, THOUGHT_SIGNATURE};
use weaver_e2e::provider_bed::{Provider, ProviderBed, UPSTREAM_KEY, chat_body};

/// One test a scenario and provider, in a module named for the provider.
macro_rules! scenarios {
    ($($module:ident: $provider:ident => [$($scenario:ident),* $(,)?];)*) => {$(
        mod $module {
            use weaver_e2e::provider_bed::Provider;
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(Provider::$provider).await
                }
            )*
        }
    )*};
}

scenarios! {
    anthropic: Anthropic => [
        chat_is_translated_both_ways, images_reach_the_upstream, streams_are_translated_event_by_event_as_they_arrive,
        a_two_turn_tool_conversation_keeps_its_calls, usage_and_cost_are_recorded_to_the_nano_dollar,
        upstream_errors_become_openai_errors_with_the_right_status,
    ];
    gemini: Gemini => [
        chat_is_translated_both_ways, images_reach_the_upstream, streams_are_translated_event_by_event_as_they_arrive,
        a_two_turn_tool_conversation_keeps_its_calls, usage_and_cost_are_recorded_to_the_nano_dollar,
        upstream_errors_become_openai_errors_with_the_right_status, embeddings_are_translated_and_metered,
    ];
    cohere: Cohere => [
        chat_is_translated_both_ways, images_reach_the_upstream, streams_are_translated_event_by_event_as_they_arrive,
        a_two_turn_tool_conversation_keeps_its_calls, usage_and_cost_are_recorded_to_the_nano_dollar,
        upstream_errors_become_openai_errors_with_the_right_status, embeddings_are_translated_and_metered,
    ];
}

async fn bed(p: Provider, behaviour: Behaviour) -> anyhow::Result<ProviderBed> {
    p.bed(behaviour, "").await
}

/// Merges the members of `extra` into the object `body`.
fn with(mut body: Value, extra: Value) -> Value {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

async fn chat_is_translated_both_ways(p: Provider) -> anyhow::Result<()> {
    let s = bed(p, Behaviour::default()).await?;
    // Per provider: the request's extra parameters, and the upstream path,
    // headers and body they become.
    let (extra, uri, headers, expected) = match p {
        Provider::Anthropic => (
            json!({"stop": ["never-said"], "user": "user-7"}),
            "/v1/messages",
            vec![
                ("x-api-key", Some(UPSTREAM_KEY.to_owned())),
                ("anthropic-version", Some("2023-06-01".to_owned())),
                ("authorization", None),
            ],
            json!({
                "model": "claude-sonnet-4-6",
                "max_tokens": 300,
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
                "stop_sequences": ["never-said"],
                "metadata": {"user_id": "user-7"},
            }),
        ),
        Provider::Gemini => (
            json!({"stop": ["never-said"], "seed": 7, "temperature": 1.5, "response_format": {"type": "json_object"}}),
            "/v1beta/models/gemini-2.5-flash:generateContent",
            vec![("x-goog-api-key", Some(UPSTREAM_KEY.to_owned())), ("authorization", None)],
            json!({
                "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
                "systemInstruction": {"parts": [{"text": "Be brief."}]},
                "generationConfig": {"maxOutputTokens": 300, "temperature": 1.5, "stopSequences": ["never-said"],
                                     "seed": 7, "responseMimeType": "application/json"},
            }),
        ),
        Provider::Cohere => (
            json!({"top_p": 0.5, "stop": "never-said", "user": "u-1", "response_format": {"type": "json_object"}}),
            "/v2/chat",
            vec![("authorization", Some(format!("Bearer {UPSTREAM_KEY}")))],
            json!({
                "model": "command-a-03-2025",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
                "max_tokens": 300, "p": 0.5, "stop_sequences": ["never-said"],
                "response_format": {"type": "json_object"},
            }),
        ),
    };
    let body = with(chat_body(p.model(), "Say hi", false), with(json!({"max_completion_tokens": 300}), extra));
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK, "{p}");
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "chat.completion", "{p}");
    assert_eq!(answer["model"], p.model(), "{p}");
    assert_eq!(
        answer["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: Say hi",
        "{p}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{p}");
    let usage = &answer["usage"];
    assert_eq!(usage["completion_tokens"], 10, "{p}");
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap_or(0) + 10, "{p}");

    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, uri, "{p}");
    for (name, value) in headers {
        let sent = seen.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(sent, value, "{p}: header {name}");
    }
    assert_eq!(seen.body, expected, "{p}");
    Ok(())
}

/// A `data:` URL and an `http(s)` URL, as the upstream's two image parts.
async fn images_reach_the_upstream(p: Provider) -> anyhow::Result<()> {
    let s = bed(p, Behaviour::default()).await?;
    let body = json!({"model": p.model(), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]}]});
    let answer: Value = s.chat(&body).await?.json().await?;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "This is LLM Weaver's mock channel. You said: What is this? (and 2 images)",
        "{p}"
    );
    let seen = &s.upstream.requests()[0].body;
    let (parts, inline, linked) = match p {
        Provider::Anthropic => (
            &seen["messages"][0]["content"],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}),
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}),
        ),
        Provider::Gemini => (
            &seen["contents"][0]["parts"],
            json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}),
            json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}),
        ),
        Provider::Cohere => (
            &seen["messages"][0]["content"],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}),
            json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}),
        ),
    };
    assert_eq!((&parts[1], &parts[2]), (&inline, &linked), "{p}");
    Ok(())
}

async fn streams_are_translated_event_by_event_as_they_arrive(p: Provider) -> anyhow::Result<()> {
    // The upstream holds the stream after the frames that carry the first
    // word (Gemini: the first two words), which the client must see then.
    let (frames, held_at) = match p {
        // message_start, ping, content_block_start, an empty text delta, the first word.
        Provider::Anthropic => (5, "\"content\":\"This \""),
        Provider::Gemini => (2, "\"content\":\"is \""),
        // message-start, content-start, an empty delta, the first word.
        Provider::Cohere => (4, "\"content\":\"This \""),
    };
    let s = bed(p, Behaviour { hold_after: Some(frames), ..Behaviour::default() }).await?;
    let mut body = chat_body(p.model(), "Say hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = s.chat(&body).await?;
    assert_eq!(response.status(), StatusCode::OK, "{p}");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, |text| text.contains(held_at)).await?;
    assert!(text.contains(r#""role":"assistant""#), "{p}: {text}");
    assert!(!text.contains("finish_reason\":\"stop"), "{p}: {text}");
    s.upstream.release();
    read_until(&mut stream, &mut text, |_| false).await?;
    let chunks = data_events_of(&text);
    assert_eq!(content_of(&chunks), "This is LLM Weaver's mock channel. You said: Say hi", "{p}");
    assert_eq!(chunks.last(), Some(&json!("[DONE]")), "{p}");
    assert_eq!(chunks[chunks.len() - 3]["choices"][0]["finish_reason"], "stop", "{p}");
    let usage = &chunks[chunks.len() - 2];
    assert_eq!((usage["choices"].clone(), usage["usage"]["completion_tokens"].clone()), (json!([]), json!(10)), "{p}");
    assert!(chunks.iter().all(|c| !c.is_object() || c["model"] == p.model()), "{p}");
    let seen = &s.upstream.requests()[0];
    match p {
        Provider::Gemini => {
            assert_eq!(seen.uri, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "{p}")
        }
        Provider::Anthropic | Provider::Cohere => assert_eq!(seen.body["stream"], true, "{p}"),
    }
    Ok(())
}

/// The tool call deltas of an OpenAI stream's chunks.
fn call_deltas(chunks: &[Value]) -> Vec<&Value> {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect()
}

/// The calls `deltas` make, in order of their index, each as a whole
/// assistant `tool_calls` member (the arguments' fragments joined).
fn assembled(deltas: &[&Value]) -> Vec<Value> {
    let mut calls: Vec<Value> = Vec::new();
    for delta in deltas {
        let index = delta["index"].as_u64().unwrap_or_default() as usize;
        while calls.len() <= index {
            calls.push(json!({"id": null, "type": "function", "function": {"name": "", "arguments": ""}}));
        }
        let call = &mut calls[index];
        if let Some(id) = delta["id"].as_str() {
            call["id"] = id.into();
        }
        if let Some(name) = delta["function"]["name"].as_str() {
            call["function"]["name"] = name.into();
        }
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default().to_owned()
            + delta["function"]["arguments"].as_str().unwrap_or_default();
        call["function"]["arguments"] = arguments.into();
    }
    calls
}

/// A call, its result sent back, the answer; streamed and not; then two
/// calls in one turn, both answered.
async fn a_two_turn_tool_conversation_keeps_its_calls(p: Provider) -> anyhow::Result<()> {
    let s = bed(p, Behaviour::default()).await?;
    // Per provider: the ids the mock's two calls get (Gemini's are generated
    // by the gateway, `call_...`), whether streamed arguments come in
    // fragments (Gemini sends a call whole), the `tool_choice` sent and where
    // the upstream finds it, and the tool plan answered as reasoning.
    let (ids, fragmented, choice, plan) = match p {
        Provider::Anthropic => (Some(["toolu_mock_0", "toolu_mock_1"]), true, None, None),
        Provider::Gemini => {
            (None, false, Some(("/toolConfig", json!({"functionCallingConfig": {"mode": "ANY"}}))), None)
        }
        Provider::Cohere => (
            Some(["get_weather_mock0", "get_weather_mock1"]),
            true,
            Some(("/tool_choice", json!("REQUIRED"))),
            Some("I will call get_weather."),
        ),
    };
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let mut seen_ids = Vec::new();
    for stream in [false, true] {
        let mut first = json!({"model": p.model(), "messages": [question], "tools": tools, "stream": stream});
        if choice.is_some() {
            first["tool_choice"] = json!("required");
        }
        let response = s.chat(&first).await?;
        let (call, finish, reasoning) = if stream {
            let chunks = data_events(response).await?;
            let deltas = call_deltas(&chunks);
            if fragmented {
                assert!(deltas.len() > 3, "{p}: the arguments arrive in fragments: {deltas:?}");
            } else {
                assert_eq!(deltas.len(), 1, "{p}: a call comes whole: {deltas:?}");
            }
            assert!(deltas.iter().all(|c| c["index"] == 0), "{p}: {deltas:?}");
            let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            let reasoning: String =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
            (assembled(&deltas).swap_remove(0), finish, reasoning)
        } else {
            let answer: Value = response.json().await?;
            let message = &answer["choices"][0]["message"];
            assert_eq!(message["tool_calls"][0]["type"], "function", "{p}");
            let finish = answer["choices"][0]["finish_reason"].as_str().map(str::to_owned);
            let reasoning = message["reasoning_content"].as_str().unwrap_or_default().to_owned();
            (message["tool_calls"][0].clone(), finish, reasoning)
        };
        let (id, arguments) = (call["id"].clone(), call["function"]["arguments"].as_str().unwrap_or_default());
        match ids {
            Some([expected, _]) => assert_eq!(id, expected, "{p}, stream: {stream}"),
            None => assert!(id.as_str().is_some_and(|id| id.starts_with("call_")), "{p}, stream: {stream}: {id}"),
        }
        assert_eq!(serde_json::from_str::<Value>(arguments)?, json!({"city": "mock \"value\""}), "{p}, {stream}");
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{p}, stream: {stream}");
        if let Some(plan) = plan {
            assert_eq!(reasoning, plan, "{p}: the tool plan is reasoning");
        }
        if let Some((pointer, sent)) = &choice {
            let seen = s.upstream.requests().last().and_then(|r| r.body.pointer(pointer).cloned());
            assert_eq!(seen.as_ref(), Some(sent), "{p}");
        }
        seen_ids.push(id.clone());

        let second = json!({"model": p.model(), "stream": stream, "tools": tools, "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"},
        ]});
        let response = s.chat(&second).await?;
        assert_eq!(response.status(), StatusCode::OK, "{p}: the call is accepted back (stream: {stream})");
        let text = if stream {
            content_of(&data_events(response).await?)
        } else {
            let answer: Value = response.json().await?;
            answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(text, "The tool said: sunny", "{p}, stream: {stream}");
        let seen = s.upstream.requests().pop().map(|r| r.body).unwrap_or_default();
        match p {
            Provider::Anthropic => {
                assert_eq!(seen["messages"][1]["content"][0]["id"], "toolu_mock_0", "{p}");
                assert_eq!(seen["messages"][2]["content"][0]["tool_use_id"], "toolu_mock_0", "{p}");
            }
            Provider::Gemini => {
                assert_eq!(seen["contents"][1]["parts"][0]["thoughtSignature"], THOUGHT_SIGNATURE, "{p}");
                assert_eq!(
                    seen["contents"][2]["parts"][0],
                    json!({"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}),
                    "{p}"
                );
            }
            Provider::Cohere => assert_eq!(
                seen["messages"][2],
                json!({"role": "tool", "tool_call_id": "get_weather_mock0", "content": "sunny"}),
                "{p}"
            ),
        }
    }
    assert_eq!(seen_ids[0], seen_ids[1], "{p}: a streamed answer names its call as the whole one does");

    // Parallel calls: two calls in one turn, indices and ids kept apart; both
    // answered in the next turn.
    let ask = json!({"role": "user", "content": "Weather in Paris and Oslo? mock:parallel"});
    let parallel = json!({"model": p.model(), "stream": true, "tools": tools, "messages": [ask]});
    let calls = assembled(&call_deltas(&data_events(s.chat(&parallel).await?).await?));
    assert_eq!(calls.len(), 2, "{p}: {calls:?}");
    assert_ne!(calls[0]["id"], calls[1]["id"], "{p}");
    if let Some(ids) = ids {
        assert_eq!([&calls[0]["id"], &calls[1]["id"]], ids.map(Value::from).each_ref(), "{p}");
    }
    let mut messages = vec![ask, json!({"role": "assistant", "tool_calls": calls})];
    for (call, said) in calls.iter().zip(["sunny", "rainy"]) {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": said}));
    }
    let answer: Value =
        s.chat(&json!({"model": p.model(), "tools": tools, "messages": messages})).await?.json().await?;
    assert_eq!(answer["choices"][0]["message"]["content"], "The tool said: sunny | rainy", "{p}: {answer}");
    Ok(())
}

/// A channel's prices in nano-dollars per token.
struct Prices {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

async fn usage_and_cost_are_recorded_to_the_nano_dollar(p: Provider) -> anyhow::Result<()> {
    let cache = [
        ("cache-whole", "Hello mock:cache", false),
        ("cache-stream", "Hello mock:cache", true),
        ("late-stream", "Hello mock:cache mock:usage-late", true),
    ];
    // Per provider: the fixture's prices (USD per million tokens: Anthropic
    // 3 / 15 / 0.30 / 3.75, Gemini 0.30 / 2.50 / 0.03, Cohere 2.50 / 10),
    // the requests (Cohere's mock has no cache), the cache reads and writes
    // and reasoning tokens reported.
    let (prices, requests, cached, written, reasoning_tokens) = match p {
        Provider::Anthropic => (
            Prices { input: 3_000, output: 15_000, cache_read: 300, cache_write: 3_750 },
            &cache[..],
            CACHE_READ_TOKENS,
            CACHE_WRITE_TOKENS,
            0,
        ),
        Provider::Gemini => {
            (Prices { input: 300, output: 2_500, cache_read: 30, cache_write: 0 }, &cache[..], CACHED_TOKENS, 0, 6)
        }
        Provider::Cohere => (
            Prices { input: 2_500, output: 10_000, cache_read: 0, cache_write: 0 },
            &[("whole", "Hello", false), ("stream", "Hello", true)][..],
            0,
            0,
            0,
        ),
    };
    // Gemini is asked to think, and its thoughts are answered as reasoning.
    let reasoning = if p == Provider::Gemini { "Let me think about that." } else { "" };
    let s = bed(p, Behaviour::default()).await?;
    let mut reported = Vec::new();
    for &(id, content, stream) in requests {
        let mut body = chat_body(p.model(), content, stream);
        if p == Provider::Gemini {
            body["reasoning_effort"] = json!("medium");
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = s.request("/v1/chat/completions").header("x-request-id", id).json(&body).send().await?;
        let (usage, thought) = if stream {
            let chunks = data_events(response).await?;
            let thought: String =
                chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
            (chunks.iter().rev().find(|c| c["usage"].is_object()).map(|c| c["usage"].clone()), thought)
        } else {
            let answer = response.json::<Value>().await?;
            let thought = answer["choices"][0]["message"]["reasoning_content"].as_str().unwrap_or_default().to_owned();
            (Some(answer["usage"].clone()), thought)
        };
        assert_eq!(thought, reasoning, "{p}: {id}");
        reported.push((id, usage.unwrap_or_default()));
    }
    if p == Provider::Gemini {
        let seen = s.upstream.requests()[0].body["generationConfig"]["thinkingConfig"].clone();
        assert_eq!(seen, json!({"thinkingBudget": 4096, "includeThoughts": true}));
    }
    let records = s.records().await?;
    for (id, usage) in reported {
        let r = records
            .iter()
            .find(|r| weaver_e2e::records::sent_id(r) == id)
            .ok_or_else(|| anyhow::anyhow!("{p}: no record {id}"))?;
        assert!(!r.estimated, "{p}: {id}");
        assert_eq!(r.channel.as_deref(), Some(p.channel()), "{p}: {id}");
        assert_eq!((r.model.as_str(), r.upstream_model.as_str()), (p.model(), p.upstream_model()), "{p}: {id}");
        assert_eq!(r.input_tokens, usage["prompt_tokens"].as_u64().unwrap_or_default(), "{p}: {id}");
        assert_eq!(r.cached_input_tokens, cached, "{p}: {id}");
        if cached > 0 {
            assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], cached, "{p}: {id}");
        }
        assert_eq!(r.cache_write_tokens, written, "{p}: {id}");
        assert_eq!(r.output_tokens, usage["completion_tokens"].as_u64().unwrap_or_default(), "{p}: {id}");
        // Thoughts are output, and reasoning.
        assert_eq!(r.reasoning_tokens, reasoning_tokens, "{p}: {id}");
        if reasoning_tokens > 0 {
            assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], reasoning_tokens, "{p}: {id}");
        }
        if p == Provider::Cohere {
            // Billed units, not the template-inflated raw counts.
            assert!(r.input_tokens < 100, "{p}: {id}: {}", r.input_tokens);
            assert_eq!(r.output_tokens, 9, "{p}: {id}: one token a word of the answer");
        }
        let uncached = r.input_tokens - cached - written;
        assert!(uncached > 0, "{p}: {id}");
        let cost = uncached * prices.input
            + cached * prices.cache_read
            + written * prices.cache_write
            + r.output_tokens * prices.output;
        assert_eq!(r.cost_nanos, cost, "{p}: {id}");
    }
    Ok(())
}

/// The upstream's errors as OpenAI errors: rate limits with `Retry-After`,
/// overload, a 400 that keeps the upstream's message, a 200 whose body is an
/// error, an error mid-stream (recorded and charged).
async fn upstream_errors_become_openai_errors_with_the_right_status(p: Provider) -> anyhow::Result<()> {
    let s = bed(p, Behaviour::default()).await?;
    let bed = &s;
    let chat = move |content: &str, stream: bool| {
        let body = chat_body(p.model(), content, stream);
        async move { bed.chat(&body).await }
    };

    s.set(Behaviour { error_status: Some(429), retry_after: Some(7), ..Behaviour::default() });
    let (status, retry_after, error) = openai_error(chat("x", false).await?).await?;
    assert_eq!((status, retry_after.as_deref()), (StatusCode::TOO_MANY_REQUESTS, Some("7")), "{p}");
    match p {
        Provider::Anthropic => assert_eq!(error["type"], "rate_limit_error", "{p}"),
        Provider::Gemini => assert_eq!(
            (error["type"].as_str(), error["message"].as_str()),
            (Some("RESOURCE_EXHAUSTED"), Some("injected failure")),
            "{p}"
        ),
        Provider::Cohere => assert_eq!(error["message"], "injected failure", "{p}"),
    }

    // Overload: the upstream's status, the gateway's and its error code.
    let overloaded = match p {
        Provider::Anthropic => Some((529, StatusCode::SERVICE_UNAVAILABLE, Some("upstream_overloaded"))),
        Provider::Gemini => Some((503, StatusCode::BAD_GATEWAY, None)),
        Provider::Cohere => None,
    };
    if let Some((upstream, expected, code)) = overloaded {
        s.set(Behaviour { error_status: Some(upstream), ..Behaviour::default() });
        let (status, _, error) = openai_error(chat("x", false).await?).await?;
        assert_eq!(status, expected, "{p}");
        if code.is_some() {
            assert_eq!(error["code"].as_str(), code, "{p}");
        }
    }

    // A 400 keeps the upstream's message: a tool result for no call (Gemini:
    // a temperature out of range).
    s.set(Behaviour::default());
    let mut bad = chat_body(p.model(), "x", false);
    let (named, kind) = match p {
        Provider::Anthropic => ("tool_use_id", None),
        Provider::Gemini => ("temperature", Some("INVALID_ARGUMENT")),
        Provider::Cohere => ("tool_call_id", None),
    };
    if p == Provider::Gemini {
        bad["temperature"] = json!(2.5);
    } else {
        bad["messages"] = json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "not-t", "content": "?"}]);
    }
    let (status, _, error) = openai_error(s.chat(&bad).await?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(named)),
        "{p}: the upstream's message is kept: {error}"
    );
    if kind.is_some() {
        assert_eq!(error["type"].as_str(), kind, "{p}");
    }

    // A 200 whose body is an error: for a plain request and a streamed one.
    for stream in [false, true] {
        let (status, _, error) = openai_error(chat("mock:error-200", stream).await?).await?;
        match p {
            Provider::Anthropic => assert_eq!(
                (status, error["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_overloaded")),
                "{p}, stream: {stream}"
            ),
            Provider::Gemini => assert_eq!(
                (status, error["type"].as_str()),
                (StatusCode::TOO_MANY_REQUESTS, Some("RESOURCE_EXHAUSTED")),
                "{p}, stream: {stream}"
            ),
            Provider::Cohere => {
                assert_eq!(status, StatusCode::BAD_GATEWAY, "{p}, stream: {stream}");
                assert!(error["message"].as_str().is_some_and(|m| m.contains("Trial key")), "{p}: {error}");
            }
        }
    }

    // An error event mid-stream: what came before, then an error event.
    let (code, said) = match p {
        Provider::Anthropic => ("upstream_overloaded", "Overloaded"),
        Provider::Gemini => ("upstream_overloaded", "overloaded"),
        Provider::Cohere => ("upstream_stream_error", "internal server error"),
    };
    let chunks = data_events(chat("mock:error-mid-stream", true).await?).await?;
    assert_eq!(content_of(&chunks), "This ", "{p}");
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], code, "{p}: {last}");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains(said)), "{p}: {last}");
    // The cut stream is recorded and its output so far charged (counted
    // from the text relayed: no usage event came).
    let status = if p == Provider::Cohere { 502 } else { 503 };
    let records = s.records().await?;
    assert!(
        records.iter().any(|r| r.status == status && r.output_tokens > 0 && r.attempts.iter().any(|a| a.status == 200)),
        "{p}: the cut stream is recorded and charged: {records:?}"
    );
    Ok(())
}

/// Two texts embedded in one upstream call, answered in input order.
async fn embeddings_are_translated_and_metered(p: Provider) -> anyhow::Result<()> {
    // Per provider: the model and request, the dimensions answered, the
    // upstream path, and whether the tokens are counted by the gateway
    // (Gemini reports none) or the upstream's billed units.
    let (model, extra, dimensions, uri, estimated) = match p {
        Provider::Gemini => (
            "gemini-embed",
            json!({"dimensions": 8}),
            8,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            true,
        ),
        Provider::Cohere => ("cohere-embed", json!({}), 16, "/v2/embed", false),
        Provider::Anthropic => anyhow::bail!("Anthropic has no embeddings"),
    };
    let s = bed(p, Behaviour::default()).await?;
    let body = with(json!({"model": model, "input": ["first", "second"]}), extra);
    let response = s.post("/v1/embeddings", &body).await?;
    assert_eq!(response.status(), StatusCode::OK, "{p}");
    let answer: Value = response.json().await?;
    assert_eq!(answer["object"], "list", "{p}");
    assert_eq!(answer["model"], model, "{p}");
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.iter().map(|d| d["index"].clone()).collect::<Vec<_>>(), [json!(0), json!(1)], "{p}");
    assert!(data.iter().all(|d| d["embedding"].as_array().is_some_and(|v| v.len() == dimensions)), "{p}");
    assert_ne!(data[0]["embedding"], data[1]["embedding"], "{p}");
    if !estimated {
        assert!(answer["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0), "{p}: {answer}");
    }
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, uri, "{p}");
    match p {
        Provider::Gemini => {
            assert_eq!(seen.body["requests"][1]["content"], json!({"parts": [{"text": "second"}]}), "{p}")
        }
        _ => assert_eq!(
            seen.body,
            json!({"model": "embed-v4.0", "texts": ["first", "second"], "input_type": "search_document",
                   "embedding_types": ["float"]}),
            "{p}: the input type is named"
        ),
    }
    let records = s.records().await?;
    assert!(records.iter().all(|r| r.estimated == estimated && r.input_tokens > 0), "{p}: {records:?}");
    Ok(())
}
