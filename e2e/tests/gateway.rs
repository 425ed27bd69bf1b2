//! The gateway over real loopback HTTP against the mock upstream: the path a
//! user's request takes.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, openai_namespace as manifests, secondary_openai_channel};
use weaver_e2e::gateway::{TestGateway, eventually, read_until};
use weaver_e2e::mock_upstream::{Behaviour, ErrorFormat, JsonForStream, MockUpstream};
use weaver_gateway::api::{ApiRoute, Dialect};

struct Setup {
    upstream: MockUpstream,
    gateway: TestGateway,
    client: reqwest::Client,
}

async fn setup(behaviour: Behaviour, key_spec: &str, flags: &[&str]) -> anyhow::Result<Setup> {
    let upstream = MockUpstream::start(behaviour).await?;
    let gateway = TestGateway::start(&manifests(&upstream.base_url(), key_spec), flags).await?;
    Ok(Setup { upstream, gateway, client: reqwest::Client::new() })
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": stream})
}

impl Setup {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self.client.post(self.gateway.url(path)).bearer_auth(KEY).json(body).send().await?)
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.client.get(self.gateway.admin_url("/metrics")).send().await?.text().await?)
    }
}

/// The value of one sample of the exposition, 0 when absent.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn error_of(response: reqwest::Response) -> anyhow::Result<(StatusCode, String)> {
    let status = response.status();
    let body: Value = response.json().await?;
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
    assert!(body["error"]["type"].is_string(), "error without type: {body}");
    Ok((status, code))
}

#[tokio::test]
async fn chat_is_relayed_with_model_mapping_credentials_and_metering() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &[]).await?;
    let response = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await?;
    assert_eq!(body["choices"][0]["message"]["content"], "This is LLM Weaver's mock channel. You said: Say hi");
    let completion = body["usage"]["completion_tokens"].as_f64().unwrap_or_default();

    let seen = s.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(seen[0].body["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(seen[0].body["messages"][0]["content"], "Say hi");
    let header = |name: &str| seen[0].headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("authorization").as_deref(), Some("Bearer sk-upstream-secret"));
    assert_eq!(header("openai-organization").as_deref(), Some("org-123"));

    let m = s.metrics().await?;
    let labels = r#"namespace="team-a",model="gpt-4o-mini",channel="primary""#;
    assert_eq!(sample(&m, &format!("weaver_gateway_requests_total{{{labels},code=\"200\"}}")), 1.0);
    assert_eq!(sample(&m, &format!("weaver_gateway_tokens_total{{{labels},direction=\"output\"}}")), completion);
    assert!(sample(&m, &format!("weaver_gateway_cost_usd_total{{{labels}}}")) > 0.0);
    // The OpenTelemetry GenAI conventions' series, with the configured names.
    let gen_ai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini-2024-07-18""#;
    let tokens = format!("gen_ai_client_token_usage_sum{{{gen_ai},gen_ai_token_type=\"output\"}}");
    assert_eq!(sample(&m, &tokens), completion);
    assert_eq!(sample(&m, &format!("gen_ai_server_request_duration_seconds_count{{{gen_ai}}}")), 1.0);
    assert_eq!(sample(&m, &format!("gen_ai_server_time_to_first_token_seconds_count{{{gen_ai}}}")), 1.0);
    assert!(!m.contains(KEY) && !m.contains("sk-upstream-secret"), "a secret leaked into /metrics");
    Ok(())
}

#[tokio::test]
async fn the_body_goes_upstream_byte_for_byte_when_no_mapping_applies() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &[]).await?;
    let raw = r#"{"model":"text-embedding-3-small",  "input":["a","b"], "dimensions":4, "user":"caf\u00e9"}"#;
    let response = s
        .client
        .post(s.gateway.url("/v1/embeddings"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["data"][0]["embedding"].as_array().map(Vec::len), Some(4));
    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.uri, "/v1/embeddings");
    assert_eq!(seen.raw, raw.as_bytes(), "the body was re-encoded");
    Ok(())
}

/// Reads an SSE response, returning each `data:` payload.
async fn read_events(response: reqwest::Response) -> anyhow::Result<Vec<String>> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                events.push(data.to_owned());
            }
        }
    }
    Ok(events)
}

