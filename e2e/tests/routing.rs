//! Routing and resilience over real loopback HTTP: several mock upstreams
//! behind one model, with faults injected, and the gateway's choices read
//! from what each upstream received, what clients got and `/metrics`.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{NAMESPACE, api_key};
use weaver_e2e::gateway::{TestGateway, eventually};
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream, Recorded};

const KEY: &str = "lw-routing-test-key";
const MODEL: &str = "gpt-4o-mini";

/// A channel `name` at `upstream` serving [`MODEL`]; `extra` is more spec
/// lines (two spaces in).
fn channel(name: &str, upstream: &MockUpstream, extra: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  provider: openai
  baseUrl: {}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models: [{{name: {MODEL}}}]
{extra}
"#,
        upstream.base_url()
    )
}

/// The namespace's RoutingPolicy for [`MODEL`] over `channels`; `extra` is
/// more spec lines (two spaces in).
fn policy(channels: &[&str], extra: &str) -> String {
    let refs: Vec<String> = channels.iter().map(|c| format!("{{name: {c}}}")).collect();
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {{name: routing, namespace: {NAMESPACE}}}
spec:
  models: [{MODEL}]
  channels: [{}]
{extra}
"#,
        refs.join(", ")
    )
}

/// The upstream credentials and the test key, which every bed serves.
fn prelude() -> String {
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: upstream-creds, namespace: {NAMESPACE}}}\nstringData: {{apiKey: sk-upstream}}\n"
    );
    format!("{secret}{}", api_key("routing-test", KEY))
}

struct Bed {
    gateway: TestGateway,
    client: reqwest::Client,
}

impl Bed {
    /// A standalone gateway serving `manifests` (plus the upstream
    /// credentials and the test key).
    async fn start(manifests: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let yaml = prelude() + manifests;
        Ok(Self { gateway: TestGateway::start(&yaml, flags).await?, client: reqwest::Client::new() })
    }

    async fn post(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        Ok(self.client.post(self.gateway.url("/v1/chat/completions")).bearer_auth(KEY).json(body).send().await?)
    }

    /// Sends a plain chat request and returns its status and answer.
    async fn chat(&self, text: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.post(&json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})).await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Sends `n` plain chat requests, `concurrency` at a time; the statuses.
    async fn chats(&self, n: usize, concurrency: usize) -> anyhow::Result<Vec<StatusCode>> {
        futures_util::stream::iter(0..n)
            .map(|i| async move { self.chat(&format!("request {i}")).await.map(|(status, _)| status) })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// The sum of the samples of `metric` whose labels contain every one of
    /// `labels` (`name="value"` each).
    async fn metric(&self, metric: &str, labels: &[&str]) -> anyhow::Result<f64> {
        let text = self.client.get(self.gateway.admin_url("/metrics")).send().await?.text().await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(metric)?;
                match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} "),
                    None => rest.strip_prefix(' ').map(|value| ("", value)),
                }
            })
            .filter(|(set, _)| labels.iter().all(|l| set.split(',').any(|have| have == *l)))
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum())
    }
}

