//! Per-key rate limits over real loopback HTTP against the mock upstream:
//! requests and tokens per minute, requests in flight, the headers and
//! refusals clients see, and what survives a configuration change. Counts are
//! asserted (how many passed, how many were refused), never durations: the
//! smallest refill interval used here is 20 s, far beyond a test's run.

use futures_util::StreamExt;
use futures_util::future::{Either, join_all, select};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, api_key, openai_namespace as manifests};
use weaver_e2e::gateway::{TestGateway, eventually};
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};

struct Setup {
    upstream: MockUpstream,
    gateway: TestGateway,
    client: reqwest::Client,
}

async fn setup(behaviour: Behaviour, key_spec: &str, extra: &str, flags: &[&str]) -> anyhow::Result<Setup> {
    let upstream = MockUpstream::start(behaviour).await?;
    let yaml = manifests(&upstream.base_url(), key_spec) + extra;
    let gateway = TestGateway::start(&yaml, flags).await?;
    Ok(Setup { upstream, gateway, client: reqwest::Client::new() })
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": stream})
}

impl Setup {
    async fn post_as(&self, key: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let url = self.gateway.url("/v1/chat/completions");
        Ok(self.client.post(url).bearer_auth(key).json(body).send().await?)
    }

    async fn post(&self, body: &Value) -> anyhow::Result<reqwest::Response> {
        self.post_as(KEY, body).await
    }

    async fn metric(&self, name_and_labels: &str) -> f64 {
        let url = self.gateway.admin_url("/metrics");
        let text = match self.client.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// A number header; -1 when missing or not a number.
fn number(headers: &HeaderMap, name: &str) -> i64 {
    header(headers, name).parse().unwrap_or(-1)
}

/// A 429's headers and error body.
async fn refusal(response: reqwest::Response) -> anyhow::Result<(HeaderMap, Value)> {
    anyhow::ensure!(response.status() == StatusCode::TOO_MANY_REQUESTS, "expected 429, got {}", response.status());
    let headers = response.headers().clone();
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    Ok((headers, body))
}

const REFUSED: &str = "weaver_gateway_admissions_refused_total";

#[tokio::test]
async fn a_burst_gets_exactly_the_requests_per_minute_and_the_rest_429_with_headers() -> anyhow::Result<()> {
    let s =
        setup(Behaviour::default(), "rateLimit: {requestsPerMinute: 3}", &api_key("other", "lw-other"), &[]).await?;
    let body = chat(false);
    let responses = join_all((0..7).map(|_| s.post(&body))).await;
    let mut passed = Vec::new();
    let mut refused = Vec::new();
    for response in responses {
        let response = response?;
        match response.status() {
            StatusCode::OK => passed.push(response.headers().clone()),
            _ => refused.push(refusal(response).await?),
        }
    }
    assert_eq!((passed.len(), refused.len()), (3, 4));
    assert_eq!(s.upstream.requests().len(), 3, "refusals never reach the upstream");

    // Success answers carry the headers too, remaining counting down.
    let mut remaining: Vec<i64> = passed.iter().map(|h| number(h, "x-ratelimit-remaining-requests")).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2]);
    for h in &passed {
        assert_eq!(number(h, "x-ratelimit-limit-requests"), 3);
        assert!(header(h, "x-ratelimit-reset-requests").ends_with('s'), "{h:?}");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"), "no tokens limit, no tokens headers");
    }
    for (h, body) in &refused {
        assert_eq!(body["error"]["type"], "requests");
        // One request comes back every 20 s.
        assert!((1..=20).contains(&number(h, "retry-after")), "{h:?}");
        assert_eq!(number(h, "x-ratelimit-limit-requests"), 3);
        assert_eq!(number(h, "x-ratelimit-remaining-requests"), 0);
        assert!(header(h, "x-ratelimit-reset-requests").ends_with('s'), "{h:?}");
    }

    // Another key of the namespace has no limits and no headers.
    let other = s.post_as("lw-other", &chat(false)).await?;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(!other.headers().contains_key("x-ratelimit-limit-requests"));

