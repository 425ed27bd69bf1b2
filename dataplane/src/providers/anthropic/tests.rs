//! The translations to and from Anthropic's wire format, on the exact bytes.

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::api::RequestBody;
use crate::providers::EventAction;

fn translate(body: &Value) -> Result<Value, crate::api::ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let stream = request.stream;
    let out = request::translate(&request, "claude-sonnet-4-6", stream)?;
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

#[test]
fn a_whole_conversation_becomes_a_messages_request() -> Result<(), crate::api::ApiError> {
    let body = json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
            ]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather now",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}},
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "max_tokens": 5,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "seed": 7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    });
    let out = translate(&body)?;
    let expected = json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rainy"}]},
                {"type": "text", "text": "Thanks!"},
            ]},
        ],
        "stop_sequences": ["END"],
        "temperature": 1.0,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "stream": true,
        "tools": [
            {"name": "weather", "description": "Weather now",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true},
            {"name": "time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    });
    assert_eq!(out, expected, "{}", pretty(&out));
    Ok(())
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_that_fits_the_limit() -> Result<(), crate::api::ApiError> {
    let ask = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        translate(&body)
    };
    let default = ask(json!({}))?;
    assert_eq!((default["max_tokens"].clone(), default.get("thinking")), (json!(4096), None));
    let medium = ask(json!({"reasoning_effort": "medium"}))?;
    assert_eq!(medium["thinking"], json!({"type": "enabled", "budget_tokens": 4096}));
    assert_eq!(medium["max_tokens"], json!(4096 + 4096));
    let capped = ask(json!({"reasoning_effort": "high", "max_tokens": 2000}))?;
    assert_eq!((capped["thinking"]["budget_tokens"].clone(), capped["max_tokens"].clone()), (json!(1999), json!(2000)));
    assert_eq!(ask(json!({"reasoning_effort": "high", "max_tokens": 1000}))?.get("thinking"), None, "no room");
    assert_eq!(ask(json!({"reasoning_effort": "none"}))?.get("thinking"), None);
    let verbatim = ask(json!({"thinking": {"type": "enabled", "budget_tokens": 2048}}))?;
    assert_eq!(verbatim["thinking"], json!({"type": "enabled", "budget_tokens": 2048}));
    Ok(())
}

#[test]
fn what_anthropic_cannot_take_is_a_400_with_a_reason() {
    for (body, code) in [
        (json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}), "unsupported_parameter"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "unsupported_content",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "invalid_tool_arguments",
        ),
        (json!({"model": "m"}), "missing_messages"),
        (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), "invalid_messages"),
    ] {
        match translate(&body) {
            Err(e) => assert_eq!((e.status.as_u16(), e.category), (400, code), "{body}"),
            Ok(out) => panic!("{body} translated to {out}"),
        }
    }
}

#[test]
fn a_message_becomes_a_chat_completion_with_cache_usage() {
    let message = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[
        {"type":"thinking","thinking":"Hmm.","signature":"s"},
        {"type":"text","text":"Checking."},
        {"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Paris"}},
        {"type":"tool_use","id":"toolu_2","name":"time","input":{}}],
        "stop_reason":"tool_use","stop_sequence":null,
        "usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":30}}"#;
    let (body, usage) = response::completion(message, "claude").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(usage, Usage { input: 35, cached_input: 20, cache_write: 5, output: 30, reasoning: 0 });
    let out: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "claude");
    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking.");
    assert_eq!(choice["message"]["reasoning_content"], "Hmm.");
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ])
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 35, "completion_tokens": 30, "total_tokens": 65,
               "prompt_tokens_details": {"cached_tokens": 20}, "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    let refused =
        br#"{"type":"message","content":[],"stop_reason":"refusal","usage":{"input_tokens":1,"output_tokens":1}}"#;
    let (body, _) = response::completion(refused, "c").unwrap_or_else(|e| panic!("{e:?}"));
    let out: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        (out["choices"][0]["finish_reason"].clone(), out["choices"][0]["message"]["content"].clone()),
        (json!("content_filter"), Value::Null)
    );
}

#[test]
fn an_error_with_a_200_is_an_error() {
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let fields = response::completion(body, "c").err().unwrap_or_default();
    assert_eq!((fields.kind.as_deref(), fields.message.as_str()), (Some("overloaded_error"), "Overloaded"));
    assert!(passthrough_whole(Operation::Messages, Bytes::from_static(body), None).is_err());
    assert!(json_for_stream(body).is_err());
}

/// The events of a stream the way Anthropic sends them, awkward parts included.
fn tool_stream() -> Vec<String> {
    tool_stream_with(
        json!({"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 1}),
        json!({"output_tokens": 25}),
    )
}

/// [`tool_stream`] with these usages in `message_start` and `message_delta`.
fn tool_stream_with(start_usage: Value, delta_usage: Value) -> Vec<String> {
    let e = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    vec![
        e(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-6", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": start_usage}}),
        ),
        e("ping", json!({"type": "ping"})),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
        ),
        e("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Par"}}),
        ),
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
        ),
        e("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        e(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": delta_usage}),
        ),
        e("message_stop", json!({"type": "message_stop"})),
    ]
}