#[tokio::test]
async fn streams_are_relayed_chunk_by_chunk_as_they_arrive() -> anyhow::Result<()> {
    // The upstream sends the role chunk and one token, then holds the stream
    // until the test releases it: those two events must reach the client
    // while the upstream waits (a relay that buffers would deliver nothing).
    let behaviour = Behaviour { tokens: Some(4), hold_after: Some(2), ..Behaviour::default() };
    let s = setup(behaviour, "", &[]).await?;
    let response = s.post("/v1/chat/completions", &chat(true)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, |text| text.matches("data: ").count() >= 2).await?;
    assert!(text.contains(r#""role":"assistant""#) && text.contains(r#""content":" the""#), "{text}");
    s.upstream.release();
    read_until(&mut stream, &mut text, |_| false).await?;
    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.trim().strip_prefix("data: ")).collect();
    // role + 4 tokens + finish + [DONE]; the usage chunk the gateway asked for
    // on the client's behalf is not passed on.
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events.last(), Some(&"[DONE]"));
    assert!(events.iter().all(|data| !data.contains(r#""choices":[]"#)));

    let seen = &s.upstream.requests()[0];
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
    let m = s.metrics().await?;
    let labels = r#"namespace="team-a",model="gpt-4o-mini",channel="primary""#;
    assert_eq!(sample(&m, &format!("weaver_gateway_tokens_total{{{labels},direction=\"output\"}}")), 4.0);
    assert_eq!(
        sample(&m, r#"weaver_gateway_time_to_first_token_seconds_count{model="gpt-4o-mini",channel="primary"}"#),
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_client_asking_for_stream_usage_gets_the_usage_chunk() -> anyhow::Result<()> {
    let s = setup(Behaviour { tokens: Some(3), ..Behaviour::default() }, "", &[]).await?;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = read_events(s.post("/v1/chat/completions", &body).await?).await?;
    let usage: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    Ok(())
}

/// `requests_total` of team-a's `gpt-4o-mini` on channel `primary` answered `code`.
fn primary_requests_with_code(metrics: &str, code: u16) -> f64 {
    sample(
        metrics,
        &format!(
            r#"weaver_gateway_requests_total{{namespace="team-a",model="gpt-4o-mini",channel="primary",code="{code}"}}"#
        ),
    )
}

#[tokio::test]
async fn a_stream_cut_by_the_upstream_ends_with_an_error_event() -> anyhow::Result<()> {
    let s = setup(Behaviour { tokens: Some(5), drop_after: Some(3), ..Behaviour::default() }, "", &[]).await?;
    let events = read_events(s.post("/v1/chat/completions", &chat(true)).await?).await?;
    let last: Value = serde_json::from_str(&events.last().cloned().unwrap_or_default())?;
    assert_eq!(last["error"]["code"], "upstream_stream_error");
    assert_eq!(events.len(), 4);
    let m = s.metrics().await?;
    assert_eq!(primary_requests_with_code(&m, 502), 1.0);
    Ok(())
}

#[tokio::test]
async fn a_stream_past_the_channels_total_timeout_ends_with_a_timeout_event() -> anyhow::Result<()> {
    // The upstream sends two events, then holds the stream past the channel's
    // `total` (5s): the client gets those two, then the timeout as an error event.
    let s = setup(Behaviour { tokens: Some(4), hold_after: Some(2), ..Behaviour::default() }, "", &[]).await?;
    let events = read_events(s.post("/v1/chat/completions", &chat(true)).await?).await?;
    assert_eq!(events.len(), 3, "{events:?}");
    let last: Value = serde_json::from_str(&events[2])?;
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
    let m = s.metrics().await?;
    assert_eq!(primary_requests_with_code(&m, 504), 1.0);
    Ok(())
}

#[tokio::test]
async fn auth_and_access_errors_are_openai_shaped() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), r#"allowedModels: ["gpt-4o*"]"#, &[]).await?;
    let url = s.gateway.url("/v1/chat/completions");
    let no_key = s.client.post(&url).json(&chat(false)).send().await?;
    assert_eq!(error_of(no_key).await?, (StatusCode::UNAUTHORIZED, "invalid_api_key".into()));
    let bad_key = s.client.post(&url).bearer_auth("lw-wrong").json(&chat(false)).send().await?;
    assert_eq!(error_of(bad_key).await?, (StatusCode::UNAUTHORIZED, "invalid_api_key".into()));
    let azure_style = s.client.post(&url).header("api-key", KEY).json(&chat(false)).send().await?;
    assert_eq!(azure_style.status(), StatusCode::OK);

    let embed = json!({"model": "text-embedding-3-small", "input": "x"});
    let forbidden = s.post("/v1/embeddings", &embed).await?;
    assert_eq!(error_of(forbidden).await?, (StatusCode::FORBIDDEN, "model_not_allowed".into()));
    let hi = json!([{"role": "user", "content": "hi"}]);
    let unknown = s.post("/v1/chat/completions", &json!({"model": "gpt-4o-nope", "messages": hi})).await?;
    assert_eq!(error_of(unknown).await?, (StatusCode::NOT_FOUND, "model_not_found".into()));
    let malformed = s.client.post(&url).bearer_auth(KEY).body("{not json").send().await?;
    assert_eq!(error_of(malformed).await?, (StatusCode::BAD_REQUEST, "invalid_json".into()));
    let no_model = s.post("/v1/chat/completions", &json!({"messages": hi})).await?;
    assert_eq!(error_of(no_model).await?, (StatusCode::BAD_REQUEST, "missing_model".into()));
    // Refused by the gateway: a malformed request never reaches (nor counts
    // against) a channel.
    for (messages, code) in
        [(None, "missing_required_parameter"), (Some(json!("hi")), "invalid_type"), (Some(json!([])), "empty_array")]
    {
        let mut body = json!({"model": "gpt-4o-mini"});
        if let Some(m) = messages {
            body["messages"] = m;
        }
        let refused = s.post("/v1/chat/completions", &body).await?;
        assert_eq!(error_of(refused).await?, (StatusCode::BAD_REQUEST, code.into()), "{body}");
    }
    let no_route = s.client.get(s.gateway.url("/v1/nothing")).bearer_auth(KEY).send().await?;
    assert_eq!(error_of(no_route).await?, (StatusCode::NOT_FOUND, "unknown_url".into()));
    assert!(s.upstream.requests().len() == 1, "only the allowed request may reach the upstream");

    let models: Value = s.client.get(s.gateway.url("/v1/models")).bearer_auth(KEY).send().await?.json().await?;
    assert_eq!(
        models["data"].as_array().map(|d| d.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("gpt-4o-mini")])
    );
    Ok(())
}

#[tokio::test]
async fn disabled_expired_and_foreign_address_keys_are_refused() -> anyhow::Result<()> {
    for (spec, code) in [
        ("disabled: true", "key_disabled"),
        ("expiresAt: \"2020-01-01T00:00:00Z\"", "key_expired"),
        ("ipAllowlist: [\"10.0.0.0/8\"]", "ip_not_allowed"),
    ] {
        let s = setup(Behaviour::default(), spec, &[]).await?;
        let response = s.post("/v1/chat/completions", &chat(false)).await?;
        assert_eq!(error_of(response).await?, (StatusCode::FORBIDDEN, code.into()), "{spec}");
        assert!(s.upstream.requests().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "ipAllowlist: [\"10.0.0.0/8\"]", &["--trusted-proxy", "127.0.0.0/8"]).await?;
    let send = |xff: &'static str| {
        s.client
            .post(s.gateway.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-forwarded-for", xff)
            .json(&chat(false))
            .send()
    };
    assert_eq!(send("10.1.2.3").await?.status(), StatusCode::OK);
    assert_eq!(send("203.0.113.5").await?.status(), StatusCode::FORBIDDEN);
    // A client cannot smuggle an allowed address in front of its own.
    assert_eq!(send("10.1.2.3, 203.0.113.5").await?.status(), StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &["--max-body-bytes", "1024"]).await?;
    let big = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    let response = s.post("/v1/chat/completions", &big).await?;
    assert_eq!(error_of(response).await?, (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large".into()));
    assert!(s.upstream.requests().is_empty());
    Ok(())
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_errors() -> anyhow::Result<()> {
    let s = setup(Behaviour { error_status: Some(500), ..Behaviour::default() }, "", &[]).await?;
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(error_of(r).await?, (StatusCode::BAD_GATEWAY, "upstream_error".into()));

    // A client error from upstream is the client's: relayed as written.
    s.upstream.set(Behaviour { error_status: Some(429), ..Behaviour::default() });
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(error_of(r).await?, (StatusCode::TOO_MANY_REQUESTS, "injected".into()));

    // The channel's credential is refused: the operator's problem, not the client's.
    s.upstream.set(Behaviour { require_key: Some("sk-other".into()), ..Behaviour::default() });
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(error_of(r).await?, (StatusCode::BAD_GATEWAY, "upstream_auth_failed".into()));

    // A slow non-streamed answer is bounded by `total` (5s), not `firstByte` (1s).
    s.upstream.set(Behaviour { latency: Duration::from_millis(1500), ..Behaviour::default() });
    assert_eq!(s.post("/v1/chat/completions", &chat(false)).await?.status(), StatusCode::OK);

    // firstByte (1s) bounds a stream, not total (5s): the message names the limit.
    s.upstream.set(Behaviour { latency: Duration::from_secs(3), ..Behaviour::default() });
    let r = s.post("/v1/chat/completions", &chat(true)).await?;
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("within 1s")), "{body}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() -> anyhow::Result<()> {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let gateway = TestGateway::start(&manifests(&format!("http://127.0.0.1:{port}/v1"), ""), &[]).await?;
    let r = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat(false))
        .send()
        .await?;
    assert_eq!(error_of(r).await?, (StatusCode::BAD_GATEWAY, "upstream_unreachable".into()));
    Ok(())
}

#[tokio::test]
async fn azure_channels_use_deployment_urls_and_the_api_key_header() -> anyhow::Result<()> {
    let upstream = MockUpstream::start(Behaviour::default()).await?;
    let yaml = manifests(&upstream.base_url(), "").replace(
        &format!("provider: openai\n  baseUrl: {}", upstream.base_url()),
        &format!("provider: azure-openai\n  baseUrl: http://{}\n  azure: {{apiVersion: 2024-10-21}}", upstream.addr),
    );
    let gateway = TestGateway::start(&yaml, &[]).await?;
    let r = reqwest::Client::new()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat(false))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.uri, "/openai/deployments/gpt-4o-mini-2024-07-18/chat/completions?api-version=2024-10-21");
    assert_eq!(seen.headers.get("api-key").and_then(|v| v.to_str().ok()), Some("sk-upstream-secret"));
    assert!(seen.headers.get("authorization").is_none());
    Ok(())
}

#[tokio::test]
async fn weights_split_traffic_between_channels() -> anyhow::Result<()> {
    let a = MockUpstream::start(Behaviour::default()).await?;
    let b = MockUpstream::start(Behaviour::default()).await?;
    let second = secondary_openai_channel(&b.base_url());
    let gateway = TestGateway::start(&(manifests(&a.base_url(), "") + &second), &[]).await?;
    let client = reqwest::Client::new();
    let n = 400;
    for _ in 0..n {
        let r = client.post(gateway.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat(false)).send().await?;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let share_b = b.requests().len() as f64 / f64::from(n);
    assert_eq!(a.requests().len() + b.requests().len(), n as usize);
    // 300 : 100 -> 0.75; five standard deviations of a binomial at n=400 is 0.11.
    assert!((share_b - 0.75).abs() < 0.11, "secondary got {share_b}");
    // The secondary has no mapping: the model goes upstream as the client sent it.
    assert_eq!(b.requests()[0].body["model"], "gpt-4o-mini");
    Ok(())
}

#[tokio::test]
async fn manifest_edits_apply_without_failing_requests_and_broken_edits_change_nothing() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), r#"allowedModels: ["gpt-4o*"]"#, &[]).await?;
    let url = s.gateway.url("/v1/chat/completions");
    // Keep traffic flowing during the edits.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (client, url, stop) = (s.client.clone(), url.clone(), stop.clone());
        async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.post(&url).bearer_auth(KEY).json(&chat(false)).send().await;
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        }
    });
    let embed = json!({"model": "text-embedding-3-small", "input": "x"});
    assert_eq!(s.post("/v1/embeddings", &embed).await?.status(), StatusCode::FORBIDDEN);

    let widened = manifests(&s.upstream.base_url(), r#"allowedModels: ["gpt-4o*", "text-*"]"#);
    let edited = Instant::now();
    s.gateway.rewrite(&widened)?;
    let mut took = None;
    while edited.elapsed() < Duration::from_secs(5) {
        if s.post("/v1/embeddings", &embed).await?.status() == StatusCode::OK {
            took = Some(edited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = took.ok_or_else(|| anyhow::anyhow!("the edit never took effect"))?;
    println!("manifest edit took effect after {took:?}");

    // Broken edits: YAML that does not parse, and a Secret reference that dangles.
    let errors_before = sample(&s.metrics().await?, "weaver_gateway_snapshot_load_errors_total");
    let load_errors =
        || async { sample(&s.metrics().await.unwrap_or_default(), "weaver_gateway_snapshot_load_errors_total") };
    s.gateway.rewrite("apiVersion: v1\nkind: [unclosed")?;
    eventually("the broken YAML is rejected", || async { load_errors().await == errors_before + 1.0 }).await?;
    s.gateway.rewrite(&widened.replace("name: upstream-creds}", "name: missing-creds}"))?;
    eventually("the dangling reference is rejected", || async { load_errors().await == errors_before + 2.0 }).await?;
    // What the API server would refuse: a second Channel `primary` (the compiler
    // alone saw no problem in it), an unknown field, a name that is not a DNS
    // subdomain; and a folder left with no objects.
    let channel = widened.split("---\n").find(|doc| doc.contains("kind: Channel")).unwrap_or_default();
    assert!(channel.contains("name: primary"), "the fixture's channel: {channel}");
    let unknown = widened.replace("secretRef: {name: client-key}", "secretRef: {name: client-key}\n  budgte: {}");
    let broken = [
        format!("{widened}---\n{channel}"),
        unknown,
        widened.replace("name: checkout", "name: Bad_Name!"),
        String::new(),
    ];
    for (i, edit) in broken.iter().enumerate() {
        s.gateway.rewrite(edit)?;
        let want = errors_before + 3.0 + i as f64;
        eventually(&format!("broken edit {i} is rejected"), || async { load_errors().await == want }).await?;
    }
    assert_eq!(s.post("/v1/embeddings", &embed).await?.status(), StatusCode::OK);
    assert_eq!(sample(&s.metrics().await?, "weaver_gateway_snapshot_version"), 2.0);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await?;
    assert!(statuses.len() > 10, "too little traffic to mean anything: {}", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200), "requests failed during the edits: {statuses:?}");
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_streams_in_flight_finish_and_refuses_new_connections() -> anyhow::Result<()> {
    let behaviour = Behaviour { tokens: Some(6), chunk_delay: Duration::from_millis(100), ..Behaviour::default() };
    let mut s = setup(behaviour, "", &["--shutdown-grace", "10s"]).await?;
    let in_flight = s.post("/v1/chat/completions", &chat(true)).await?;
    assert_eq!(in_flight.status(), StatusCode::OK);
    s.gateway.begin_shutdown();
    let events = read_events(in_flight).await?;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the stream was cut: {events:?}");
    s.gateway.wait().await?;
    let fresh = reqwest::Client::new().get(s.gateway.url("/v1/models")).send().await;
    assert!(fresh.is_err(), "a new connection was accepted after shutdown");
    Ok(())
}

#[tokio::test]
async fn shutdown_gives_up_on_streams_after_the_grace_period() -> anyhow::Result<()> {
    let behaviour = Behaviour { tokens: Some(50), chunk_delay: Duration::from_millis(100), ..Behaviour::default() };
    // The stream would take 5 s; the grace is 300 ms.
    let mut s = setup(behaviour, "", &["--shutdown-grace", "300ms"]).await?;
    let in_flight = s.post("/v1/chat/completions", &chat(true)).await?;
    let started = Instant::now();
    s.gateway.begin_shutdown();
    s.gateway.wait().await?;
    println!("shutdown took {:?}", started.elapsed());
    let events = read_events(in_flight).await;
    assert!(events.map_or(true, |e| e.last().map(String::as_str) != Some("[DONE]")));
    Ok(())
}

#[tokio::test]
async fn usage_is_metered_when_the_client_stops_reading_at_finish_reason() -> anyhow::Result<()> {
    let behaviour = Behaviour { tokens: Some(3), chunk_delay: Duration::from_millis(200), ..Behaviour::default() };
    let s = setup(behaviour, "", &[]).await?;
    let response = s.post("/v1/chat/completions", &chat(true)).await?;
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
        if seen.contains(r#""finish_reason":"stop""#) {
            break;
        }
    }
    // A common client pattern: stop at finish_reason, before the usage chunk.
    drop(stream);
    let labels = r#"namespace="team-a",model="gpt-4o-mini",channel="primary""#;
    let output = || async {
        sample(
            &s.metrics().await.unwrap_or_default(),
            &format!("weaver_gateway_tokens_total{{{labels},direction=\"output\"}}"),
        )
    };
    eventually("the usage chunk after finish_reason is metered", || async { output().await == 3.0 }).await
}

// --- the authenticated surface ---------------------------------------------------------

#[tokio::test]
async fn every_api_route_answers_401_without_a_key_and_metrics_stay_off_the_client_port() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &[]).await?;
    for route in ApiRoute::ALL {
        let request = s.client.request(route.method(), s.gateway.url(route.example_path()));
        let request = if route.method() == reqwest::Method::POST { request.json(&chat(false)) } else { request };
        let response = request.send().await?;
        match route.dialect() {
            Dialect::OpenAi | Dialect::Responses => {
                let (status, code) = error_of(response).await?;
                assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "invalid_api_key"), "{route:?}");
            }
            // Anthropic's SDKs parse their own shape, which has no code.
            Dialect::Anthropic => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{route:?}");
                let body: Value = response.json().await?;
                assert_eq!(
                    (body["type"].as_str(), body["error"]["type"].as_str()),
                    (Some("error"), Some("authentication_error"))
                );
            }
        }
    }
    assert!(s.upstream.requests().is_empty());
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(s.client.get(s.gateway.url(open)).send().await?.status(), StatusCode::NOT_FOUND, "{open}");
        assert_eq!(s.client.get(s.gateway.admin_url(open)).send().await?.status(), StatusCode::OK, "{open}");
    }
    // Refusals are counted too (no key: no namespace).
    let m = s.metrics().await?;
    let routes = ApiRoute::ALL.len() as f64;
    assert_eq!(sample(&m, r#"weaver_gateway_requests_total{namespace="",model="",channel="",code="401"}"#), routes);
    Ok(())
}

#[tokio::test]
async fn metrics_name_keys_only_when_asked() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &["--metrics-per-key"]).await?;
    s.post("/v1/chat/completions", &chat(false)).await?;
    s.client.get(s.gateway.url("/v1/models")).bearer_auth(KEY).send().await?;
    let m = s.metrics().await?;
    let labels = r#"namespace="team-a",key="checkout",model="gpt-4o-mini",channel="primary""#;
    assert_eq!(sample(&m, &format!("weaver_gateway_requests_total{{{labels},code=\"200\"}}")), 1.0);
    assert_eq!(
        sample(
            &m,
            r#"weaver_gateway_requests_total{namespace="team-a",key="checkout",model="",channel="",code="200"}"#
        ),
        1.0,
        "/v1/models is counted"
    );
    Ok(())
}