fn ok(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

async fn mocks(behaviours: impl IntoIterator<Item = Behaviour>) -> anyhow::Result<Vec<MockUpstream>> {
    let mut out = Vec::new();
    for b in behaviours {
        out.push(MockUpstream::start(b).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_weighted_split_follows_the_weights_within_a_percent() -> anyhow::Result<()> {
    let up = mocks([Behaviour::default(), Behaviour::default()]).await?;
    let yaml = channel("light", &up[0], "  weight: 100") + &channel("heavy", &up[1], "  weight: 300");
    let bed = Bed::start(&yaml, &[]).await?;
    let n = 2000;
    assert_eq!(ok(&bed.chats(n, 8).await?), n);
    let heavy = up[1].requests().len() as f64 / n as f64;
    assert_eq!(up[0].requests().len() + up[1].requests().len(), n);
    assert!((heavy - 0.75).abs() < 0.01, "heavy got {heavy}");
    Ok(())
}

#[tokio::test]
async fn a_channel_answering_500_is_invisible_to_clients_and_ejected() -> anyhow::Result<()> {
    let up = mocks([Behaviour { error_status: Some(500), ..Behaviour::default() }, Behaviour::default()]).await?;
    let bed = Bed::start(&(channel("broken", &up[0], "") + &channel("fine", &up[1], "")), &[]).await?;
    let n = 200;
    assert_eq!(ok(&bed.chats(n, 4).await?), n, "every failure was retried on the other channel");
    // Five failures in a row eject it (the default); it then gets no traffic.
    let failed = up[0].requests().len();
    assert!((5..n / 4).contains(&failed), "the broken channel got {failed} requests");
    let ejected = ["namespace=\"team-a\"", "channel=\"broken\"", "state=\"ejected\""];
    assert_eq!(bed.metric("weaver_gateway_channel_state", &ejected).await?, 1.0);
    assert!(bed.metric("weaver_gateway_channel_ejections_total", &["channel=\"broken\""]).await? >= 1.0);
    assert!(bed.metric("weaver_gateway_retries_total", &["reason=\"upstream_error\""]).await? >= 5.0);
    Ok(())
}

#[tokio::test]
async fn a_channel_timing_out_is_invisible_to_clients() -> anyhow::Result<()> {
    let slow = Behaviour { latency: Duration::from_secs(3), ..Behaviour::default() };
    let up = mocks([slow, Behaviour::default()]).await?;
    let yaml = channel("slow", &up[0], "")
        + &channel("fine", &up[1], "")
        + &policy(&["slow", "fine"], "  retry: {perTryTimeout: 200ms}");
    let bed = Bed::start(&yaml, &[]).await?;
    let n = 60;
    assert_eq!(ok(&bed.chats(n, 4).await?), n);
    assert!(bed.metric("weaver_gateway_upstream_attempts_total", &["result=\"upstream_timeout\""]).await? >= 1.0);
    Ok(())
}

#[tokio::test]
async fn a_stream_broken_after_its_first_chunk_is_not_retried() -> anyhow::Result<()> {
    let breaking = || Behaviour { tokens: Some(5), drop_after: Some(3), ..Behaviour::default() };
    let up = mocks([breaking(), breaking()]).await?;
    let bed = Bed::start(&(channel("a", &up[0], "") + &channel("b", &up[1], "")), &[]).await?;
    let response =
        bed.post(&json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(&response.bytes().await?).into_owned();
    let last = text.trim_end().rsplit("\n\n").next().and_then(|e| e.strip_prefix("data: ")).unwrap_or_default();
    let error: Value = serde_json::from_str(last)?;
    assert_eq!(error["error"]["code"], "upstream_stream_error", "{text}");
    assert_eq!(up[0].requests().len() + up[1].requests().len(), 1, "a started stream is never retried");
    Ok(())
}

#[tokio::test]
async fn a_channel_answering_429_rests_for_its_retry_after() -> anyhow::Result<()> {
    let limited = Behaviour { error_status: Some(429), retry_after: Some(1), ..Behaviour::default() };
    let up = mocks([limited, Behaviour::default()]).await?;
    // Weighted, "a" first: the first request meets the 429.
    let bed = Bed::start(&(channel("a", &up[0], "  weight: 300") + &channel("b", &up[1], "")), &[]).await?;
    let (status, _) = bed.chat("first").await?;
    assert_eq!(status, StatusCode::OK, "the 429 was retried on the other channel");
    assert_eq!(up[0].requests().len(), 1);
    up[0].set(Behaviour::default());
    // Until its Retry-After has passed the channel gets nothing; then it is back.
    eventually("the rate-limited channel serves again", || async {
        bed.chat("again").await.is_ok_and(|(s, _)| s == StatusCode::OK) && up[0].requests().len() > 1
    })
    .await?;
    let seen = up[0].requests();
    let rested = seen[1].at.duration_since(seen[0].at);
    assert!(rested >= Duration::from_secs(1), "the channel got traffic {rested:?} after its 429");
    assert!(up[1].requests().len() > 1, "the other channel served meanwhile");
    let limited = ["channel=\"a\"", "result=\"upstream_rate_limited\""];
    assert_eq!(bed.metric("weaver_gateway_upstream_attempts_total", &limited).await?, 1.0);
    Ok(())
}

#[tokio::test]
async fn an_ejected_channel_returns_after_it_recovers() -> anyhow::Result<()> {
    let up = mocks([Behaviour { error_status: Some(503), ..Behaviour::default() }, Behaviour::default()]).await?;
    let outlier = "  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1s}";
    let yaml = channel("flaky", &up[0], "") + &channel("steady", &up[1], "") + &policy(&["flaky", "steady"], outlier);
    let bed = Bed::start(&yaml, &[]).await?;
    let ejected = ["channel=\"flaky\"", "state=\"ejected\""];
    eventually("the failing channel is ejected", || async {
        bed.chat("x").await.is_ok_and(|(s, _)| s == StatusCode::OK)
            && bed.metric("weaver_gateway_channel_state", &ejected).await.is_ok_and(|v| v == 1.0)
    })
    .await?;
    up[0].set(Behaviour::default());
    let failures = up[0].requests().len();
    eventually("the recovered channel answers again", || async {
        let _ = bed.chat("y").await;
        up[0].requests().len() > failures
    })
    .await?;
    let (status, _) = bed.chat("z").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bed.metric("weaver_gateway_channel_state", &ejected).await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn with_every_channel_failing_attempts_stay_within_the_retry_budget() -> anyhow::Result<()> {
    let failing = || Behaviour { error_status: Some(500), ..Behaviour::default() };
    let up = mocks([failing(), failing()]).await?;
    // Three attempts a request, a budget of 20 % plus one a second; no
    // ejection, so every request reaches the upstreams.
    let settings =
        "  retry: {attempts: 3, budget: {percent: 20, minPerSecond: 1}}\n  outlierDetection: {consecutiveFailures: 0}";
    let yaml = channel("a", &up[0], "") + &channel("b", &up[1], "") + &policy(&["a", "b"], settings);
    let bed = Bed::start(&yaml, &[]).await?;
    let n = 100;
    let started = std::time::Instant::now();
    let statuses = bed.chats(n, 4).await?;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::BAD_GATEWAY), "{statuses:?}");
    let attempts = up[0].requests().len() + up[1].requests().len();
    // The README's bound: retries in any 10 s are at most 20 % of the
    // requests of those and the 10 s before, plus 10 x minPerSecond.
    let windows = elapsed.as_secs() / 10 + 1;
    let bound = n + n / 5 + 10 * windows as usize;
    assert!(attempts <= bound, "{attempts} attempts for {n} requests (bound {bound}); without a budget: {}", 3 * n);
    assert!(attempts > n, "some retries were allowed");
    assert!(bed.metric("weaver_gateway_retry_budget_exhausted_total", &[]).await? > 0.0);
    Ok(())
}

#[tokio::test]
async fn cache_aware_keeps_a_prefix_on_one_channel_and_spreads_others() -> anyhow::Result<()> {
    let caching = || Behaviour { prefix_cache: true, ..Behaviour::default() };
    let up = mocks([caching(), caching(), caching()]).await?;
    let yaml = channel("a", &up[0], "")
        + &channel("b", &up[1], "")
        + &channel("c", &up[2], "")
        + &policy(&["a", "b", "c"], "  strategy: cache-aware");
    let bed = Bed::start(&yaml, &[]).await?;
    let turn = |system: &str, later: usize| {
        let mut messages =
            vec![json!({"role": "system", "content": system}), json!({"role": "user", "content": "Hello"})];
        for i in 0..later {
            messages.push(json!({"role": "assistant", "content": format!("answer {i}")}));
            messages.push(json!({"role": "user", "content": format!("question {i}")}));
        }
        json!({"model": MODEL, "messages": messages})
    };
    // One conversation, growing: always the same channel.
    for later in 0..20 {
        assert_eq!(bed.post(&turn("You are a pirate.", later)).await?.status(), StatusCode::OK);
    }
    let counts: Vec<usize> = up.iter().map(|u| u.requests().len()).collect();
    assert_eq!(counts.iter().filter(|c| **c > 0).count(), 1, "one prefix, one channel: {counts:?}");
    let home = ["a", "b", "c"][counts.iter().position(|c| *c > 0).unwrap_or(0)];
    // Its prompt cache hit from the second request on.
    let cached = ["channel=\"".to_owned() + home + "\"", "direction=\"cached_input\"".to_owned()];
    let cached: Vec<&str> = cached.iter().map(String::as_str).collect();
    assert!(bed.metric("weaver_gateway_tokens_total", &cached).await? > 0.0);
    // Other prefixes go elsewhere too.
    for i in 0..30 {
        assert_eq!(bed.post(&turn(&format!("You are assistant number {i}."), 0)).await?.status(), StatusCode::OK);
    }
    let used = up.iter().filter(|u| !u.requests().is_empty()).count();
    assert_eq!(used, 3, "different prefixes spread over the channels");
    Ok(())
}

#[tokio::test]
async fn lowest_latency_prefers_the_fast_channel_and_shifts_when_it_slows() -> anyhow::Result<()> {
    let up = mocks([
        Behaviour { latency: Duration::from_millis(20), ..Behaviour::default() },
        Behaviour { latency: Duration::from_millis(200), ..Behaviour::default() },
    ])
    .await?;
    let yaml = channel("fast", &up[0], "")
        + &channel("slow", &up[1], "")
        + &policy(&["fast", "slow"], "  strategy: lowest-latency");
    let bed = Bed::start(&yaml, &[]).await?;
    assert_eq!(ok(&bed.chats(40, 1).await?), 40);
    let fast = up[0].requests().len();
    assert!(fast >= 36, "the fast channel got {fast} of 40");
    up[0].set(Behaviour { latency: Duration::from_millis(600), ..Behaviour::default() });
    let slow_before = up[1].requests().len();
    assert_eq!(ok(&bed.chats(10, 1).await?), 10);
    let shifted = up[1].requests().len() - slow_before;
    assert!(shifted >= 8, "after the fast channel slowed, the other got {shifted} of 10");
    Ok(())
}

#[tokio::test]
async fn lowest_cost_uses_the_cheapest_healthy_channel_then_the_next() -> anyhow::Result<()> {
    let up = mocks([Behaviour::default(), Behaviour::default(), Behaviour::default()]).await?;
    let priced = |name: &str, u: &MockUpstream, price: &str| {
        channel(name, u, "").replace(
            &format!("models: [{{name: {MODEL}}}]"),
            &format!(
                "models: [{{name: {MODEL}, pricing: {{inputPerMillion: \"{price}\", outputPerMillion: \"{price}\"}}}}]"
            ),
        )
    };
    let yaml = priced("cheap", &up[0], "0.10")
        + &priced("middle", &up[1], "0.20")
        + &priced("dear", &up[2], "0.30")
        + &policy(&["dear", "middle", "cheap"], "  strategy: lowest-cost");
    let bed = Bed::start(&yaml, &[]).await?;
    assert_eq!(ok(&bed.chats(20, 2).await?), 20);
    assert_eq!(up.iter().map(|u| u.requests().len()).collect::<Vec<_>>(), [20, 0, 0]);
    up[0].set(Behaviour { error_status: Some(500), ..Behaviour::default() });
    assert_eq!(ok(&bed.chats(20, 2).await?), 20, "the failures went to the next cheapest");
    assert!(
        up[1].requests().len() >= 15 && up[2].requests().is_empty(),
        "{:?}",
        up.iter().map(|u| u.requests().len()).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn lower_tiers_and_a_fallback_model_serve_only_when_better_ones_cannot() -> anyhow::Result<()> {
    let up = mocks([Behaviour::default(), Behaviour::default(), Behaviour::default()]).await?;
    let big = channel("big", &up[2], "").replace(&format!("name: {MODEL}}}"), "name: gpt-4o}");
    let settings = "  fallback: [{model: gpt-4o}]\n  retry: {attempts: 3}";
    // A second key, held to the requested model by its allowlist.
    let held = api_key("held", HELD_KEY).replace("spec: {}", &format!("spec: {{allowedModels: [{MODEL}]}}"));
    let yaml = channel("main", &up[0], "")
        + &channel("backup", &up[1], "  priority: 1")
        + &big
        + &policy(&["main", "backup"], settings)
        + &held;
    let bed = Bed::start(&yaml, &[]).await?;
    assert_eq!(ok(&bed.chats(10, 2).await?), 10);
    assert_eq!(up.iter().map(|u| u.requests().len()).collect::<Vec<_>>(), [10, 0, 0], "the best tier serves alone");
    up[0].set(Behaviour { error_status: Some(500), ..Behaviour::default() });
    let (status, answer) = bed.chat("backup please").await?;
    assert_eq!((status, answer["model"].as_str()), (StatusCode::OK, Some(MODEL)));
    assert_eq!(up[1].requests().len(), 1, "the lower tier served when the better one failed");
    up[1].set(Behaviour { error_status: Some(500), ..Behaviour::default() });
    let response = bed.post(&json!({"model": MODEL, "messages": [{"role": "user", "content": "anything"}]})).await?;
    assert_eq!(response.headers().get("x-weaver-channel").and_then(|v| v.to_str().ok()), Some("big"));
    let answer: Value = response.json().await?;
    assert_eq!(answer["model"], "gpt-4o", "the fallback model answered, and says so");
    assert_eq!(up[2].requests()[0].body["model"], "gpt-4o", "the fallback model went upstream under its own name");
    assert!(bed.metric("weaver_gateway_fallbacks_total", &["model=\"gpt-4o-mini\""]).await? >= 2.0);
    // The held key is not served the fallback model it may not use: it gets
    // its own model's channels' failure.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "anything"}]});
    let held =
        bed.client.post(bed.gateway.url("/v1/chat/completions")).bearer_auth(HELD_KEY).json(&body).send().await?;
    assert_eq!(held.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(up[2].requests().len(), 1, "the fallback channel saw only the first key's request");
    Ok(())
}

/// The key of `lower_tiers_and_a_fallback_model_serve_only_when_better_ones_cannot`
/// that may use the requested model only.
const HELD_KEY: &str = "lw-held-test-key";

#[tokio::test]
async fn a_full_channel_sends_to_the_next_and_a_lone_one_queues_boundedly() -> anyhow::Result<()> {
    let held = || Behaviour { tokens: Some(3), hold_after: Some(1), ..Behaviour::default() };
    let up = mocks([held(), Behaviour::default()]).await?;
    let yaml =
        channel("capped", &up[0], "  maxConcurrency: 1\n  weight: 1000") + &channel("spare", &up[1], "  weight: 1");
    let bed = Bed::start(&yaml, &[]).await?;
    let stream = json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "hold"}]});
    let first = bed.post(&stream).await?;
    assert_eq!(first.headers().get("x-weaver-channel").and_then(|v| v.to_str().ok()), Some("capped"));
    let (status, _) = bed.chat("while it is full").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up[1].requests().len(), 1, "the full channel's request went to the next one");
    up[0].release();
    first.bytes().await?;

    // One channel: a request waits for the slot, up to queueTimeout.
    let lone = mocks([held()]).await?;
    let yaml = channel("lone", &lone[0], "  maxConcurrency: 1\n  queueTimeout: 100ms");
    let bed = Bed::start(&yaml, &[]).await?;
    let first = bed.post(&stream).await?;
    let response = bed.post(&json!({"model": MODEL, "messages": [{"role": "user", "content": "full"}]})).await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "channel_saturated");
    assert_eq!(lone[0].requests().len(), 1, "the upstream never saw more than its cap");
    // A waiting request gets the slot once the first one ends.
    let long_wait = channel("lone", &lone[0], "  maxConcurrency: 1\n  queueTimeout: 30s");
    let bed = Bed::start(&long_wait, &[]).await?;
    lone[0].release();
    first.bytes().await?;
    let first = bed.post(&stream).await?;
    let waiting = tokio::spawn({
        let client = bed.client.clone();
        let url = bed.gateway.url("/v1/chat/completions");
        async move {
            let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "wait"}]});
            client.post(url).bearer_auth(KEY).json(&body).send().await.map(|r| r.status())
        }
    });
    // Both requests are in the gateway and only one reached the upstream:
    // the second waits for the slot.
    eventually("the second request is queued", || async {
        bed.metric("weaver_gateway_in_flight_requests", &[]).await.is_ok_and(|v| v == 2.0)
    })
    .await?;
    assert_eq!(lone[0].requests().len(), 2, "only the two held streams reached the upstream");
    lone[0].release();
    first.bytes().await?;
    assert_eq!(waiting.await??, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_channel_header_names_the_channel_unless_turned_off() -> anyhow::Result<()> {
    let up = mocks([Behaviour::default()]).await?;
    let yaml = channel("only", &up[0], "");
    let on = Bed::start(&yaml, &[]).await?;
    let response = on.post(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})).await?;
    assert_eq!(response.headers().get("x-weaver-channel").and_then(|v| v.to_str().ok()), Some("only"));
    let off = Bed::start(&yaml, &["--channel-header", "false"]).await?;
    let response = off.post(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-weaver-channel").is_none());
    Ok(())
}

