//! The translations to and from Cohere's v2 wire format, on the exact bytes.

use serde_json::{Value, json};

use super::*;
use crate::api::RequestBody;
use crate::providers::EventAction;

fn translate(body: &Value) -> Result<Value, crate::api::ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let out = request::translate(&request, "command-a-03-2025", request.stream)?;
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

#[test]
fn a_whole_conversation_becomes_a_v2_chat_request() -> Result<(), crate::api::ApiError> {
    let body = json!({
        "model": "command",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9am"}]},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather now", "strict": true,
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "time"}},
        "max_tokens": 300,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "user": "u",
        "stream": true,
        "stream_options": {"include_usage": true},
        "reasoning_effort": "medium",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    });
    let out = translate(&body)?;
    let expected = json!({
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "9am"},
        ],
        "stream": true,
        "tools": [{"type": "function", "function": {"name": "time"}}],
        "tool_choice": "REQUIRED",
        "max_tokens": 300,
        "p": 0.9,
        "stop_sequences": ["END"],
        "seed": 7,
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        "thinking": {"type": "enabled", "token_budget": 4096},
    });
    assert_eq!(out, expected, "{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

#[test]
fn an_answer_becomes_a_chat_completion_with_calls_and_billed_usage() -> Result<(), ErrorFields> {
    let body = json!({
        "id": "c-1", "finish_reason": "TOOL_CALL",
        "message": {"role": "assistant", "tool_plan": "I will check.", "content": [], "tool_calls": [
            {"id": "weather_abc", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        "usage": {"billed_units": {"input_tokens": 12, "output_tokens": 7}, "tokens": {"input_tokens": 900, "output_tokens": 30}},
    });
    let (out, usage) = response::completion(body.to_string().as_bytes(), "public")?;
    let out: Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["choices"][0]["message"]["reasoning_content"], "I will check.");
    assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["id"], "weather_abc");
    assert_eq!((usage.input, usage.output), (12, 7));
    let failed = response::completion(br#"{"finish_reason":"ERROR","message":{"content":[]}}"#, "m");
    assert!(failed.is_err());
    let error = response::completion(br#"{"id":"x","message":"invalid api token"}"#, "m").err().unwrap_or_default();
    assert_eq!(error.message, "invalid api token");
    Ok(())
}

fn text(action: EventAction) -> String {
    match action {
        EventAction::Replace(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_stream_becomes_chunks_with_argument_fragments_and_usage_from_message_end() {
    let mut chunks = stream::ToChunks::new("public", true);
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let start = text(
        chunks.event(
            event(
                "message-start",
                json!({"type": "message-start", "id": "c-1", "delta": {"message": {"role": "assistant"}}}),
            )
            .as_bytes(),
        ),
    );
    assert!(start.contains(r#""role":"assistant""#), "{start}");
    let call = text(chunks.event(event("tool-call-start", json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "w_1", "type": "function", "function": {"name": "weather", "arguments": ""}}}}})).as_bytes()));
    assert!(call.contains(r#""id":"w_1""#) && call.contains(r#""index":0"#), "{call}");
    let piece = text(chunks.event(event("tool-call-delta", json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"ci"}}}}})).as_bytes()));
    assert!(piece.contains(r#""arguments":"{\"ci""#), "{piece}");
    assert_eq!(
        chunks.event(event("tool-call-end", json!({"type": "tool-call-end", "index": 0})).as_bytes()),
        EventAction::Drop
    );
    let end = text(chunks.event(event("message-end", json!({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 4}}}})).as_bytes()));
    assert!(
        end.contains(r#""finish_reason":"tool_calls""#)
            && end.contains(r#""prompt_tokens":3"#)
            && end.ends_with("data: [DONE]\n\n"),
        "{end}"
    );
    assert_eq!(chunks.usage().map(|u| (u.input, u.output)), Some((3, 4)));
    assert_eq!(chunks.end(), EventAction::Drop);

    let mut failed = stream::ToChunks::new("public", false);
    let error = failed.event(
        event("message-end", json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal"}}))
            .as_bytes(),
    );
    assert!(matches!(&error, EventAction::Fail(e) if e.status.as_u16() == 502), "{error:?}");
    assert!(matches!(failed.end(), EventAction::Fail(_)));
}

#[test]
fn a_json_answer_to_a_stream_request_becomes_its_events() {
    let body = br#"{"id":"c","finish_reason":"COMPLETE","message":{"content":[{"type":"text","text":"hi"}]},"usage":{"billed_units":{"input_tokens":1,"output_tokens":1}}}"#;
    let events = json_for_stream(body).unwrap_or_default();
    let mut chunks = stream::ToChunks::new("public", false);
    let mut framer = crate::relay::sse::SseFramer::default();
    let mut all = String::new();
    let mut parsed = framer.push(events);
    while let Some(range) = parsed.next_range() {
        all.push_str(&text(chunks.event(&parsed.data[range])));
    }
    assert!(all.contains(r#""content":"hi""#) && all.ends_with("data: [DONE]\n\n"), "{all}");
    assert!(json_for_stream(br#"{"message":"too many requests"}"#).is_err());
}

#[test]
fn embeddings_name_their_input_type_and_answer_billed_tokens() -> Result<(), crate::api::ApiError> {
    let bytes = serde_json::to_vec(&json!({"model": "e", "input": "a"})).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let out: Value = serde_json::from_slice(&request::embeddings(&request, "embed-v4.0")?).unwrap_or_default();
    assert_eq!(
        out,
        json!({"model": "embed-v4.0", "texts": ["a"], "input_type": "search_document", "embedding_types": ["float"]})
    );
    let (answer, usage) = response::embeddings(
        br#"{"id":"e","embeddings":{"float":[[0.5,1]]},"texts":["a"],"meta":{"billed_units":{"input_tokens":2}}}"#,
        "public",
    )
    .unwrap_or_default();
    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
    assert_eq!(answer["data"][0]["embedding"], json!([0.5, 1]));
    assert_eq!((answer["usage"]["prompt_tokens"].as_u64(), usage.map(|u| u.input)), (Some(2), Some(2)));
    Ok(())
}
