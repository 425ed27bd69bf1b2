//! The Anthropic Messages API and the OpenAI Responses API in front of
//! Gemini and Cohere channels: translated through the chat form both ways —
//! over real loopback HTTP against the mock upstream, which speaks both wire
//! formats from its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, cohere_channel, gemini_channel};
use weaver_e2e::gateway::named_events;
use weaver_e2e::mock_upstream::Behaviour;
use weaver_e2e::mock_upstream::gemini::{CACHED_TOKENS, THOUGHT_SIGNATURE};
use weaver_e2e::provider_bed::ProviderBed;
use weaver_store::{Outcome, UsageRecord};

const SAID: &str = "This is LLM Weaver's mock channel. You said: Say hi";

async fn setup() -> anyhow::Result<ProviderBed> {
    ProviderBed::start(Behaviour::default(), "", |root| {
        gemini_channel(&format!("{root}/v1beta")) + &cohere_channel(&format!("{root}/v2"))
    })
    .await
}

/// POSTs `body` to `path` as request `id`, with the key where the ingress
/// takes it (`x-api-key` for the Messages API).
async fn post(s: &ProviderBed, path: &str, id: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
    let request = if path.starts_with("/v1/messages") {
        s.client.post(s.gateway.url(path)).header("x-api-key", KEY).header("anthropic-version", "2023-06-01")
    } else {
        s.request(path)
    };
    Ok(request.header("x-request-id", id).json(body).send().await?)
}

/// The path and body of the last request upstream.
fn last_seen(s: &ProviderBed) -> (String, Value) {
    s.upstream.requests().pop().map(|r| (r.uri, r.body)).unwrap_or_default()
}

/// A channel behind the ingresses, as the tests tell them apart.
#[derive(Clone, Copy)]
struct Channel {
    /// The public model name.
    model: &'static str,
    /// The upstream path of a whole and of a streamed answer.
    whole: &'static str,
    stream: &'static str,
}