/// Whether a request the mock received came from a client (not from a
/// health check, whose prompt is [`PROBE_PROMPT`]).
fn from_client(r: &Recorded) -> bool {
    r.body["messages"][0]["content"] != PROBE_PROMPT
}

const PROBE_PROMPT: &str = "health-probe";

#[tokio::test]
async fn a_channel_failing_its_health_check_gets_no_traffic_until_a_probe_passes() -> anyhow::Result<()> {
    let up = mocks([Behaviour { error_status: Some(500), ..Behaviour::default() }, Behaviour::default()]).await?;
    let check =
        format!("  healthCheck: {{interval: 100ms, timeout: 5s, unhealthyThreshold: 1, prompt: {PROBE_PROMPT}}}");
    let bed = Bed::start(&(channel("probed", &up[0], &check) + &channel("steady", &up[1], "")), &[]).await?;
    let unhealthy = ["channel=\"probed\"", "state=\"unhealthy\""];
    eventually("the failing probe takes the channel out", || async {
        bed.metric("weaver_gateway_channel_state", &unhealthy).await.is_ok_and(|v| v == 1.0)
    })
    .await?;
    let n = 50;
    assert_eq!(ok(&bed.chats(n, 4).await?), n);
    let probes = up[0].requests();
    assert!(!probes.is_empty());
    assert_eq!(probes.iter().filter(|r| from_client(r)).count(), 0, "the unhealthy channel got client traffic");
    // Probes are not client traffic: not in the request metrics, not metered.
    assert_eq!(bed.metric("weaver_gateway_requests_total", &[]).await?, n as f64);
    let failed = ["channel=\"probed\"", "result=\"upstream_error\""];
    assert!(bed.metric("weaver_gateway_health_checks_total", &failed).await? >= 1.0);
    // The upstream recovers: a probe brings the channel back.
    up[0].set(Behaviour::default());
    eventually("a passing probe brings the channel back", || async {
        let _ = bed.chat("again").await;
        up[0].requests().iter().any(from_client)
    })
    .await?;
    assert_eq!(bed.metric("weaver_gateway_channel_state", &unhealthy).await?, 0.0);
    assert!(bed.metric("weaver_gateway_health_checks_total", &["channel=\"probed\"", "result=\"ok\""]).await? >= 1.0);
    Ok(())
}

