//! The OpenAI Responses API in front of every channel — passed through to
//! OpenAI channels, translated for Anthropic ones — over real loopback HTTP
//! against the mock upstream, which speaks both wire formats from its own
//! code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::anthropic_channel;
use weaver_e2e::gateway::named_events;
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::anthropic::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS};
use weaver_e2e::mock_upstream::responses::{CACHED_TOKENS, REASONING_TOKENS};
use weaver_e2e::provider_bed::ProviderBed;
use weaver_store::{Outcome, UsageRecord};

async fn setup() -> anyhow::Result<ProviderBed> {
    ProviderBed::start(Behaviour::default(), "", anthropic_channel).await
}

/// POSTs `body` to `/v1/responses` as request `id`.
async fn post(s: &ProviderBed, id: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
    Ok(s.request("/v1/responses").header("x-request-id", id).json(body).send().await?)
}

fn record<'a>(records: &'a [UsageRecord], id: &str) -> anyhow::Result<&'a UsageRecord> {
    records.iter().find(|r| weaver_e2e::records::sent_id(r) == id).ok_or_else(|| anyhow::anyhow!("no record {id}"))
}

/// The text of a response object's message items.
fn output_text(response: &Value) -> String {
    let items = response["output"].as_array().into_iter().flatten();
    let parts = items.filter(|i| i["type"] == "message").flat_map(|i| i["content"].as_array().into_iter().flatten());
    parts.filter(|p| p["type"] == "output_text").filter_map(|p| p["text"].as_str()).collect()
}

/// The events' names, checked to be numbered 0, 1, 2... in order.
fn names(events: &[(String, Value)]) -> Vec<&str> {
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"].as_str(), Some(name.as_str()), "the data's type names the event");
        assert_eq!(data["sequence_number"], n, "{name} is event {n}");
    }
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn deltas(events: &[(String, Value)], name: &str) -> String {
    events.iter().filter(|(n, _)| n == name).filter_map(|(_, d)| d["delta"].as_str()).collect()
}

#[tokio::test]
async fn responses_pass_through_to_an_openai_channel_and_are_metered() -> anyhow::Result<()> {
    let s = setup().await?;
    let raw = r#"{"model":"gpt-4o-mini",  "input":"Say hi","store":false,"max_output_tokens":100}"#;
    let response = s
        .request("/v1/responses")
        .header("content-type", "application/json")
        .header("x-request-id", "native-whole")
        .body(raw)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!((answer["object"].as_str(), answer["model"].as_str()), (Some("response"), Some("gpt-4o-mini")));
    assert_eq!(output_text(&answer), "This is LLM Weaver's mock channel. You said: Say hi");
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/responses");
    assert_eq!(seen.raw, raw.replace("gpt-4o-mini", "gpt-4o-mini-2024-07-18").as_bytes(), "the body was re-encoded");

    let body = json!({"model": "gpt-4o-mini", "input": "Say hi mock:cache mock:reasoning", "stream": true});
    let response = post(&s, "native-stream", &body).await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(response).await?;
    let names = names(&events);
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    assert_eq!(events[0].1["response"]["model"], "gpt-4o-mini", "the public name");
    assert_eq!(
        deltas(&events, "response.output_text.delta"),
        "This is LLM Weaver's mock channel. You said: Say hi mock:cache mock:reasoning"
    );
    let usage = events.last().map(|(_, d)| d["response"]["usage"].clone()).unwrap_or_default();
    assert!(s.upstream.requests()[1].body.get("stream_options").is_none(), "the Responses API takes none");

    // An error event mid-stream ends the stream with the gateway's own.
    let body = json!({"model": "gpt-4o-mini", "input": "Say hi mock:error-mid-stream", "stream": true});
    let events = named_events(post(&s, "native-broken", &body).await?).await?;
    let (name, error) = events.last().cloned().unwrap_or_default();
    assert_eq!((name.as_str(), error["type"].as_str()), ("error", Some("error")));
    assert_eq!(error["code"], "upstream_stream_error");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("The model failed mid-stream.")), "{error}");
    assert_eq!(deltas(&events, "response.output_text.delta"), "This ", "what came before still went out");

    // `response.failed` reaches the client as OpenAI sent it, and is
    // recorded as the upstream failure it is, like an error mid-stream.
    let body = json!({"model": "gpt-4o-mini", "input": "Say hi mock:failed", "stream": true});
    let events = named_events(post(&s, "native-failed", &body).await?).await?;
    let (name, failed) = events.last().cloned().unwrap_or_default();
    assert_eq!((name.as_str(), failed["response"]["status"].as_str()), ("response.failed", Some("failed")));
    assert_eq!(failed["response"]["error"]["message"], "The model failed.");
    assert!(events.iter().all(|(n, _)| n != "error"), "no second terminal event");

    let records = s.gateway.usage_records().await?;
    assert_eq!(record(&records, "native-broken")?.status, 502);
    let failed = record(&records, "native-failed")?;
    assert_eq!((failed.status, failed.outcome), (502, Outcome::UpstreamError));
    assert_eq!(failed.attempts.last().and_then(|a| a.error.as_deref()), Some("upstream_stream_error"));
    let whole = record(&records, "native-whole")?;
    assert!(!whole.estimated);
    assert!(whole.input_tokens > 0 && whole.output_tokens > 0);
    let stream = record(&records, "native-stream")?;
    assert!(!stream.estimated);
    assert_eq!(stream.channel.as_deref(), Some("primary"));
    assert_eq!(stream.input_tokens, usage["input_tokens"].as_u64().unwrap_or_default());
    assert_eq!(stream.output_tokens, usage["output_tokens"].as_u64().unwrap_or_default());
    assert_eq!(stream.cached_input_tokens, CACHED_TOKENS);
    assert_eq!(stream.reasoning_tokens, REASONING_TOKENS);
    assert!(stream.cost_nanos > 0);
    Ok(())
}

