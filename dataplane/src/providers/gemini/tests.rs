//! The translations to and from Gemini's wire format, on the exact bytes.

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::api::RequestBody;
use crate::providers::EventAction;

fn translate(body: &Value) -> Result<Value, crate::api::ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let out = request::translate(&request)?;
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

#[test]
fn a_whole_conversation_becomes_a_generate_content_request() -> Result<(), crate::api::ApiError> {
    let body = json!({
        "model": "gemini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these pictures, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?x=1", "detail": "high"}},
            ]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1_ts_c2lnbmVk", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1_ts_c2lnbmVk", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "{\"hour\":9}"}]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather now",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}},
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "max_completion_tokens": 300,
        "max_tokens": 5,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "seed": 7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    });
    let out = translate(&body)?;
    let expected = json!({
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these pictures, and the weather?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?x=1"}},
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmVk"},
                {"functionCall": {"name": "time", "args": {}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
                {"functionResponse": {"name": "time", "response": {"result": {"hour": 9}}}},
                {"text": "Thanks!"},
            ]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
        "tools": [{"functionDeclarations": [
            {"name": "weather", "description": "Weather now",
             "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "time"},
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
        "generationConfig": {
            "maxOutputTokens": 300, "temperature": 1.5, "topP": 0.9, "stopSequences": ["END"], "seed": 7,
            "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"},
            "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true},
        },
    });
    assert_eq!(out, expected, "{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

#[test]
fn unknown_tool_results_roles_and_n_are_refused() {
    for body in [
        json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        json!({"model": "g", "messages": [{"role": "function", "content": "x"}]}),
        json!({"model": "g", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
    ] {
        assert_eq!(translate(&body).err().map(|e| e.status.as_u16()), Some(400), "{body}");
    }
    let plain = translate(&json!({"model": "g", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}, "reasoning_effort": "none", "tool_choice": "none"}));
    assert_eq!(
        plain.ok(),
        Some(json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}}}))
    );
}

#[test]
fn an_answer_becomes_a_chat_completion_with_calls_thoughts_and_cached_usage() -> Result<(), ErrorFields> {
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me check.", "thought": true},
            {"text": "Checking "}, {"text": "now."},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig"},
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 12, "cachedContentTokenCount": 30,
                          "thoughtsTokenCount": 5, "totalTokenCount": 57},
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1",
    });
    let (out, usage) = response::completion(body.to_string().as_bytes(), "public")?;
    let out: Value = serde_json::from_slice(&out).unwrap_or_default();
    let message = &out["choices"][0]["message"];
    assert_eq!(
        (message["content"].as_str(), message["reasoning_content"].as_str()),
        (Some("Checking now."), Some("Let me check."))
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["model"], "public");
    let calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2);
    let first = calls[0]["id"].as_str().unwrap_or_default();
    assert!(first.starts_with("call_") && first.ends_with("_ts_sig"), "{first}");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(calls[1]["function"], json!({"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}));
    assert_eq!(usage, crate::metering::Usage { input: 40, cached_input: 30, cache_write: 0, output: 17, reasoning: 5 });
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
    assert_eq!(out["usage"]["completion_tokens"], 17);

    // The same answer streamed names its calls alike.
    let mut chunks = stream::ToChunks::new("public", true);
    let EventAction::Replace(streamed) = chunks.event(format!("data: {body}\n\n").as_bytes()) else {
        panic!("the event is translated");
    };
    assert!(String::from_utf8_lossy(&streamed).contains(first), "{}", String::from_utf8_lossy(&streamed));

    // Google's error object with a 200 is an error.
    let error = response::completion(
        br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
        "m",
    );
    let error = error.err().unwrap_or_default();
    assert_eq!(
        (error.message.as_str(), error.kind.as_deref(), error.code.as_deref()),
        ("Quota exceeded", Some("RESOURCE_EXHAUSTED"), Some("429"))
    );
    Ok(())
}

fn text(action: EventAction) -> String {
    match action {
        EventAction::Replace(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_stream_becomes_chunks_with_usage_from_the_last_event() {
    let mut chunks = stream::ToChunks::new("public", true);
    let first =
        text(chunks.event(
            br#"data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}],"responseId":"r1"}"#,
        ));
    assert!(first.contains(r#""role":"assistant""#) && first.contains(r#""content":"Hel""#), "{first}");
    assert_eq!(
        chunks.event(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}]}}]}\n\n"),
        EventAction::Drop
    );
    let last = text(
        chunks.event(br#"data: {"candidates":[{"content":{"parts":[{"text":"lo"}]},"finishReason":"MAX_TOKENS"}]}"#),
    );
    assert!(last.contains(r#""content":"lo""#) && last.contains(r#""finish_reason":"length""#), "{last}");
    assert!(chunks.finished && chunks.usage().is_none());
    // Usage alone, after the finish reason.
    assert_eq!(
        chunks.event(br#"data: {"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2}}"#),
        EventAction::Drop
    );
    let end = text(chunks.end());
    assert!(end.contains(r#""completion_tokens":2"#) && end.ends_with("data: [DONE]\n\n"), "{end}");
    assert_eq!(chunks.usage().map(|u| (u.input, u.output)), Some((4, 2)));
    assert_eq!(chunks.end(), EventAction::Drop);

    // An error event fails the stream; a stream cut before its finish reason too.
    let mut cut = stream::ToChunks::new("public", false);
    let _ = cut.event(br#"data: {"candidates":[{"content":{"parts":[{"text":"a"}]}}]}"#);
    let error =
        cut.event(br#"data: {"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#);
    assert!(matches!(&error, EventAction::Fail(e) if e.status.as_u16() == 503), "{error:?}");
    assert!(matches!(cut.end(), EventAction::Fail(e) if e.status.as_u16() == 502));
}

#[test]
fn a_json_answer_to_a_stream_request_becomes_its_events() {
    let events = json_for_stream(
        br#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}]},{"candidates":[{"finishReason":"STOP"}]}]"#,
    )
    .unwrap_or_default();
    assert_eq!(events.iter().filter(|b| **b == b'\n').count(), 4);
    assert!(json_for_stream(br#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#).is_err());
    assert!(json_for_stream(b"nope").is_err());
    let _ = Bytes::new();
}

#[test]
fn embeddings_are_one_batch_and_answer_as_openai_lists() -> Result<(), crate::api::ApiError> {
    let bytes = serde_json::to_vec(&json!({"model": "e", "input": ["a", "b"], "dimensions": 8})).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let out: Value =
        serde_json::from_slice(&request::embeddings(&request, "models/gemini-embedding-001")?).unwrap_or_default();
    assert_eq!(
        out,
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 8},
        ]})
    );
    let answer =
        response::embeddings(br#"{"embeddings":[{"values":[0.5,-1]},{"values":[2]}]}"#, "public").unwrap_or_default();
    let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
    assert_eq!(answer["data"][1], json!({"object": "embedding", "index": 1, "embedding": [2]}));
    assert_eq!(answer["model"], "public");
    Ok(())
}