#[tokio::test]
async fn a_health_check_that_is_removed_stops_probing_and_lets_the_channel_serve() -> anyhow::Result<()> {
    let up = mocks([Behaviour { error_status: Some(500), ..Behaviour::default() }]).await?;
    let check = format!("  healthCheck: {{interval: 100ms, unhealthyThreshold: 1, prompt: {PROBE_PROMPT}}}");
    let bed = Bed::start(&channel("probed", &up[0], &check), &[]).await?;
    let unhealthy = ["channel=\"probed\"", "state=\"unhealthy\""];
    eventually("the failing probe takes the channel out", || async {
        bed.metric("weaver_gateway_channel_state", &unhealthy).await.is_ok_and(|v| v == 1.0)
    })
    .await?;
    up[0].set(Behaviour::default());
    bed.gateway.rewrite(&(prelude() + &channel("probed", &up[0], "")))?;
    eventually("without its check the channel serves", || async {
        bed.chat("x").await.is_ok_and(|(s, _)| s == StatusCode::OK)
            && bed.metric("weaver_gateway_channel_state", &unhealthy).await.is_ok_and(|v| v == 0.0)
    })
    .await?;
    // No probe goes out any more: the probe count holds while clients are served.
    let probes = up[0].requests().iter().filter(|r| !from_client(r)).count();
    assert_eq!(ok(&bed.chats(20, 2).await?), 20);
    let later = up[0].requests().iter().filter(|r| !from_client(r)).count();
    assert!(later <= probes + 1, "probes went on after the check was removed: {probes} -> {later}");
    Ok(())
}