#[tokio::test]
async fn responses_are_translated_for_an_anthropic_channel() -> anyhow::Result<()> {
    let s = setup().await?;
    let body = json!({"model": "claude-test", "instructions": "Be brief.", "input": "Say hi", "max_output_tokens": 300,
                      "temperature": 0.5});
    let response = post(&s, "translated-whole", &body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!((answer["object"].as_str(), answer["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(answer["model"], "claude-test");
    assert!(answer["id"].as_str().is_some_and(|id| id.starts_with("resp_")), "OpenAI's id form: {answer}");
    assert_eq!(answer["store"], false, "nothing was kept");
    assert_eq!(output_text(&answer), "This is LLM Weaver's mock channel. You said: Say hi");
    let usage = &answer["usage"];
    assert_eq!(usage["total_tokens"], usage["input_tokens"].as_u64().unwrap_or(0) + 10);
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-sonnet-4-6",
            "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
            "temperature": 0.5,
        })
    );

    let body = json!({"model": "claude-test", "stream": true, "store": false,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hi mock:cache"}]}]});
    let response = post(&s, "translated-stream", &body).await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(response).await?;
    assert_eq!(
        names(&events),
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",]
            .into_iter()
            .chain(std::iter::repeat_n("response.output_text.delta", 11))
            .chain([
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ])
            .collect::<Vec<_>>()
    );
    let id = events[0].1["response"]["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("resp_"), "OpenAI's id form: {id}");
    let text = "This is LLM Weaver's mock channel. You said: Say hi mock:cache";
    assert_eq!(deltas(&events, "response.output_text.delta"), text);
    let last = &events[events.len() - 1].1["response"];
    assert_eq!((last["status"].as_str(), last["model"].as_str()), (Some("completed"), Some("claude-test")));
    assert_eq!(output_text(last), text);
    assert_eq!(last["usage"]["input_tokens_details"]["cached_tokens"], CACHE_READ_TOKENS);

    let records = s.gateway.usage_records().await?;
    for id in ["translated-whole", "translated-stream"] {
        let r = record(&records, id)?;
        assert!(!r.estimated, "{id}");
        assert_eq!((r.channel.as_deref(), r.upstream_model.as_str()), (Some("claude"), "claude-sonnet-4-6"));
        assert!(r.output_tokens > 0 && r.cost_nanos > 0, "{id}");
    }
    let stream = record(&records, "translated-stream")?;
    assert_eq!((stream.cached_input_tokens, stream.cache_write_tokens), (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS));
    assert_eq!(stream.input_tokens, last["usage"]["input_tokens"].as_u64().unwrap_or_default());
    Ok(())
}

#[tokio::test]
async fn a_function_call_round_trip_over_an_anthropic_channel() -> anyhow::Result<()> {
    let s = setup().await?;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    for stream in [false, true] {
        let first = json!({"model": "claude-test", "input": [question], "tools": tools, "stream": stream});
        let response = post(&s, "call", &first).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let call = if stream {
            let events = named_events(response).await?;
            let names = names(&events);
            let fragments = names.iter().filter(|n| **n == "response.function_call_arguments.delta").count();
            assert!(fragments > 3, "the arguments arrive in fragments: {names:?}");
            let done = events.iter().find(|(n, _)| n == "response.function_call_arguments.done");
            let done = done.map(|(_, d)| d.clone()).unwrap_or_default();
            assert_eq!(
                done["arguments"].as_str(),
                Some(deltas(&events, "response.function_call_arguments.delta").as_str())
            );
            assert_eq!(done["name"], "get_weather");
            events.last().map(|(_, d)| d["response"]["output"][0].clone()).unwrap_or_default()
        } else {
            let answer: Value = response.json().await?;
            answer["output"][0].clone()
        };
        assert_eq!(call["type"], "function_call", "stream: {stream}");
        assert_eq!((call["call_id"].as_str(), call["name"].as_str()), (Some("toolu_mock_0"), Some("get_weather")));
        let arguments = call["arguments"].as_str().unwrap_or_default();
        assert_eq!(serde_json::from_str::<Value>(arguments)?, json!({"city": "mock \"value\""}), "stream: {stream}");

        let second = json!({"model": "claude-test", "stream": stream, "tools": tools, "input": [
            question,
            {"type": "function_call", "call_id": "toolu_mock_0", "name": "get_weather", "arguments": arguments},
            {"type": "function_call_output", "call_id": "toolu_mock_0", "output": "sunny"},
        ]});
        let response = post(&s, "answer", &second).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let text = if stream {
            deltas(&named_events(response).await?, "response.output_text.delta")
        } else {
            output_text(&response.json().await?)
        };
        assert_eq!(text, "The tool said: sunny", "stream: {stream}");
        let seen = s.upstream.requests().pop().map(|r| r.body).unwrap_or_default();
        assert_eq!(seen["messages"][1]["content"][0]["id"], "toolu_mock_0");
        assert_eq!(seen["messages"][2]["content"][0]["tool_use_id"], "toolu_mock_0");
    }
    Ok(())
}

#[tokio::test]
async fn stateful_requests_are_refused_where_the_channel_keeps_no_state() -> anyhow::Result<()> {
    let s = setup().await?;
    for (body, code) in [
        (
            json!({"model": "claude-test", "input": "Go on", "previous_response_id": "resp_123"}),
            "stateful_request_unsupported",
        ),
        (json!({"model": "claude-test", "input": "Hi", "store": true}), "stateful_request_unsupported"),
        (json!({"model": "claude-test", "input": "Hi", "tools": [{"type": "web_search"}]}), "unsupported_tool"),
    ] {
        let response = post(&s, "refused", &body).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("OpenAI")), "{error}");
    }
    assert!(s.upstream.requests().is_empty(), "nothing went upstream");

    // An OpenAI channel keeps state: the request goes there as it is (the
    // mock keeps none, and says so as OpenAI does for an unknown id).
    let body = json!({"model": "gpt-4o-mini", "input": "Go on", "previous_response_id": "resp_123"});
    let response = post(&s, "native", &body).await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let seen = s.upstream.requests();
    assert_eq!((seen.len(), seen[0].body["previous_response_id"].as_str()), (1, Some("resp_123")));
    // A request the channel cannot take is not tried on it again: each
    // refusal made one attempt, however the policy retries.
    let records = s.records().await?;
    let refusals: Vec<usize> =
        records.iter().filter(|r| weaver_e2e::records::sent_id(r) == "refused").map(|r| r.attempts.len()).collect();
    assert_eq!(refusals, [1, 1, 1]);
    Ok(())
}