/// What a decoder makes of events: the client's bytes, and a failure.
fn run(mut decode: impl FnMut(&[u8]) -> EventAction, events: &[String]) -> (String, Option<crate::api::ApiError>) {
    let mut out = String::new();
    for event in events {
        match decode(event.as_bytes()) {
            EventAction::Pass => out.push_str(event),
            EventAction::Drop => {}
            EventAction::Replace(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
            EventAction::Fail(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn chunks(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or(Value::Null))
        .collect()
}

#[test]
fn stream_events_become_chunks_as_they_come() {
    let mut decoder = stream::ToChunks::new("claude", true);
    let (out, failed) = run(|e| decoder.event(e), &tool_stream());
    assert!(failed.is_none());
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    let chunks = self::chunks(&out);
    // role, text, tool start, three fragments, finish, usage.
    assert_eq!(chunks.len(), 8, "{out}");
    assert!(
        chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude" && c["id"] == "msg_1")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Let me check."}));
    assert_eq!(
        chunks[2]["choices"][0]["delta"]["tool_calls"],
        json!([{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}])
    );
    let arguments: String = chunks[3..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(arguments, "{\"city\": \"Paris\"}");
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[6]["usage"], Value::Null, "usage is null but on the usage chunk");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(chunks[7]["usage"]["prompt_tokens"], 16);
    assert_eq!(chunks[7]["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(chunks[7]["usage"]["completion_tokens"], 25);
    assert_eq!(decoder.usage(), Some(Usage { input: 16, cached_input: 4, cache_write: 0, output: 25, reasoning: 0 }));

    let mut quiet = stream::ToChunks::new("claude", false);
    let (out, _) = run(|e| quiet.event(e), &tool_stream());
    assert!(self::chunks(&out).iter().all(|c| c.get("usage").is_none() && c["choices"] != json!([])), "{out}");
}

#[test]
fn an_error_event_or_a_cut_ends_the_stream_with_an_error() {
    let mut events = tool_stream();
    events.insert(5, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into());
    let mut decoder = stream::ToChunks::new("claude", false);
    let (_, failed) = run(|e| decoder.event(e), &events);
    let failed = failed.unwrap_or_else(|| panic!("the error event must end the stream"));
    assert_eq!((failed.status.as_u16(), failed.category), (503, "upstream_overloaded"));
    assert!(failed.message.contains("Overloaded"));

    let mut cut = stream::ToChunks::new("claude", false);
    run(|e| cut.event(e), &tool_stream()[..6]);
    assert!(matches!(cut.end(), EventAction::Fail(_)));
    assert_eq!(cut.usage(), None, "a cut stream is counted, not taken from message_start");
}

#[test]
fn passthrough_meters_usage_from_the_passing_events_and_renames_the_model() {
    let rename = ModelRename::new("claude", "claude-sonnet-4-6");
    // Usage only in message_delta, as some servers send it.
    let late = tool_stream_with(
        json!({"input_tokens": 0, "output_tokens": 0}),
        json!({"input_tokens": 12, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2, "output_tokens": 25}),
    );
    for (events, cache_write) in [(tool_stream(), 0), (late, 2)] {
        let mut decoder = Passthrough::new(rename.clone());
        let (out, failed) = run(|e| decoder.event(e), &events);
        assert!(failed.is_none());
        assert!(out.contains(r#""model":"claude""#) && !out.contains("claude-sonnet-4-6"), "{out}");
        assert_eq!(out.len(), events.concat().len() - "-sonnet-4-6".len(), "everything else passes as it came");
        assert_eq!(
            decoder.usage(),
            Some(Usage { input: 16 + cache_write, cached_input: 4, cache_write, output: 25, reasoning: 0 })
        );
    }
}

#[test]
fn a_json_message_for_a_stream_becomes_its_events() {
    let message = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}"#;
    let events = json_for_stream(message).unwrap_or_else(|e| panic!("{e:?}"));
    let mut framer = crate::relay::sse::SseFramer::default();
    let mut all = framer.push(events);
    let mut decoder = stream::ToChunks::new("m", false);
    let mut out = String::new();
    while let Some(r) = all.next_range() {
        if let EventAction::Replace(b) = decoder.event(&all.data[r]) {
            out.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let chunks = chunks(&out);
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    assert_eq!(decoder.usage().map(|u| (u.input, u.output)), Some((3, 4)));
}

#[test]
fn urls_and_headers_speak_the_messages_api() {
    let channel = |base: &str| weaver_crds::snapshot::ChannelSnapshot {
        namespace: "ns".into(),
        name: "c".into(),
        provider: weaver_crds::Provider::Anthropic,
        base_url: base.into(),
        credential: Some(weaver_crds::snapshot::Credential("sk-ant".into())),
        headers: vec![("anthropic-beta".into(), "x".into())],
        models: vec![],
        timeouts: weaver_crds::snapshot::TimeoutsSnapshot::default(),
        azure_api_version: None,
        stream_usage: true,
        limits: Default::default(),
        health_check: None,
    };
    for base in ["https://api.anthropic.com", "https://api.anthropic.com/v1"] {
        assert_eq!(url(&channel(base), Operation::Chat).as_deref(), Some("https://api.anthropic.com/v1/messages"));
        assert_eq!(
            url(&channel(base), Operation::CountTokens).as_deref(),
            Some("https://api.anthropic.com/v1/messages/count_tokens")
        );
    }
    assert_eq!(url(&channel("https://a"), Operation::Embeddings), None);
    let h = headers(&channel("https://api.anthropic.com"));
    assert_eq!(h.get("x-api-key").and_then(|v| v.to_str().ok()), Some("sk-ant"));
    assert!(h.get("x-api-key").is_some_and(HeaderValue::is_sensitive));
    assert_eq!(h.get("anthropic-version").and_then(|v| v.to_str().ok()), Some(API_VERSION));
    assert_eq!(h.get("anthropic-beta").and_then(|v| v.to_str().ok()), Some("x"));
    assert!(h.get(http::header::AUTHORIZATION).is_none());
}