const GEMINI: Channel = Channel {
    model: "gemini-test",
    whole: "/v1beta/models/gemini-2.5-flash:generateContent",
    stream: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
};
const COHERE: Channel = Channel { model: "command-test", whole: "/v2/chat", stream: "/v2/chat" };

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// Plain and streamed Messages, a tool call round trip (whole and
/// streamed), and `count_tokens` (counted by the gateway), over `channel`.
async fn messages_over(channel: Channel) -> anyhow::Result<()> {
    let s = setup().await?;
    let ask = |content: &str, stream: bool| {
        json!({"model": channel.model, "max_tokens": 200, "system": "Be brief.",
               "messages": [{"role": "user", "content": content}], "stream": stream})
    };
    let response = post(&s, "/v1/messages", "plain", &ask("Say hi", false)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let message: Value = response.json().await?;
    assert_eq!((message["type"].as_str(), message["model"].as_str()), (Some("message"), Some(channel.model)));
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["content"], json!([{"type": "text", "text": SAID}]));
    assert_eq!(message["usage"]["output_tokens"], 10);
    assert_eq!(last_seen(&s).0, channel.whole);

    let events = named_events(post(&s, "/v1/messages", "stream", &ask("Say hi", true)).await?).await?;
    let names = names(&events);
    assert_eq!(&names[..3], ["message_start", "ping", "content_block_start"], "{names:?}");
    assert_eq!(&names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let text: String = events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, SAID);
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        (delta["delta"]["stop_reason"].as_str(), delta["usage"]["output_tokens"].as_u64()),
        (Some("end_turn"), Some(10))
    );
    assert_eq!(last_seen(&s).0, channel.stream);

    // A tool call round trip, whole and streamed.
    let tools = json!([{"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    for stream in [false, true] {
        let mut first = ask("Weather in Paris?", stream);
        first["tools"] = tools.clone();
        let response = post(&s, "/v1/messages", "call", &first).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let call = if stream {
            let events = named_events(response).await?;
            let start =
                events.iter().find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use");
            let start = start.map(|(_, d)| d["content_block"].clone()).unwrap_or_default();
            let arguments: String = events.iter().filter_map(|(_, d)| d["delta"]["partial_json"].as_str()).collect();
            let stop =
                events.iter().find_map(|(n, d)| (n == "message_delta").then(|| d["delta"]["stop_reason"].clone()));
            assert_eq!(stop, Some(json!("tool_use")));
            json!({"id": start["id"], "name": start["name"], "input": serde_json::from_str::<Value>(&arguments)?})
        } else {
            let message: Value = response.json().await?;
            assert_eq!(message["stop_reason"], "tool_use");
            let block = message["content"].as_array().and_then(|c| c.iter().find(|b| b["type"] == "tool_use"));
            block.cloned().unwrap_or_default()
        };
        assert_eq!(call["name"], "get_weather", "stream: {stream}");
        assert_eq!(call["input"], json!({"city": "mock \"value\""}), "stream: {stream}");
        let mut second = ask("", stream);
        second["tools"] = tools.clone();
        second["messages"] = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": call["id"], "name": "get_weather", "input": call["input"]}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}]},
        ]);
        let response = post(&s, "/v1/messages", "answer", &second).await?;
        assert_eq!(response.status(), StatusCode::OK, "the call is accepted back (stream: {stream})");
        let text = if stream {
            let events = named_events(response).await?;
            events.iter().filter_map(|(_, d)| d["delta"]["text"].as_str()).collect::<String>()
        } else {
            let message: Value = response.json().await?;
            message["content"][0]["text"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(text, "The tool said: sunny", "stream: {stream}");
        if channel.model == GEMINI.model {
            assert_eq!(last_seen(&s).1["contents"][1]["parts"][0]["thoughtSignature"], THOUGHT_SIGNATURE);
        }
    }

    let requests = s.upstream.requests().len();
    let counted: Value =
        post(&s, "/v1/messages/count_tokens", "count", &ask("Hello, world", false)).await?.json().await?;
    assert!(counted["input_tokens"].as_u64().is_some_and(|n| n > 0), "{counted}");
    assert_eq!(s.upstream.requests().len(), requests, "counted by the gateway");

    all_metered(s, &["count"]).await
}

/// Every request but those named `except` succeeded, metered from the
/// upstream's usage and priced.
async fn all_metered(s: ProviderBed, except: &[&str]) -> anyhow::Result<()> {
    let records = s.gateway.usage_records().await?;
    for r in records.iter().filter(|r| !except.contains(&weaver_e2e::records::sent_id(r))) {
        assert_eq!((r.status, r.outcome), (200, Outcome::Ok), "{}", r.request_id);
        assert!(!r.estimated && r.input_tokens > 0 && r.output_tokens > 0 && r.cost_nanos > 0, "{}", r.request_id);
    }
    Ok(())
}

#[tokio::test]
async fn messages_over_a_gemini_channel() -> anyhow::Result<()> {
    messages_over(GEMINI).await
}

#[tokio::test]
async fn messages_over_a_cohere_channel() -> anyhow::Result<()> {
    messages_over(COHERE).await
}

/// The text of a response object's message items.
fn output_text(response: &Value) -> String {
    let items = response["output"].as_array().into_iter().flatten();
    let parts = items.filter(|i| i["type"] == "message").flat_map(|i| i["content"].as_array().into_iter().flatten());
    parts.filter(|p| p["type"] == "output_text").filter_map(|p| p["text"].as_str()).collect()
}

fn deltas(events: &[(String, Value)], name: &str) -> String {
    events.iter().filter(|(n, _)| n == name).filter_map(|(_, d)| d["delta"].as_str()).collect()
}

/// Plain and streamed Responses (the request's settings echoed), and a
/// function call round trip (whole and streamed), over `channel`.
async fn responses_over(channel: Channel) -> anyhow::Result<()> {
    let s = setup().await?;
    let body = json!({"model": channel.model, "instructions": "Be brief.", "input": "Say hi",
                      "max_output_tokens": 300, "temperature": 0.5, "metadata": {"team": "a"}});
    let response = post(&s, "/v1/responses", "plain", &body).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await?;
    assert_eq!((answer["object"].as_str(), answer["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(answer["model"], channel.model);
    assert_eq!(output_text(&answer), SAID);
    assert_eq!(answer["usage"]["output_tokens"], 10);
    for (name, value) in [
        ("instructions", json!("Be brief.")),
        ("max_output_tokens", json!(300)),
        ("temperature", json!(0.5)),
        ("metadata", json!({"team": "a"})),
        ("store", json!(false)),
        ("top_p", json!(1.0)),
        ("tools", json!([])),
        ("tool_choice", json!("auto")),
        ("parallel_tool_calls", json!(true)),
    ] {
        assert_eq!(answer[name], value, "{name} is echoed");
    }
    assert_eq!(last_seen(&s).0, channel.whole);

    let body = json!({"model": channel.model, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]}],
                      "stream": true, "top_p": 0.9});
    let response = post(&s, "/v1/responses", "stream", &body).await?;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(response).await?;
    let names = names(&events);
    assert_eq!(
        &names[..4],
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    );
    assert_eq!(names.last(), Some(&"response.completed"));
    for (n, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(n as u64)));
    }
    assert_eq!(deltas(&events, "response.output_text.delta"), SAID);
    let last = &events[events.len() - 1].1["response"];
    assert_eq!(
        (last["status"].as_str(), last["model"].as_str(), last["top_p"].as_f64()),
        (Some("completed"), Some(channel.model), Some(0.9))
    );
    assert_eq!(events[0].1["response"]["top_p"], 0.9, "echoed from the first event on");
    assert_eq!(output_text(last), SAID);
    assert_eq!(last["usage"]["output_tokens"], 10);
    assert_eq!(last_seen(&s).0, channel.stream);

    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    for stream in [false, true] {
        let first = json!({"model": channel.model, "input": [question], "tools": tools, "stream": stream});
        let response = post(&s, "/v1/responses", "call", &first).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let answer = if stream {
            let events = named_events(response).await?;
            let done = events.iter().find(|(n, _)| n == "response.function_call_arguments.done");
            let done = done.map(|(_, d)| d.clone()).unwrap_or_default();
            assert_eq!(
                done["arguments"].as_str(),
                Some(deltas(&events, "response.function_call_arguments.delta").as_str())
            );
            events.last().map(|(_, d)| d["response"].clone()).unwrap_or_default()
        } else {
            response.json::<Value>().await?
        };
        let echoed = &answer["tools"];
        // Cohere plans first (a reasoning item); then the call.
        let call = answer["output"].as_array().and_then(|o| o.iter().find(|i| i["type"] == "function_call"));
        let call = call.cloned().unwrap_or_default();
        assert_eq!(echoed, &tools, "the tools are echoed (stream: {stream})");
        assert_eq!(
            (call["type"].as_str(), call["name"].as_str()),
            (Some("function_call"), Some("get_weather")),
            "stream: {stream}"
        );
        let arguments = call["arguments"].as_str().unwrap_or_default();
        assert_eq!(serde_json::from_str::<Value>(arguments)?, json!({"city": "mock \"value\""}), "stream: {stream}");

        let second = json!({"model": channel.model, "stream": stream, "tools": tools, "input": [
            question,
            {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": arguments},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
        ]});
        let response = post(&s, "/v1/responses", "answer", &second).await?;
        assert_eq!(response.status(), StatusCode::OK, "the call is accepted back (stream: {stream})");
        let text = if stream {
            deltas(&named_events(response).await?, "response.output_text.delta")
        } else {
            output_text(&response.json().await?)
        };
        assert_eq!(text, "The tool said: sunny", "stream: {stream}");
        if channel.model == GEMINI.model {
            assert_eq!(last_seen(&s).1["contents"][1]["parts"][0]["thoughtSignature"], THOUGHT_SIGNATURE);
        }
    }
    all_metered(s, &[]).await
}