#[tokio::test]
async fn request_ids_are_the_gateways_own_and_the_clients_is_echoed() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "", &[]).await?;
    let sent = |header: &'static str, id: &'static str| {
        s.client
            .post(s.gateway.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header(header, id)
            .json(&chat(false))
            .send()
    };
    // A client's own x-request-id is not the request's id (clients reuse
    // them); it comes back as x-client-request-id, as OpenAI answers.
    let kept = sent("x-request-id", "client-id-42").await?;
    let id = kept.headers()["x-request-id"].to_str()?.to_owned();
    assert_ne!(id, "client-id-42");
    assert_eq!(kept.headers()["x-client-request-id"], "client-id-42");
    let seen = s.upstream.requests();
    assert_eq!(seen[0].headers.get("x-request-id").and_then(|v| v.to_str().ok()), Some(id.as_str()), "forwarded");
    let named = sent("x-client-request-id", "client-id-43").await?;
    assert_eq!(named.headers()["x-client-request-id"], "client-id-43");
    assert_ne!(named.headers()["x-request-id"].to_str()?, id, "unique");
    let unsafe_id = sent("x-request-id", "has spaces { and braces }").await?;
    let id = unsafe_id.headers()["x-request-id"].to_str()?.to_owned();
    assert!(!id.is_empty() && !id.contains(' '), "the gateway's id: {id}");
    assert!(!unsafe_id.headers().contains_key("x-client-request-id"), "an unsafe id is not echoed");
    Ok(())
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_only() -> anyhow::Result<()> {
    let preflight = |s: &Setup, origin: &'static str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.gateway.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-stainless-os")
            .send()
    };
    let off = setup(Behaviour::default(), "", &[]).await?;
    let r = preflight(&off, "https://app.example").await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"), "CORS is off by default");

    let on = setup(Behaviour::default(), "", &["--cors-allow-origin", "https://app.example"]).await?;
    let r = preflight(&on, "https://app.example").await?;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    assert!(r.headers()["access-control-allow-headers"].to_str()?.contains("x-stainless-os"));
    let r = preflight(&on, "https://evil.example").await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert!(on.upstream.requests().is_empty());
    Ok(())
}