    let labels = r#"{namespace="team-a",reason="rate_limit_requests"}"#;
    assert_eq!(s.metric(&format!("{REFUSED}{labels}")).await, 4.0);
    Ok(())
}

#[tokio::test]
async fn refusals_are_usage_records_with_outcome_rejected() -> anyhow::Result<()> {
    use weaver_store::{Outcome, RecordFilter, Store, StoreOptions, UsageStore as _};
    let mut s = setup(Behaviour::default(), "rateLimit: {requestsPerMinute: 3}", "", &[]).await?;
    for _ in 0..5 {
        s.post(&chat(false)).await?;
    }
    s.gateway.begin_shutdown();
    s.gateway.wait().await?;
    let url = s.gateway.usage_store_url().ok_or_else(|| anyhow::anyhow!("standalone gateway"))?;
    let records = Store::connect(&url, StoreOptions::default())?.records(&RecordFilter::default(), None, 100).await?;
    let mut seen: Vec<(u16, Outcome, usize)> =
        records.records.iter().map(|r| (r.status, r.outcome, r.attempts.len())).collect();
    seen.sort_by_key(|r| r.0);
    assert_eq!(
        seen,
        [
            (200, Outcome::Ok, 1),
            (200, Outcome::Ok, 1),
            (200, Outcome::Ok, 1),
            (429, Outcome::Rejected, 0),
            (429, Outcome::Rejected, 0)
        ]
    );
    Ok(())
}

/// A body and the tokens the gateway reserves for it: bytes / 4, rounded up,
/// plus its `max_tokens`.
fn with_max_tokens(stream: bool, max_tokens: u64) -> (Value, u64) {
    let mut body = chat(stream);
    body["max_tokens"] = json!(max_tokens);
    let bytes = serde_json::to_vec(&body).map_or(0, |b| b.len() as u64);
    (body, bytes.div_ceil(4) + max_tokens)
}

