//! Property tests: the stream translators (OpenAI, Anthropic, Gemini and
//! Cohere events) never panic, whatever arrives, and
//! what they write is well-formed; a stream's translation does not depend on
//! how the network split it.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::responses::response::Echo;
use super::via_chat::{Chained, ToChat};
use super::{EventAction, StreamDecoder, anthropic, cohere, gemini, messages, openai, responses};
use crate::relay::sse::{self, SseFramer};

/// Every decoder a stream can meet.
fn decoders() -> Vec<StreamDecoder> {
    let rename = openai::ModelRename::new("public", "upstream-model");
    vec![
        StreamDecoder::OpenAi(openai::StreamDecoder::new(true, rename.clone())),
        StreamDecoder::AnthropicToChat(Box::new(anthropic::stream::ToChunks::new("public", true))),
        StreamDecoder::AnthropicToChat(Box::new(anthropic::stream::ToChunks::new("public", false))),
        StreamDecoder::Anthropic(Box::new(anthropic::Passthrough::new(rename))),
        StreamDecoder::ChatToMessages(Box::new(messages::stream::ToEvents::new("public"))),
        StreamDecoder::Responses(Box::new(responses::stream::Passthrough::new(rename_again()))),
        StreamDecoder::ChatToResponses(Box::new(responses::stream::ToResponses::new("public", Echo::default()))),
        StreamDecoder::ResponsesViaChat(Box::new(Chained::new(
            ToChat::Anthropic(anthropic::stream::ToChunks::new("public", true)),
            responses::stream::ToResponses::new("public", Echo::default()),
        ))),
        StreamDecoder::ResponsesViaChat(Box::new(Chained::new(
            ToChat::Gemini(gemini::stream::ToChunks::new("public", true)),
            responses::stream::ToResponses::new("public", Echo::default()),
        ))),
        StreamDecoder::MessagesViaChat(Box::new(Chained::new(
            ToChat::Cohere(cohere::stream::ToChunks::new("public", true)),
            messages::stream::ToEvents::new("public"),
        ))),
        StreamDecoder::GeminiToChat(Box::new(gemini::stream::ToChunks::new("public", true))),
        StreamDecoder::GeminiToChat(Box::new(gemini::stream::ToChunks::new("public", false))),
        StreamDecoder::CohereToChat(Box::new(cohere::stream::ToChunks::new("public", true))),
    ]
}

fn rename_again() -> Option<std::sync::Arc<openai::ModelRename>> {
    openai::ModelRename::new("public", "upstream-model")
}

/// Feeds `frames` through a framer and `decoder`, then ends the stream;
/// returns what the client would get.
fn feed(decoder: &mut StreamDecoder, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut framer = SseFramer::default();
    let mut out = Vec::new();
    let take = |action: EventAction, event: &[u8], out: &mut Vec<u8>| match action {
        EventAction::Pass => out.extend_from_slice(event),
        EventAction::Replace(bytes) => out.extend_from_slice(&bytes),
        EventAction::Drop | EventAction::Fail(_) => {}
    };
    for frame in frames {
        let mut events = framer.push(Bytes::copy_from_slice(frame));
        while let Some(range) = events.next_range() {
            let event = &events.data[range];
            take(decoder.event(event), event, &mut out);
        }
    }
    if let Some(rest) = framer.finish() {
        take(decoder.event(&rest), &rest, &mut out);
    }
    take(decoder.end(), &[], &mut out);
    let _ = (decoder.usage(), decoder.finished());
    out
}

/// Every event the gateway wrote carries JSON data (or OpenAI's `[DONE]`).
fn well_formed(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    text.split("\n\n").filter(|e| !e.trim().is_empty()).all(|event| {
        let fields = sse::fields(event.as_bytes());
        fields.data.as_ref() == b"[DONE]" || serde_json::from_slice::<Value>(&fields.data).is_ok()
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[ -~]{0,12}", "\\PC{0,6}", Just("\"\\\n{".to_owned())]
}

