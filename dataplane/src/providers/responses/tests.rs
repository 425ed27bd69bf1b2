//! The Responses dialect over chat channels, on the exact bytes.

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::api::{ApiError, RequestBody};
use crate::metering::Usage;
use crate::providers::EventAction;
use crate::providers::messages::request::{LimitMember, Target};
use response::Echo;

fn chat(body: &Value) -> Result<Value, ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let request = RequestBody::parse(&bytes)?;
    let target =
        Target { model: "llama-3", limit: LimitMember::MaxTokens, stream: request.stream, include_usage: true };
    let out = request::translate(&request, &target)?;
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

#[test]
fn a_responses_request_becomes_a_chat_request() -> Result<(), ApiError> {
    let body = json!({
        "model": "public",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "no data"}]},
            {"role": "developer", "content": "Answer in French."},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "Weather now",
                   "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": false,
        "max_output_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "weather", "schema": {"type": "object"}, "strict": true}},
        "store": false,
        "include": ["reasoning.encrypted_content"],
        "stream": true,
    });
    let expected = json!({
        "model": "llama-3",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
            {"role": "tool", "content": "no data", "tool_call_id": "call_2"},
            {"role": "developer", "content": "Answer in French."},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather now",
                   "parameters": {"type": "object"}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": true}},
        "reasoning_effort": "low",
    });
    assert_eq!(chat(&body)?, expected);
    let json_mode = chat(&json!({"model": "m", "input": "Hi", "text": {"format": {"type": "json_object"}}}))?;
    assert_eq!(json_mode["response_format"], json!({"type": "json_object"}));
    assert_eq!(json_mode["messages"], json!([{"role": "user", "content": "Hi"}]));
    Ok(())
}

#[test]
fn what_needs_openais_state_or_tools_is_refused() {
    for (body, code) in [
        (json!({"model": "m", "input": "Hi", "previous_response_id": "resp_1"}), "stateful_request_unsupported"),
        (json!({"model": "m", "input": "Hi", "store": true}), "stateful_request_unsupported"),
        (json!({"model": "m", "input": "Hi", "conversation": "conv_1"}), "stateful_request_unsupported"),
        (json!({"model": "m", "input": "Hi", "background": true}), "stateful_request_unsupported"),
        (json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}), "stateful_request_unsupported"),
        (json!({"model": "m", "input": "Hi", "tools": [{"type": "file_search"}]}), "unsupported_tool"),
        (
            json!({"model": "m", "input": "Hi", "tool_choice": {"type": "web_search_preview"}}),
            "unsupported_tool_choice",
        ),
        (json!({"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]}), "unsupported_input"),
        (json!({"model": "m"}), "missing_input"),
    ] {
        match chat(&body) {
            Err(e) => assert_eq!((e.status.as_u16(), e.category), (400, code), "{body}"),
            Ok(out) => panic!("{body} must be refused, became {out}"),
        }
    }
    // Unset and false `store` are stateless.
    assert!(chat(&json!({"model": "m", "input": "Hi", "store": false})).is_ok());
    assert!(chat(&json!({"model": "m", "input": "Hi"})).is_ok());
}

#[test]
fn a_chat_completion_becomes_a_response() {
    let completion = json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "llama-3",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": "Checking.", "reasoning_content": "Think.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    });
    let body = serde_json::to_vec(&completion).unwrap_or_default();
    let (out, usage) = response::from_chat(&body, "public", &Echo::default()).unwrap_or_default();
    assert_eq!(usage, Some(Usage { input: 10, cached_input: 4, cache_write: 0, output: 5, reasoning: 2 }));
    let out: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    assert_eq!(
        out,
        json!({
            "id": "resp_abc", "object": "response", "created_at": 1700000000, "status": "completed",
            "error": null, "incomplete_details": null, "model": "public",
            "output": [
                {"type": "reasoning", "id": "rs_0_resp_abc", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "Think."}], "status": "completed"},
                {"type": "message", "id": "msg_1_resp_abc", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}]},
                {"type": "function_call", "id": "fc_call_1", "call_id": "call_1", "name": "weather",
                 "arguments": "{}", "status": "completed"},
            ],
            "previous_response_id": null, "store": false,
            "instructions": null, "max_output_tokens": null, "metadata": {}, "parallel_tool_calls": true,
            "reasoning": {"effort": null, "summary": null}, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                      "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15},
        })
    );
    let cut = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "a"}}]});
    let (out, _) =
        response::from_chat(&serde_json::to_vec(&cut).unwrap_or_default(), "m", &Echo::default()).unwrap_or_default();
    let out: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    assert_eq!(
        (out["status"].as_str(), &out["incomplete_details"]),
        (Some("incomplete"), &json!({"reason": "max_output_tokens"}))
    );
    assert!(response::from_chat(br#"{"error":{"message":"quota"}}"#, "m", &Echo::default()).is_err());
}

#[test]
fn a_translated_response_echoes_the_request_settings() {
    let request = json!({
        "model": "public", "input": "Hi", "instructions": "Be brief.", "temperature": 0.25, "top_p": 0.5,
        "max_output_tokens": 64, "parallel_tool_calls": false, "tool_choice": "required", "store": false,
        "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
        "reasoning": {"effort": "low"}, "text": {"format": {"type": "json_object"}}, "metadata": {"k": "v"},
        "stream": false, "user": "u1",
    });
    let bytes = serde_json::to_vec(&request).unwrap_or_default();
    let echo = RequestBody::parse(&bytes).map(|r| Echo::of(&r)).unwrap_or_default();
    let completion =
        br#"{"id":"chatcmpl-1","choices":[{"index":0,"finish_reason":"stop","message":{"content":"ok"}}]}"#;
    let (out, _) = response::from_chat(completion, "public", &echo).unwrap_or_default();
    let out: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    for name in [
        "instructions",
        "temperature",
        "top_p",
        "max_output_tokens",
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "reasoning",
        "text",
        "metadata",
    ] {
        assert_eq!(out[name], request[name], "{name}");
    }
    assert_eq!((out["model"].as_str(), out["store"].as_bool()), (Some("public"), Some(false)));

    // The stream's events carry them too, from the first on.
    let mut decoder = stream::ToResponses::new("public", echo);
    let events = run(&mut decoder, &[r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"ok"}}]}"#]);
    assert_eq!(events[0].1["response"]["tools"], request["tools"]);
    assert_eq!(events[0].1["response"]["instructions"], "Be brief.");
}

