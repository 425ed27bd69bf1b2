//! The mock upstream over real loopback HTTP, read with a raw HTTP/1.1 client so
//! the tests see the exact bytes, statuses, headers and body frames (one
//! chunked-encoding chunk per frame) a gateway would see.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weaver_mock_upstream::{Behaviour, ErrorFormat, JsonForStream, MockUpstream};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A response as it came off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body frames: chunks of a chunked body, or the whole body.
    frames: Vec<Vec<u8>>,
    /// A chunked body ended with its terminating chunk.
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn body(&self) -> Vec<u8> {
        self.frames.concat()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body()).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap_or(Value::Null)
    }

    /// The SSE events, each with its terminating blank line.
    fn events(&self) -> Vec<String> {
        self.text().split_inclusive("\n\n").map(str::to_owned).collect()
    }

    /// The JSON of each `data:` event but `[DONE]`.
    fn chunks(&self) -> Vec<Value> {
        self.events()
            .iter()
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| !d.starts_with("[DONE]"))
            .map(|d| serde_json::from_str(d.trim_end()).unwrap_or(Value::Null))
            .collect()
    }
}

async fn post(mock: &MockUpstream, path: &str, extra_headers: &[(&str, &str)], body: &str) -> std::io::Result<Reply> {
    let mut tcp = TcpStream::connect(mock.addr).await?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    // Until the server closes; a cut stream may end in a reset.
    let mut raw = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse(&raw).ok_or_else(|| std::io::Error::other(format!("unparsable response: {}", String::from_utf8_lossy(&raw))))
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if !chunked {
        return Some(Reply { status, headers, frames: vec![rest.to_vec()], complete: true });
    }
    let mut frames = Vec::new();
    let mut complete = false;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).ok()?.trim(), 16).ok()?;
        if size == 0 {
            complete = true;
            break;
        }
        let Some(data) = rest.get(eol + 2..eol + 2 + size) else { break };
        frames.push(data.to_vec());
        rest = rest.get(eol + 4 + size..).unwrap_or_default();
    }
    Some(Reply { status, headers, frames, complete })
}

const CHAT: &str = "/v1/chat/completions";

fn chat(extra: Value) -> String {
    let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    body.to_string()
}

async fn mock(behaviour: Behaviour) -> std::io::Result<MockUpstream> {
    MockUpstream::start(behaviour).await
}