// --- relay faults found in other gateways' bug reports ---------------------------------

#[tokio::test]
async fn usage_with_null_members_is_metered_and_its_chunk_not_leaked() -> anyhow::Result<()> {
    let s = setup(Behaviour { tokens: Some(3), null_usage_details: true, ..Behaviour::default() }, "", &[]).await?;
    let plain: Value = s.post("/v1/chat/completions", &chat(false)).await?.json().await?;
    assert_eq!(plain["usage"]["completion_tokens"], 3);
    let events = read_events(s.post("/v1/chat/completions", &chat(true)).await?).await?;
    assert!(events.iter().all(|data| !data.contains(r#""choices":[]"#)), "the usage chunk leaked: {events:?}");
    let m = s.metrics().await?;
    let labels = r#"namespace="team-a",model="gpt-4o-mini",channel="primary""#;
    assert_eq!(sample(&m, &format!("weaver_gateway_tokens_total{{{labels},direction=\"output\"}}")), 6.0);
    Ok(())
}

#[tokio::test]
async fn a_json_answer_to_a_stream_is_the_error_it_describes_or_a_valid_stream() -> anyhow::Result<()> {
    let s = setup(Behaviour { json_for_stream: Some(JsonForStream::Error), ..Behaviour::default() }, "", &[]).await?;
    let r = s.post("/v1/chat/completions", &chat(true)).await?;
    assert_eq!(error_of(r).await?, (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota".into()));

    s.upstream.set(Behaviour {
        tokens: Some(2),
        json_for_stream: Some(JsonForStream::Completion),
        ..Behaviour::default()
    });
    let r = s.post("/v1/chat/completions", &chat(true)).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_events(r).await?;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&events[0])?;
    assert_eq!(first["object"], "chat.completion.chunk");
    assert!(first["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{first}");
    assert_eq!(first["model"], "gpt-4o-mini", "the public name");
    Ok(())
}

#[tokio::test]
async fn a_large_upstream_4xx_keeps_its_status_with_a_shortened_message() -> anyhow::Result<()> {
    let behaviour = Behaviour { error_status: Some(400), error_body_bytes: Some(100 * 1024), ..Behaviour::default() };
    let s = setup(behaviour, "", &[]).await?;
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("injected failure") && message.len() < 4096, "{} bytes", message.len());
    Ok(())
}

#[tokio::test]
async fn stream_options_are_merged_and_dropped_for_an_upstream_that_refuses_them() -> anyhow::Result<()> {
    let s = setup(Behaviour { tokens: Some(2), ..Behaviour::default() }, "", &[]).await?;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_obfuscation": false});
    read_events(s.post("/v1/chat/completions", &body).await?).await?;
    let sent = &s.upstream.requests()[0].body;
    assert_eq!(sent["stream_options"], json!({"include_obfuscation": false, "include_usage": true}));

    let s = setup(Behaviour { tokens: Some(2), reject_stream_options: true, ..Behaviour::default() }, "", &[]).await?;
    for round in 0..2 {
        let r = s.post("/v1/chat/completions", &chat(true)).await?;
        assert_eq!(r.status(), StatusCode::OK, "round {round}");
        let events = read_events(r).await?;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "round {round}");
    }
    let seen = s.upstream.requests();
    // Refused once, retried without the member, remembered for the next stream.
    assert_eq!(seen.len(), 3);
    assert!(seen[0].body.get("stream_options").is_some());
    assert!(seen[1].body.get("stream_options").is_none() && seen[2].body.get("stream_options").is_none());
    Ok(())
}

#[tokio::test]
async fn one_huge_event_in_small_pieces_is_relayed_whole() -> anyhow::Result<()> {
    let total = 16 * 1024 * 1024;
    let s = setup(Behaviour { big_event: Some((total, 16 * 1024)), ..Behaviour::default() }, "", &[]).await?;
    let started = Instant::now();
    let r = s.post("/v1/chat/completions", &chat(true)).await?;
    let mut stream = r.bytes_stream();
    let mut text = Vec::with_capacity(total + 4096);
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk?);
    }
    // Relaying is linear in the bytes received (the quadratic relay took ~10 s here).
    println!("16 MiB event in 16 KiB pieces relayed in {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&text);
    let largest = text.split("\n\n").map(str::len).max().unwrap_or_default();
    // Whole, less its blank line, with the public model name in place of the
    // upstream one ("-2024-07-18" shorter).
    assert_eq!(largest, total - 2 - "-2024-07-18".len(), "the big event arrived whole");
    assert!(text.ends_with("data: [DONE]\n\n"));
    Ok(())
}

#[tokio::test]
async fn answers_carry_the_public_model_name() -> anyhow::Result<()> {
    let s = setup(Behaviour { tokens: Some(2), ..Behaviour::default() }, "", &[]).await?;
    let plain: Value = s.post("/v1/chat/completions", &chat(false)).await?.json().await?;
    assert_eq!(plain["model"], "gpt-4o-mini");
    let events = read_events(s.post("/v1/chat/completions", &chat(true)).await?).await?;
    for data in events.iter().filter(|d| d.starts_with('{')) {
        let chunk: Value = serde_json::from_str(data)?;
        assert_eq!(chunk["model"], "gpt-4o-mini", "{data}");
    }
    assert!(s.upstream.requests().iter().all(|r| r.body["model"] == "gpt-4o-mini-2024-07-18"));
    Ok(())
}

#[tokio::test]
async fn error_bodies_that_are_not_openai_shaped_are_wrapped() -> anyhow::Result<()> {
    let flat = Behaviour { error_status: Some(400), error_format: ErrorFormat::VllmFlat, ..Behaviour::default() };
    let s = setup(flat, "", &[]).await?;
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["message"], "injected failure", "{body}");
    assert!(body["error"]["type"].is_string());

    s.upstream.set(Behaviour { error_status: Some(503), error_format: ErrorFormat::PlainText, ..Behaviour::default() });
    let r = s.post("/v1/chat/completions", &chat(false)).await?;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: Value = r.json().await?;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("injected failure")), "{body}");
    Ok(())
}