fn anthropic_event() -> impl Strategy<Value = String> {
    let index = prop_oneof![0u64..4, Just(u64::MAX)];
    let kind = prop_oneof![Just("text"), Just("tool_use"), Just("thinking"), Just("server_tool_use"), Just("x")];
    let delta = prop_oneof![
        Just("text_delta"),
        Just("input_json_delta"),
        Just("thinking_delta"),
        Just("signature_delta"),
        Just("?")
    ];
    let reason = prop_oneof![
        Just(Value::Null),
        Just(json!("end_turn")),
        Just(json!("tool_use")),
        Just(json!("refusal")),
        Just(json!(7))
    ];
    let usage = prop_oneof![
        Just(Value::Null),
        (0u64..1000, 0u64..1000)
            .prop_map(|(i, o)| json!({"input_tokens": i, "output_tokens": o, "cache_read_input_tokens": null})),
        Just(json!({"output_tokens": "many"})),
    ];
    (0u8..9, index, kind, delta, text(), reason, usage).prop_map(|(which, index, kind, delta, text, reason, usage)| {
        let (name, data) = match which {
            0 => ("message_start", json!({"type": "message_start", "message": {"id": text, "model": "upstream-model", "usage": usage}})),
            1 => ("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": kind, "id": text, "name": text, "text": text}})),
            2 => ("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": delta, "text": text, "partial_json": text, "thinking": text}})),
            3 => ("content_block_stop", json!({"type": "content_block_stop", "index": index})),
            4 => ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": reason}, "usage": usage})),
            5 => ("message_stop", json!({"type": "message_stop"})),
            6 => ("ping", json!({"type": "ping"})),
            7 => ("error", json!({"type": "error", "error": {"type": text, "message": text}})),
            _ => return format!("event: {text}\ndata: {text}\n\n"),
        };
        format!("event: {name}\ndata: {data}\n\n")
    })
}

fn openai_event() -> impl Strategy<Value = String> {
    let index = prop_oneof![0u32..3, Just(u32::MAX)];
    let finish = prop_oneof![Just(Value::Null), Just(json!("stop")), Just(json!("tool_calls")), Just(json!("length"))];
    (0u8..6, index, text(), finish).prop_map(|(which, index, text, finish)| {
        let data = match which {
            0 => json!({"id": text, "choices": [{"index": 0, "delta": {"content": text, "reasoning_content": text}, "finish_reason": finish}]}),
            1 => json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "id": text, "function": {"name": text, "arguments": text}}]}}]}),
            2 => json!({"choices": [], "usage": {"prompt_tokens": index, "completion_tokens": 3}}),
            3 => json!({"error": {"message": text}}),
            4 => return "data: [DONE]\n\n".to_owned(),
            _ => return format!("data: {text}\n\n"),
        };
        format!("data: {data}\n\n")
    })
}

fn gemini_event() -> impl Strategy<Value = String> {
    let reason = prop_oneof![
        Just(Value::Null),
        Just(json!("STOP")),
        Just(json!("MAX_TOKENS")),
        Just(json!("SAFETY")),
        Just(json!(3))
    ];
    let usage = prop_oneof![
        Just(Value::Null),
        (0u64..1000, 0u64..1000, 0u64..1000).prop_map(|(p, c, t)| json!({"promptTokenCount": p, "candidatesTokenCount": c, "thoughtsTokenCount": t, "cachedContentTokenCount": p * 2})),
        Just(json!({"promptTokenCount": -1})),
    ];
    let part = prop_oneof![
        text().prop_map(|t| json!({"text": t})),
        text().prop_map(|t| json!({"text": t, "thought": true})),
        text().prop_map(|t| json!({"functionCall": {"name": t, "args": {"a": t}}, "thoughtSignature": t})),
        text().prop_map(|t| json!({"functionCall": {"id": t, "name": t}})),
        Just(json!({"inlineData": {"mimeType": "image/png", "data": ""}})),
        Just(json!({"functionCall": {"args": []}})),
    ];
    (0u8..6, proptest::collection::vec(part, 0..3), reason, usage, text()).prop_map(|(which, parts, reason, usage, text)| {
        let data = match which {
            0 | 1 => json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": reason}], "usageMetadata": usage, "responseId": text}),
            2 => json!({"usageMetadata": usage}),
            3 => json!({"error": {"code": 503, "message": text, "status": "UNAVAILABLE"}}),
            4 => json!({"promptFeedback": {"blockReason": text}, "candidates": []}),
            _ => return format!("data: {text}\r\n\r\n"),
        };
        format!("data: {data}\r\n\r\n")
    })
}