#[tokio::test]
async fn responses_over_a_gemini_channel() -> anyhow::Result<()> {
    responses_over(GEMINI).await
}

#[tokio::test]
async fn responses_over_a_cohere_channel() -> anyhow::Result<()> {
    responses_over(COHERE).await
}

/// The same question asked as chat, as Messages and as Responses, whole and
/// streamed, is metered alike: tokens (cached included) and cost.
#[tokio::test]
async fn usage_over_gemini_and_cohere_is_metered_as_for_chat() -> anyhow::Result<()> {
    let s = setup().await?;
    let said = "Hello mock:cache";
    for channel in [GEMINI, COHERE] {
        for stream in [false, true] {
            let chat = json!({"model": channel.model, "messages": [{"role": "user", "content": said}], "stream": stream,
                              "max_tokens": 200});
            let messages = json!({"model": channel.model, "messages": [{"role": "user", "content": said}],
                                  "stream": stream, "max_tokens": 200});
            let responses = json!({"model": channel.model, "input": said, "stream": stream, "max_output_tokens": 200});
            for (path, body) in
                [("/v1/chat/completions", chat), ("/v1/messages", messages), ("/v1/responses", responses)]
            {
                let id = format!("{}-{stream}-{path}", channel.model);
                let response = post(&s, path, &id, &body).await?;
                assert_eq!(response.status(), StatusCode::OK, "{id}");
                response.bytes().await?;
            }
        }
    }
    let records: Vec<UsageRecord> = s.gateway.usage_records().await?;
    let metered = |id: &str| {
        let r = records.iter().find(|r| weaver_e2e::records::sent_id(r) == id);
        r.map(|r| {
            (r.input_tokens, r.output_tokens, r.cached_input_tokens, r.reasoning_tokens, r.cost_nanos, r.estimated)
        })
    };
    for channel in [GEMINI, COHERE] {
        for stream in [false, true] {
            let chat = metered(&format!("{}-{stream}-/v1/chat/completions", channel.model));
            assert!(chat.is_some_and(|c| c.0 > 0 && c.4 > 0 && !c.5), "{chat:?}");
            if channel.model == GEMINI.model {
                // The mock caches up to CACHED_TOKENS of the prompt.
                assert!(chat.is_some_and(|c| c.2 > 0 && c.2 <= CACHED_TOKENS), "{chat:?}");
            }
            for path in ["/v1/messages", "/v1/responses"] {
                assert_eq!(
                    metered(&format!("{}-{stream}-{path}", channel.model)),
                    chat,
                    "{} {path} stream: {stream}",
                    channel.model
                );
            }
        }
    }
    Ok(())
}