// --- metering --------------------------------------------------------------------------

/// A request refused before any channel is tried records the model the
/// client asked for, once the body was read that far (a request without a
/// valid key is refused before its body is read).
#[tokio::test]
async fn refused_requests_record_the_model_asked_for() -> anyhow::Result<()> {
    let spec = "allowedModels: [\"gpt-4o*\"]\n  rateLimit: {requestsPerMinute: 2}";
    let s = setup(Behaviour::default(), spec, &[]).await?;
    let send = |id: &str, key: Option<&str>, path: &str, body: &Value| {
        let request = s.client.post(s.gateway.url(path)).header("x-request-id", id).json(body);
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
        .send()
    };
    let hi = json!([{"role": "user", "content": "hi"}]);
    let asked = [
        ("no-key", None, "/v1/chat/completions", chat(false), StatusCode::UNAUTHORIZED, ""),
        ("bad-key", Some("lw-wrong"), "/v1/chat/completions", chat(false), StatusCode::UNAUTHORIZED, ""),
        (
            "forbidden",
            Some(KEY),
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "x"}),
            StatusCode::FORBIDDEN,
            "text-embedding-3-small",
        ),
        (
            "invalid",
            Some(KEY),
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini"}),
            StatusCode::BAD_REQUEST,
            "gpt-4o-mini",
        ),
        (
            "unknown",
            Some(KEY),
            "/v1/chat/completions",
            json!({"model": "gpt-4o-nope", "messages": hi}),
            StatusCode::NOT_FOUND,
            "gpt-4o-nope",
        ),
    ];
    for (id, key, path, body, status, _) in &asked {
        assert_eq!(send(id, *key, path, body).await?.status(), *status, "{id}");
    }
    // Past the key's requests a minute.
    let mut limited = None;
    for n in 0..5 {
        let id = format!("limited-{n}");
        if send(&id, Some(KEY), "/v1/chat/completions", &chat(false)).await?.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(id);
            break;
        }
    }
    let limited = limited.ok_or_else(|| anyhow::anyhow!("no request was rate limited"))?;
    let records = s.gateway.usage_records().await?;
    let limited = [(limited.as_str(), None, "", json!(null), StatusCode::TOO_MANY_REQUESTS, "gpt-4o-mini")];
    for (id, _, _, _, status, model) in asked.iter().chain(&limited) {
        let r = records
            .iter()
            .find(|r| weaver_e2e::records::sent_id(r) == *id)
            .ok_or_else(|| anyhow::anyhow!("no record {id}"))?;
        assert_eq!((r.status, r.model.as_str(), r.upstream_model.as_str()), (status.as_u16(), *model, ""), "{id}");
        assert_eq!(r.channel, None, "{id}");
    }
    Ok(())
}

