//! The Messages dialect over OpenAI-wire channels, on the exact bytes.

use serde_json::{Value, json};

use super::request::{LimitMember, Target, translate};
use super::*;
use crate::api::RequestBody;
use crate::metering::Usage;
use crate::providers::EventAction;

fn chat(body: &Value, limit: LimitMember) -> Result<Value, crate::api::ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let target = Target { model: "gpt-4o-2024-08-06", limit, stream: request.stream, include_usage: true };
    let out = translate(&request, &target)?;
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

#[test]
fn a_messages_request_becomes_a_chat_request() -> Result<(), crate::api::ApiError> {
    let body = json!({
        "model": "claude",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in these places?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Two calls.", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no data"}], "is_error": true},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "context_management": {"edits": []},
        "stream": true,
    });
    let out = chat(&body, LimitMember::MaxCompletionTokens)?;
    let expected = json!({
        "model": "gpt-4o-2024-08-06",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nUse tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in these places?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
            {"role": "tool", "content": "Error: no data", "tool_call_id": "toolu_2"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_completion_tokens": 512,
        "stop": ["END"],
        "temperature": 0.5,
        "user": "u-1",
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
    });
    assert_eq!(out, expected, "{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    let plain = chat(
        &json!({"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}),
        LimitMember::MaxTokens,
    )?;
    assert_eq!(
        plain,
        json!({"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9})
    );
    Ok(())
}

#[test]
fn server_tools_and_system_roles_are_refused() {
    for body in [
        json!({"model": "c", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}],
               "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        json!({"model": "c", "max_tokens": 9}),
    ] {
        let e = chat(&body, LimitMember::MaxTokens).err();
        assert_eq!(e.map(|e| e.status.as_u16()), Some(400), "{body}");
    }
}

#[test]
fn a_chat_completion_becomes_a_message() {
    let completion = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,
        "message":{"role":"assistant","content":"Checking.","tool_calls":[
            {"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}},
            {"id":"call_2","type":"function","function":{"name":"time","arguments":""}}]},
        "finish_reason":"tool_calls"}],
        "usage":{"prompt_tokens":30,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":10}}}"#;
    let (body, usage) = response::message(completion, "claude").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(usage, Some(Usage { input: 30, cached_input: 10, cache_write: 0, output: 9, reasoning: 0 }));
    let out: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        out,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10}})
    );
    let error = br#"{"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    assert_eq!(response::message(error, "c").err().and_then(|e| e.code), Some("insufficient_quota".to_owned()));
}

fn openai_stream() -> Vec<String> {
    let c = |v: Value| format!("data: {v}\n\n");
    let delta = |d: Value, finish: Value| {
        c(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
                 "choices": [{"index": 0, "delta": d, "finish_reason": finish}], "usage": null}))
    };
    vec![
        delta(json!({"role": "assistant", "content": ""}), Value::Null),
        delta(json!({"reasoning_content": "Hmm."}), Value::Null),
        delta(json!({"content": "Checking"}), Value::Null),
        delta(json!({"content": "."}), Value::Null),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            Value::Null,
        ),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}), Value::Null),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}), Value::Null),
        delta(
            json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]}),
            Value::Null,
        ),
        delta(json!({}), json!("tool_calls")),
        c(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": [],
                 "usage": {"prompt_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10}}})),
        "data: [DONE]\n\n".to_owned(),
    ]
}

/// Each event's name and data.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
            (name, serde_json::from_str(data).unwrap_or(Value::Null))
        })
        .collect()
}

fn run(decoder: &mut stream::ToEvents, chunks: &[String]) -> String {
    let mut out = String::new();
    for chunk in chunks {
        match decoder.event(chunk.as_bytes()) {
            EventAction::Replace(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
            EventAction::Fail(e) => panic!("{e}"),
            EventAction::Pass | EventAction::Drop => {}
        }
    }
    out
}

#[test]
fn chunks_become_anthropic_events_in_order() {
    let mut decoder = stream::ToEvents::new("claude");
    let out = run(&mut decoder, &openai_stream());
    let events = events(&out);
    assert_eq!(events[0].1["message"]["id"], "msg_1", "Anthropic's id form");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "{out}"
    );
    assert!(events.iter().all(|(name, data)| data["type"] == name.as_str()), "each data names its event");
    assert_eq!(events[0].1["message"]["model"], "claude");
    assert_eq!(events[2].1["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
    assert_eq!(events[3].1["delta"], json!({"type": "thinking_delta", "thinking": "Hmm."}));
    assert_eq!(events[6].1["delta"], json!({"type": "text_delta", "text": "Checking"}));
    assert_eq!(
        events[9].1,
        json!({"type": "content_block_start", "index": 2,
               "content_block": {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}})
    );
    let arguments: String =
        events[10..12].iter().map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap_or_default()).collect();
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    assert_eq!(events[13].1["content_block"]["id"], "call_2");
    assert_eq!(events[13].1["index"], 3);
    assert_eq!(
        events[16].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 20, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10}})
    );
    assert_eq!(decoder.usage().map(|u| (u.input, u.cached_input, u.output)), Some((30, 10, 9)));
}

#[test]
fn a_stream_without_done_still_ends_and_a_cut_one_fails() {
    let chunks = openai_stream();
    let mut decoder = stream::ToEvents::new("claude");
    run(&mut decoder, &chunks[..chunks.len() - 1]);
    match decoder.end() {
        EventAction::Replace(bytes) => assert!(
            String::from_utf8_lossy(&bytes).ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        ),
        _ => panic!("a finished stream ends with message_stop"),
    }
    let mut cut = stream::ToEvents::new("claude");
    run(&mut cut, &chunks[..4]);
    assert!(matches!(cut.end(), EventAction::Fail(_)));
    let mut failing = stream::ToEvents::new("claude");
    assert!(matches!(
        failing.event(b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n"),
        EventAction::Fail(_)
    ));
}

#[test]
fn tokens_are_counted_locally_for_openai_channels() {
    let counted: Value = serde_json::from_slice(&count_tokens(
        br#"{"model":"m","messages":[{"role":"user","content":"Hello, world"}]}"#,
    ))
    .unwrap_or_default();
    let text = bpe_openai::o200k_base().count("Hello, world") as u64;
    assert_eq!(counted, json!({"input_tokens": text + 3 + 3}));
}