#[tokio::test]
async fn a_chat_answer_quotes_the_prompt_with_realistic_usage() -> TestResult {
    let m = mock(Behaviour::default()).await?;
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini", "the model the request named");
    assert_eq!(v["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // 3 per request + 4 per message + ceil(11 / 4).
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap_or_default();
    assert!(r.text().contains(&format!(
        r#""usage":{{"prompt_tokens":10,"completion_tokens":{completion},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
        10 + completion
    )));
    assert!(r.text().starts_with(r#"{"id":"chatcmpl-mock"#), "OpenAI's member order: {}", r.text());

    let seen = m.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, CHAT);
    assert_eq!(seen[0].raw, chat(json!({})).as_bytes());
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(seen[0].headers.get("host").and_then(|v| v.to_str().ok()), Some("upstream"));
    Ok(())
}

#[tokio::test]
async fn answers_are_deterministic() -> TestResult {
    let m = mock(Behaviour { tokens: Some(7), ..Behaviour::default() }).await?;
    let without_created = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("created");
        }
        v
    };
    for extra in [json!({}), json!({"stream": true, "stream_options": {"include_usage": true}})] {
        let a = post(&m, CHAT, &[], &chat(extra.clone())).await?;
        let b = post(&m, CHAT, &[], &chat(extra)).await?;
        let (a, b) = if a.header("content-type") == Some("text/event-stream") {
            (a.chunks(), b.chunks())
        } else {
            (vec![a.json()], vec![b.json()])
        };
        assert_eq!(
            a.into_iter().map(without_created).collect::<Vec<_>>(),
            b.into_iter().map(without_created).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_stream_without_include_usage_has_no_usage_anywhere() -> TestResult {
    let m = mock(Behaviour { tokens: Some(3), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/event-stream")));
    assert!(r.complete);
    let events = r.events();
    assert_eq!(r.frames.len(), events.len(), "one frame per event");
    assert_eq!(events.len(), 1 + 3 + 1 + 1);
    assert_eq!(events[5], "data: [DONE]\n\n");
    assert!(!r.text().contains("usage"));
    let chunks = r.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let content: Vec<&str> = chunks[1..4].iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, [" the", " quick", " brown"]);
    assert_eq!(chunks[4]["choices"][0], json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}));
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "gpt-4o-mini"));
    Ok(())
}

#[tokio::test]
async fn a_stream_with_include_usage_ends_with_the_usage_chunk() -> TestResult {
    let m = mock(Behaviour { tokens: Some(5), ..Behaviour::default() }).await?;
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 2}));
    let r = post(&m, CHAT, &[], &body).await?;
    let events = r.events();
    assert_eq!(events.len(), 1 + 2 + 1 + 1 + 1);
    assert_eq!(events[events.len() - 1], "data: [DONE]\n\n");
    let chunks = r.chunks();
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c.get("usage"), Some(&Value::Null), "usage:null on every other chunk");
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    let usage = &chunks[4];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert_eq!(usage["usage"]["prompt_tokens"], 10);
    assert_eq!(usage["usage"]["total_tokens"], 12);
    assert!(events[4].contains(r#""choices":[],"usage":{"prompt_tokens":10,"#), "{}", events[4]);
    Ok(())
}

#[tokio::test]
async fn null_usage_details_are_sent_as_nulls() -> TestResult {
    let m = mock(Behaviour { null_usage_details: true, ..Behaviour::default() }).await?;
    let nulls = r#""prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null}"#;
    let whole = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert!(whole.text().contains(nulls), "{}", whole.text());
    let streamed =
        post(&m, CHAT, &[], &chat(json!({"stream": true, "stream_options": {"include_usage": true}}))).await?;
    let events = streamed.events();
    assert!(events[events.len() - 2].contains(nulls), "{}", events[events.len() - 2]);
    Ok(())
}

#[tokio::test]
async fn json_for_stream_answers_a_stream_with_json() -> TestResult {
    let m = mock(Behaviour { json_for_stream: Some(JsonForStream::Error), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#
    );
    // Only streams are affected.
    assert_eq!(post(&m, CHAT, &[], &chat(json!({}))).await?.json()["object"], "chat.completion");

    m.set(Behaviour { json_for_stream: Some(JsonForStream::Completion), ..Behaviour::default() });
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.json()["usage"]["prompt_tokens"], 10);
    Ok(())
}

#[tokio::test]
async fn injected_errors_are_shaped_padded_and_carry_retry_after() -> TestResult {
    let m = mock(Behaviour { error_status: Some(500), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.status, r.header("content-type")), (500, Some("application/json")));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"injected failure","type":"server_error","param":null,"code":"injected"}}"#
    );
    assert_eq!(r.header("retry-after"), None);

    m.set(Behaviour { error_status: Some(429), retry_after: Some(7), ..Behaviour::default() });
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    m.set(Behaviour { error_status: Some(429), ..Behaviour::default() });
    assert_eq!(post(&m, CHAT, &[], &chat(json!({}))).await?.header("retry-after"), None, "no knob, no header");
    m.set(Behaviour { error_status: Some(503), retry_after: Some(7), ..Behaviour::default() });
    assert_eq!(post(&m, CHAT, &[], &chat(json!({}))).await?.header("retry-after"), None, "only on 429");

    m.set(Behaviour { error_status: Some(400), error_body_bytes: Some(100 << 10), ..Behaviour::default() });
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.status, r.body().len()), (400, 100 << 10));
    assert_eq!(r.header("content-length"), Some("102400"));
    assert!(r.json()["error"]["message"].as_str().is_some_and(|s| s.starts_with("injected failure")));

    m.set(Behaviour { error_status: Some(400), error_format: ErrorFormat::VllmFlat, ..Behaviour::default() });
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!(
        r.text(),
        r#"{"object":"error","message":"injected failure","type":"BadRequestError","param":null,"code":400}"#
    );

    m.set(Behaviour {
        error_status: Some(502),
        error_format: ErrorFormat::PlainText,
        error_body_bytes: Some(1000),
        ..Behaviour::default()
    });
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.status, r.header("content-type")), (502, Some("text/plain; charset=utf-8")));
    assert_eq!(r.body().len(), 1000);
    assert!(r.text().starts_with("injected failurexxx"));
    Ok(())
}