#[tokio::test]
async fn tokens_are_reserved_from_max_tokens_and_refunded_to_the_real_usage() -> anyhow::Result<()> {
    let behaviour = Behaviour { tokens: Some(3), hold_after: Some(2), ..Behaviour::default() };
    let s = setup(behaviour, "rateLimit: {tokensPerMinute: 1000}", "", &[]).await?;

    // More than the whole allowance: refused for good, so no Retry-After.
    let (huge, _) = with_max_tokens(false, 2000);
    let (h, body) = refusal(s.post(&huge).await?).await?;
    assert_eq!(body["error"]["type"], "tokens");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("Request too large")), "{body}");
    assert!(!h.contains_key("retry-after"));
    assert_eq!(number(&h, "x-ratelimit-remaining-tokens"), 1000, "a refusal takes nothing");

    // A held stream keeps its reservation while it runs.
    let (held_body, reserved) = with_max_tokens(true, 600);
    let held = s.post(&held_body).await?;
    assert_eq!(held.status(), StatusCode::OK);
    assert_eq!(number(held.headers(), "x-ratelimit-limit-tokens"), 1000);
    assert_eq!(number(held.headers(), "x-ratelimit-remaining-tokens"), 1000 - reserved as i64);
    assert!(header(held.headers(), "x-ratelimit-reset-tokens").ends_with('s'));

    let (next, next_reserved) = with_max_tokens(false, 600);
    let (h, body) = refusal(s.post(&next).await?).await?;
    assert_eq!(body["error"]["type"], "tokens");
    assert!(number(&h, "retry-after") >= 1, "{h:?}");

    // The stream ends having used a few tokens: the rest comes back.
    s.upstream.release();
    let mut events = held.bytes_stream();
    while let Some(chunk) = events.next().await {
        chunk?;
    }
    let admitted = std::sync::Mutex::new(None);
    eventually("the reservation is refunded when the stream ends", || async {
        match s.post(&next).await {
            Ok(r) if r.status() == StatusCode::OK => {
                *admitted.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.headers().clone());
                true
            }
            _ => false,
        }
    })
    .await?;
    let h = admitted.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_default();
    let remaining = number(&h, "x-ratelimit-remaining-tokens");
    // At most the real use of the stream (under 50 tokens) stays charged;
    // refill only adds.
    assert!(remaining >= 1000 - next_reserved as i64 - 50 && remaining <= 1000 - next_reserved as i64, "{remaining}");
    assert!(s.metric(&format!(r#"{REFUSED}{{namespace="team-a",reason="rate_limit_tokens"}}"#)).await >= 2.0);
    Ok(())
}

/// Reads a response to its end; whether it ended well.
async fn read_to_end(response: reqwest::Response) -> bool {
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn max_concurrent_holds_while_streams_run_and_frees_when_they_end_or_the_client_leaves() -> anyhow::Result<()> {
    let behaviour = Behaviour { tokens: Some(4), hold_after: Some(2), ..Behaviour::default() };
    let s = setup(behaviour, "rateLimit: {maxConcurrent: 2}", "", &[]).await?;
    let (a, b) = (s.post(&chat(true)).await?, s.post(&chat(true)).await?);
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    // Two in flight: a third is refused (plain ones are never held).
    let (h, body) = refusal(s.post(&chat(false)).await?).await?;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("concurrent")), "{body}");
    assert_eq!(number(&h, "retry-after"), 1);

    // One stream ends: its slot comes back.
    let (a, b) = (tokio::spawn(read_to_end(a)), tokio::spawn(read_to_end(b)));
    s.upstream.release();
    let still_held = match select(a, b).await {
        Either::Left((ended, other)) | Either::Right((ended, other)) => {
            assert!(ended?, "the released stream ended well");
            other
        }
    };
    eventually("the ended stream's slot comes back", || async {
        s.post(&chat(false)).await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await?;

    // Two in flight again, then the client of one leaves mid-stream.
    let c = s.post(&chat(true)).await?;
    assert_eq!(c.status(), StatusCode::OK);
    refusal(s.post(&chat(false)).await?).await?;
    still_held.abort();
    eventually("the slot of a client that left comes back", || async {
        s.post(&chat(false)).await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await?;
    assert!(s.metric(&format!(r#"{REFUSED}{{namespace="team-a",reason="concurrency"}}"#)).await >= 2.0);
    drop(c);
    Ok(())
}

#[tokio::test]
async fn a_configuration_change_does_not_reset_the_buckets() -> anyhow::Result<()> {
    let spec = "rateLimit: {requestsPerMinute: 3}";
    let s = setup(Behaviour::default(), spec, "", &[]).await?;
    for _ in 0..3 {
        assert_eq!(s.post(&chat(false)).await?.status(), StatusCode::OK);
    }
    refusal(s.post(&chat(false)).await?).await?;

    let edited = manifests(&s.upstream.base_url(), &format!("{spec}\n  allowedModels: [\"gpt-4o*\"]"));
    s.gateway.rewrite(&edited)?;
    eventually("the edit is applied", || async { s.metric("weaver_gateway_snapshot_version").await == 2.0 }).await?;
    let (h, _) = refusal(s.post(&chat(false)).await?).await?;
    assert_eq!(number(&h, "x-ratelimit-remaining-requests"), 0, "the new snapshot kept the bucket");
    Ok(())
}

#[tokio::test]
async fn with_two_replicas_each_gateway_takes_half_the_limit() -> anyhow::Result<()> {
    let s = setup(Behaviour::default(), "rateLimit: {requestsPerMinute: 6}", "", &["--replicas", "2"]).await?;
    let body = chat(false);
    let responses = join_all((0..8).map(|_| s.post(&body))).await;
    let statuses: Vec<StatusCode> = responses.into_iter().filter_map(|r| r.ok()).map(|r| r.status()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 5);
    let (h, _) = refusal(s.post(&chat(false)).await?).await?;
    assert_eq!(number(&h, "x-ratelimit-limit-requests"), 3, "the headers speak of this replica's share");
    Ok(())
}