fn cohere_event() -> impl Strategy<Value = String> {
    let index = prop_oneof![0u64..3, Just(u64::MAX)];
    let reason = prop_oneof![
        Just(Value::Null),
        Just(json!("COMPLETE")),
        Just(json!("TOOL_CALL")),
        Just(json!("ERROR")),
        Just(json!(1))
    ];
    let usage = prop_oneof![
        Just(Value::Null),
        (0u64..1000, 0u64..1000).prop_map(|(i, o)| json!({"billed_units": {"input_tokens": i, "output_tokens": o}})),
        Just(json!({"billed_units": {"input_tokens": -3.5}, "tokens": {"output_tokens": 1e300}})),
    ];
    (0u8..9, index, text(), reason, usage).prop_map(|(which, index, text, reason, usage)| {
        let (name, data) = match which {
            0 => ("message-start", json!({"type": "message-start", "id": text})),
            1 => ("content-start", json!({"type": "content-start", "index": index, "delta": {"message": {"content": {"type": "text", "text": text}}}})),
            2 => ("content-delta", json!({"type": "content-delta", "index": index, "delta": {"message": {"content": {"text": text, "thinking": text}}}})),
            3 => ("tool-plan-delta", json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": text}}})),
            4 => ("tool-call-start", json!({"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": {"id": text, "function": {"name": text, "arguments": text}}}}})),
            5 => ("tool-call-delta", json!({"type": "tool-call-delta", "index": index, "delta": {"message": {"tool_calls": {"function": {"arguments": text}}}}})),
            6 => ("message-end", json!({"type": "message-end", "delta": {"finish_reason": reason, "usage": usage, "error": null}})),
            7 => ("citation-start", json!({"type": "citation-start", "index": index})),
            _ => return format!("event: {text}\ndata: {text}\n\n"),
        };
        format!("event: {name}\ndata: {data}\n\n")
    })
}