fn run(decoder: &mut stream::ToResponses, events: &[&str]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut actions: Vec<EventAction> = events.iter().map(|e| decoder.event(e.as_bytes())).collect();
    actions.push(decoder.end());
    for action in actions {
        if let EventAction::Replace(bytes) = action {
            out.extend_from_slice(&bytes);
        }
    }
    String::from_utf8_lossy(&out)
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
            (name, serde_json::from_str(data).unwrap_or(Value::Null))
        })
        .collect()
}

#[test]
fn chat_chunks_become_typed_events() {
    let mut decoder = stream::ToResponses::new("public", Echo::default());
    let events = run(
        &mut decoder,
        &[
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":1}\"}}]}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ],
    );
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), &data["sequence_number"]), (Some(name.as_str()), &json!(n)));
    }
    assert_eq!(events[6].1["text"], "Hi there");
    assert_eq!(
        events[9].1["item"],
        json!({"type": "function_call", "id": "fc_call_1", "call_id": "call_1", "name": "f", "arguments": "", "status": "in_progress"})
    );
    assert_eq!(events[12].1["arguments"], "{\"a\":1}");
    let last = &events[14].1["response"];
    assert_eq!((last["id"].as_str(), last["status"].as_str()), (Some("resp_1"), Some("completed")));
    assert_eq!(last["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(last["usage"]["total_tokens"], 10);
    assert_eq!(decoder.usage(), Some(Usage { input: 7, output: 3, ..Usage::default() }));
    assert!(decoder.finished);

    let mut cut = stream::ToResponses::new("public", Echo::default());
    cut.event(b"data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n");
    assert!(matches!(cut.end(), EventAction::Fail(_)), "a stream without its finish was cut");
    let mut failed = stream::ToResponses::new("public", Echo::default());
    assert!(matches!(failed.event(b"data: {\"error\":{\"message\":\"boom\"}}\n\n"), EventAction::Fail(_)));
}

#[test]
fn a_passed_through_stream_is_metered_from_its_last_event() {
    let rename = crate::providers::openai::ModelRename::new("public", "gpt-4o-2024-08-06");
    let mut decoder = stream::Passthrough::new(rename);
    let created = b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"model\":\"gpt-4o-2024-08-06\",\"usage\":null}}\n\n";
    match decoder.event(created) {
        EventAction::Replace(bytes) => assert!(String::from_utf8_lossy(&bytes).contains("\"model\":\"public\"")),
        other => panic!("the model is renamed: {other:?}"),
    }
    let delta =
        b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n";
    assert_eq!(decoder.event(delta), EventAction::Pass);
    assert!(matches!(decoder.end(), EventAction::Fail(_)), "no last event yet");
    let completed = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4o-2024-08-06\",\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":2},\"output_tokens\":4,\"output_tokens_details\":{\"reasoning_tokens\":1},\"total_tokens\":13}}}\n\n";
    assert!(matches!(decoder.event(completed), EventAction::Replace(_)));
    assert_eq!(decoder.usage(), Some(Usage { input: 9, cached_input: 2, cache_write: 0, output: 4, reasoning: 1 }));
    assert!(decoder.finished);
    assert_eq!(decoder.end(), EventAction::Drop);
    let error = b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"boom\"}\n\n";
    assert!(matches!(stream::Passthrough::new(None).event(error), EventAction::Fail(_)));
}

#[test]
fn a_whole_passthrough_answer_is_metered() {
    let body = Bytes::from_static(br#"{"id":"r","object":"response","error":null,"model":"gpt-4o","output":[],"usage":{"input_tokens":3,"output_tokens":2}}"#);
    let (_, usage) = response::passthrough_whole(body, None).unwrap_or_default();
    assert_eq!(usage, Some(Usage { input: 3, output: 2, ..Usage::default() }));
    let error = Bytes::from_static(br#"{"error":{"message":"quota","type":"insufficient_quota"}}"#);
    assert!(response::passthrough_whole(error, None).is_err());
}