/// Every request that reached authentication is one record in the store, with
/// its outcome, and its cost is tokens x the channel's pricing to the
/// nano-dollar (0.15 / 0.60 USD per million: 150 / 600 nano-dollars a token).
#[tokio::test]
async fn every_request_is_one_usage_record_with_its_exact_cost() -> anyhow::Result<()> {
    use weaver_store::{Outcome, RecordFilter, Store, StoreOptions, UsageStore as _};
    let behaviour = Behaviour { tokens: Some(3), ..Behaviour::default() };
    let mut s = setup(behaviour, "", &[]).await?;
    let plain: Value = s.post("/v1/chat/completions", &chat(false)).await?.json().await?;
    read_events(s.post("/v1/chat/completions", &chat(true)).await?).await?;
    s.client.post(s.gateway.url("/v1/chat/completions")).json(&chat(false)).send().await?; // no key: 401
    s.upstream.set(Behaviour { error_status: Some(500), ..Behaviour::default() });
    s.post("/v1/chat/completions", &chat(false)).await?; // 502
    // A stream the client abandons after its first chunk.
    s.upstream.set(Behaviour { tokens: Some(50), chunk_delay: Duration::from_millis(50), ..Behaviour::default() });
    let abandoned = s.post("/v1/chat/completions", &chat(true)).await?;
    let mut stream = abandoned.bytes_stream();
    stream.next().await;
    drop(stream);
    // Shutdown writes every record (or spools it) before the gateway exits.
    s.gateway.begin_shutdown();
    s.gateway.wait().await?;

    let url = s.gateway.usage_store_url().ok_or_else(|| anyhow::anyhow!("standalone gateway"))?;
    let store = Store::connect(&url, StoreOptions::default())?;
    let page = store.records(&RecordFilter::default(), None, 100).await?;
    let mut records = page.records;
    // Records of the same millisecond have no order: look at them by status.
    records.sort_by_key(|r| r.status);
    let outcomes: Vec<(u16, Outcome)> = records.iter().map(|r| (r.status, r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (200, Outcome::Ok),
            (200, Outcome::Ok),
            (401, Outcome::Rejected),
            (499, Outcome::ClientAborted),
            (502, Outcome::UpstreamError),
        ],
        "{records:#?}"
    );
    for ok in &records[..2] {
        assert_eq!(ok.input_tokens, plain["usage"]["prompt_tokens"].as_u64().unwrap_or_default());
        assert_eq!(ok.output_tokens, 3, "plain and streamed answers are metered");
        assert_eq!(ok.cost_nanos, ok.input_tokens * 150 + ok.output_tokens * 600);
        assert_eq!((ok.namespace.as_str(), ok.api_key.as_str()), ("team-a", "checkout"));
        assert_eq!((ok.model.as_str(), ok.upstream_model.as_str()), ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"));
        assert_eq!(ok.channel.as_deref(), Some("primary"));
    }
    assert_eq!(records[2].api_key, "", "no key, no ApiKey");
    let failed = &records[4];
    // The default policy retries once (here on the only channel), and the
    // record keeps both attempts.
    let statuses: Vec<u16> = failed.attempts.iter().map(|a| a.status).collect();
    assert_eq!((statuses, failed.cost_nanos), (vec![500, 500], 0));
    let ids: std::collections::HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "request ids are unique");
    Ok(())
}