/// A stream's bytes cut into frames at `cuts` (positions modulo its length).
fn split(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.sort_unstable();
    let mut frames = Vec::new();
    let mut start = 0;
    for cut in at.into_iter().chain([stream.len()]) {
        frames.push(stream[start..cut.max(start)].to_vec());
        start = cut.max(start);
    }
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        for mut decoder in decoders() {
            feed(&mut decoder, &frames);
        }
    }

    #[test]
    fn anthropic_event_streams_translate_to_well_formed_chunks(
        events in proptest::collection::vec(anthropic_event(), 0..24),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = events.concat().into_bytes();
        for mut decoder in decoders() {
            let whole = feed(&mut decoder, std::slice::from_ref(&stream));
            // Passthrough decoders pass on whatever the upstream sent.
            if matches!(decoder, StreamDecoder::AnthropicToChat(_) | StreamDecoder::ResponsesViaChat(_)) {
                prop_assert!(well_formed(&whole), "{}", String::from_utf8_lossy(&whole));
            }
        }
        // The split does not change the translation.
        let mut one = StreamDecoder::AnthropicToChat(Box::new(anthropic::stream::ToChunks::new("public", true)));
        let mut many = StreamDecoder::AnthropicToChat(Box::new(anthropic::stream::ToChunks::new("public", true)));
        let strip = |out: Vec<u8>| String::from_utf8_lossy(&out).replace(|c: char| c.is_ascii_digit(), "");
        prop_assert_eq!(strip(feed(&mut one, std::slice::from_ref(&stream))), strip(feed(&mut many, &split(&stream, &cuts))));
    }

    #[test]
    fn gemini_event_streams_translate_to_well_formed_chunks(
        events in proptest::collection::vec(gemini_event(), 0..24),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = events.concat().into_bytes();
        let translate = || StreamDecoder::GeminiToChat(Box::new(gemini::stream::ToChunks::new("public", true)));
        let mut whole = translate();
        let out = feed(&mut whole, std::slice::from_ref(&stream));
        prop_assert!(well_formed(&out), "{}", String::from_utf8_lossy(&out));
        // Nothing follows `[DONE]`, and usage is known once the answer finished.
        let text = String::from_utf8_lossy(&out).into_owned();
        prop_assert!(text.find("[DONE]").is_none_or(|at| text[at..].trim() == "[DONE]"), "{}", text);
        let strip = |out: Vec<u8>| String::from_utf8_lossy(&out).replace(|c: char| c.is_ascii_digit(), "");
        let mut many = translate();
        prop_assert_eq!(strip(out), strip(feed(&mut many, &split(&stream, &cuts))));
    }

    #[test]
    fn cohere_event_streams_translate_to_well_formed_chunks(
        events in proptest::collection::vec(cohere_event(), 0..24),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = events.concat().into_bytes();
        let translate = || StreamDecoder::CohereToChat(Box::new(cohere::stream::ToChunks::new("public", true)));
        let mut whole = translate();
        let out = feed(&mut whole, std::slice::from_ref(&stream));
        prop_assert!(well_formed(&out), "{}", String::from_utf8_lossy(&out));
        let strip = |out: Vec<u8>| String::from_utf8_lossy(&out).replace(|c: char| c.is_ascii_digit(), "");
        let mut many = translate();
        prop_assert_eq!(strip(out), strip(feed(&mut many, &split(&stream, &cuts))));
    }

    #[test]
    fn openai_chunk_streams_translate_to_well_formed_events(
        events in proptest::collection::vec(openai_event(), 0..24),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = events.concat().into_bytes();
        let mut whole = StreamDecoder::ChatToMessages(Box::new(messages::stream::ToEvents::new("public")));
        let out = feed(&mut whole, std::slice::from_ref(&stream));
        prop_assert!(well_formed(&out), "{}", String::from_utf8_lossy(&out));
        let text = String::from_utf8_lossy(&out).into_owned();
        for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
            let fields = sse::fields(event.as_bytes());
            let data: Value = serde_json::from_slice(&fields.data).unwrap_or(Value::Null);
            prop_assert_eq!(fields.name.map(|n| String::from_utf8_lossy(n).into_owned()), data["type"].as_str().map(str::to_owned));
        }
        let mut split_decoder = StreamDecoder::ChatToMessages(Box::new(messages::stream::ToEvents::new("public")));
        prop_assert_eq!(out, feed(&mut split_decoder, &split(&stream, &cuts)));
    }

    #[test]
    fn openai_chunk_streams_translate_to_well_formed_responses_events(
        events in proptest::collection::vec(openai_event(), 0..24),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream = events.concat().into_bytes();
        let translator = || StreamDecoder::ChatToResponses(Box::new(responses::stream::ToResponses::new("public", Echo::default())));
        let out = feed(&mut translator(), std::slice::from_ref(&stream));
        prop_assert!(well_formed(&out), "{}", String::from_utf8_lossy(&out));
        let text = String::from_utf8_lossy(&out).into_owned();
        for (n, event) in text.split("\n\n").filter(|e| !e.trim().is_empty()).enumerate() {
            let fields = sse::fields(event.as_bytes());
            let data: Value = serde_json::from_slice(&fields.data).unwrap_or(Value::Null);
            prop_assert_eq!(fields.name.map(|n| String::from_utf8_lossy(n).into_owned()), data["type"].as_str().map(str::to_owned));
            prop_assert_eq!(data["sequence_number"].as_u64(), Some(n as u64));
        }
        // The split does not change the translation (but for `created_at`, a clock reading).
        let strip = |out: Vec<u8>| String::from_utf8_lossy(&out).replace(|c: char| c.is_ascii_digit(), "");
        prop_assert_eq!(strip(out), strip(feed(&mut translator(), &split(&stream, &cuts))));
    }
}