#[tokio::test]
async fn error_format_shapes_every_error() -> TestResult {
    let m = mock(Behaviour {
        require_key: Some("sk-right".into()),
        error_format: ErrorFormat::VllmFlat,
        ..Behaviour::default()
    })
    .await?;
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!(
        (r.status, r.text()),
        (
            401,
            r#"{"object":"error","message":"Incorrect API key provided.","type":"AuthenticationError","param":null,"code":401}"#
                .to_owned()
        )
    );
    Ok(())
}

#[tokio::test]
async fn reject_stream_options_is_azure_2024_02_01() -> TestResult {
    let m = mock(Behaviour { reject_stream_options: true, tokens: Some(2), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true, "stream_options": {"include_usage": true}}))).await?;
    assert_eq!((r.status, r.header("content-type")), (400, Some("application/json")));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error","param":null,"code":null}}"#
    );
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.events().len(), 1 + 2 + 1 + 1, "no usage chunk");
    assert!(!r.text().contains("usage"));
    Ok(())
}

#[tokio::test]
async fn a_big_event_arrives_in_pieces() -> TestResult {
    let (total, piece) = (1 << 20, 16 << 10);
    let m = mock(Behaviour { big_event: Some((total, piece)), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true, "stream_options": {"include_usage": true}}))).await?;
    assert!(r.complete);
    let sizes: Vec<usize> = r.frames.iter().map(Vec::len).collect();
    // Role chunk, 64 pieces of the content event, finish, usage, [DONE].
    assert_eq!(sizes.len(), 1 + total / piece + 3);
    assert!(sizes[1..=total / piece].iter().all(|s| *s == piece), "{sizes:?}");
    let events = r.events();
    assert_eq!(events.len(), 5);
    assert_eq!(events[1].len(), total);
    let chunks = r.chunks();
    let content = chunks[1]["choices"][0]["delta"]["content"].as_str().unwrap_or_default();
    assert!(content.starts_with("the quick brown fox"));
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["usage"]["completion_tokens"], content.len().div_ceil(4));
    assert_eq!(events[4], "data: [DONE]\n\n");
    // Whole answers are not affected.
    assert_eq!(post(&m, CHAT, &[], &chat(json!({}))).await?.json()["object"], "chat.completion");
    Ok(())
}

#[tokio::test]
async fn drop_after_cuts_the_stream() -> TestResult {
    let m = mock(Behaviour { tokens: Some(5), drop_after: Some(3), ..Behaviour::default() }).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the chunked body has no end");
    assert_eq!(r.frames.len(), 3);
    assert!(!r.text().contains("[DONE]"));
    Ok(())
}

#[tokio::test]
async fn pacing_knobs_do_not_change_the_bytes() -> TestResult {
    let paced = Behaviour {
        tokens: Some(3),
        latency: Duration::from_millis(5),
        chunk_delay: Duration::from_millis(2),
        ..Behaviour::default()
    };
    let m = mock(paced).await?;
    let r = post(&m, CHAT, &[], &chat(json!({"stream": true}))).await?;
    assert_eq!((r.status, r.events().len(), r.frames.len()), (200, 6, 6));
    Ok(())
}

#[tokio::test]
async fn require_key_takes_bearer_or_api_key() -> TestResult {
    let m = mock(Behaviour { require_key: Some("sk-right".into()), ..Behaviour::default() }).await?;
    let body = chat(json!({}));
    let r = post(&m, CHAT, &[], &body).await?;
    assert_eq!(
        (r.status, r.text()),
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
                .to_owned()
        )
    );
    assert_eq!(post(&m, CHAT, &[("Authorization", "Bearer sk-wrong")], &body).await?.status, 401);
    assert_eq!(post(&m, CHAT, &[("Authorization", "Bearer sk-right")], &body).await?.status, 200);
    assert_eq!(post(&m, CHAT, &[("api-key", "sk-right")], &body).await?.status, 200);
    assert_eq!(m.requests().len(), 4, "refused requests are recorded too");
    Ok(())
}