#[tokio::test]
async fn the_channel_test_reports_status_latency_and_first_tokens() -> anyhow::Result<()> {
    let slow = Behaviour { latency: Duration::from_millis(50), ..Behaviour::default() };
    let up = mocks([slow, Behaviour { error_status: Some(503), ..Behaviour::default() }]).await?;
    let check = "  healthCheck: {interval: 100ms, unhealthyThreshold: 1}";
    let bed = Bed::start(&(channel("good", &up[0], "") + &channel("bad", &up[1], check)), &[]).await?;
    let token_file = bed.gateway.data_dir().context("a standalone gateway")?.join("admin-token");
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let url = |name: &str| bed.gateway.admin_url(&format!("/admin/v1/channels/{NAMESPACE}/{name}/test"));
    let test = |name: &str, body: Value| bed.client.post(url(name)).bearer_auth(&token).json(&body).send();

    let response = test("good", json!({"prompt": "hello there"})).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await?;
    assert_eq!((&report["ok"], &report["status"], &report["model"]), (&json!(true), &json!(200), &json!(MODEL)));
    assert!(report["latency_ms"].as_u64().is_some_and(|ms| ms >= 50), "{report}");
    let answer = report["first_tokens"].as_str().unwrap_or_default();
    assert!(answer.starts_with("This is LLM Weaver's mock channel"), "{report}");
    assert_eq!((&report["state"], &report["probe"]), (&json!("healthy"), &json!("unknown")));
    let sent = up[0].requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["messages"][0]["content"], "hello there");
    assert_eq!(bed.metric("weaver_gateway_requests_total", &[]).await?, 0.0, "a test is not client traffic");

    let unhealthy = ["channel=\"bad\"", "state=\"unhealthy\""];
    eventually("the failing channel is unhealthy", || async {
        bed.metric("weaver_gateway_channel_state", &unhealthy).await.is_ok_and(|v| v == 1.0)
    })
    .await?;
    let report: Value = test("bad", json!({})).await?.json().await?;
    assert_eq!((&report["ok"], &report["status"]), (&json!(false), &json!(503)), "{report}");
    assert_eq!(report["error"]["code"], "upstream_error");
    assert_eq!((&report["state"], &report["probe"]), (&json!("unhealthy"), &json!("unhealthy")));

    // Bad input gets OpenAI-shaped errors.
    let response = test("missing", json!({})).await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.json::<Value>().await?["error"]["code"], "channel_not_found");
    let response = test("good", json!({"model": "no-such-model"})).await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = response.json::<Value>().await?;
    assert_eq!((&error["error"]["param"], &error["error"]["type"]), (&json!("model"), &json!("invalid_request_error")));
    let response = test("good", json!({"max_tokens": 100_000_000})).await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a test spends little, unmetered");
    assert_eq!(response.json::<Value>().await?["error"]["param"], "max_tokens");
    let response = bed.client.post(url("good")).bearer_auth(&token).body("{not json").send().await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await?["error"]["code"], "invalid_json");
    let response = bed.client.post(url("good")).json(&json!({})).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.json::<Value>().await?["error"]["code"], "invalid_admin_token");
    let response = bed.client.post(url("good")).bearer_auth("wrong").json(&json!({})).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(up[0].requests().len(), 1, "refused tests send nothing upstream");

    // The command-line tool, through the same endpoint.
    let cli = |name: &str| -> anyhow::Result<_> {
        Ok(tokio::process::Command::new(weaver_e2e::cluster::binary("weaver-gateway")?)
            .env_remove("WEAVER_ADMIN_TOKEN")
            .args(["channel-test", "--admin", &bed.gateway.admin_url("/"), "--prompt", "from the cli"])
            .arg("--token-file")
            .arg(&token_file)
            .arg(format!("{NAMESPACE}/{name}"))
            .output())
    };
    let out = cli("good")?.await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("result   ok: status 200") && text.contains("You said: from the cli"), "{text}");
    let out = cli("bad")?.await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failing channel fails the command: {text}");
    assert!(
        text.contains("FAILED: status 503") && text.contains("routing  unhealthy (health check: unhealthy)"),
        "{text}"
    );
    Ok(())
}