#[tokio::test]
async fn embeddings_answer_with_the_named_model() -> TestResult {
    let m = mock(Behaviour::default()).await?;
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}).to_string();
    let r = post(&m, "/v1/embeddings", &[], &body).await?;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("list"), Some("text-embedding-3-small")));
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
    assert_eq!(r.text(), post(&m, "/v1/embeddings", &[], &body).await?.text(), "deterministic");
    let b64 = json!({"model": "e", "input": "x", "dimensions": 4, "encoding_format": "base64"}).to_string();
    assert!(post(&m, "/v1/embeddings", &[], &b64).await?.json()["data"][0]["embedding"].is_string());
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_bad_bodies_are_openai_errors() -> TestResult {
    let m = mock(Behaviour::default()).await?;
    let r = post(&m, "/v1/nothing", &[], "{}").await?;
    assert_eq!(
        (r.status, r.text()),
        (
            404,
            r#"{"error":{"message":"Invalid URL (POST /v1/nothing)","type":"invalid_request_error","param":null,"code":null}}"#
                .to_owned()
        )
    );
    let r = post(&m, CHAT, &[], "not json").await?;
    assert_eq!((r.status, r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let r = post(&m, CHAT, &[], r#"{"model":"m"}"#).await?;
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("messages")));
    // Azure's deployment paths work too.
    let azure = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
    assert_eq!(post(&m, azure, &[], &chat(json!({}))).await?.status, 200);
    assert_eq!(m.requests().last().map(|r| r.uri.clone()).as_deref(), Some(azure));
    Ok(())
}

#[tokio::test]
async fn a_repeated_prompt_prefix_is_reported_as_cached_tokens() -> TestResult {
    let m = MockUpstream::start(Behaviour { prefix_cache: true, ..Behaviour::default() }).await?;
    let ask = |question: &str| {
        json!({"model": "m", "messages": [
            {"role": "system", "content": "You answer in one word, always, whatever you are asked."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": question}
        ]})
        .to_string()
    };
    let cached = |reply: &Reply| reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let first = post(&m, "/v1/chat/completions", &[], &ask("Why?")).await?;
    assert_eq!(cached(&first), Some(0), "a cold cache");
    let second = post(&m, "/v1/chat/completions", &[], &ask("Why not?")).await?;
    // The system message (56 characters: 14 tokens) and the first user message (3), 4 each for
    // framing, 3 for the request.
    assert_eq!(cached(&second), Some(3 + (4 + 14) + (4 + 3)));
    let other = ask("Why?").replace("one word", "two words");
    assert_eq!(cached(&post(&m, "/v1/chat/completions", &[], &other).await?), Some(0), "another prefix");
    Ok(())
}

#[tokio::test]
async fn requests_count_in_flight_until_their_answer_is_sent() -> TestResult {
    let m =
        std::sync::Arc::new(mock(Behaviour { tokens: Some(3), hold_after: Some(2), ..Behaviour::default() }).await?);
    // A whole answer no longer counts once its client has read it.
    let r = post(&m, CHAT, &[], &chat(json!({}))).await?;
    assert_eq!((r.header("content-length").is_some(), m.in_flight(), m.peak_in_flight()), (true, 0, 1));

    // Two held streams count until they end.
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { post(&m, CHAT, &[], &chat(json!({"stream": true}))).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.in_flight() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the streams never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.peak_in_flight(), 2);
    m.release();
    m.release();
    for s in streams {
        assert!(s.await??.complete);
    }
    assert_eq!((m.in_flight(), m.peak_in_flight()), (0, 2), "the peak stays until reset");
    m.reset_peak_in_flight();
    assert_eq!(m.peak_in_flight(), 0);
    Ok(())
}
