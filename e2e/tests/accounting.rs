//! Token accounting when the upstream reports no usage (the gateway counts,
//! and says so), and request/response body logging per key — over real
//! loopback HTTP against the mock upstream, read back from the usage store.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, api_key, openai_namespace as manifests};
use weaver_e2e::gateway::TestGateway;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_store::{Outcome, RecordFilter, Store, StoreOptions, UsageRecord, UsageStore as _};

/// The channel's prices: 0.15 / 0.60 USD per million tokens.
const INPUT_NANOS: u64 = 150;
const OUTPUT_NANOS: u64 = 600;

/// Tokens of `text` as the gateway's tokenizer counts them.
fn tokens(text: &str) -> u64 {
    bpe_openai::o200k_base().count(text) as u64
}

struct Setup {
    upstream: MockUpstream,
    gateway: TestGateway,
    client: reqwest::Client,
}

async fn setup(behaviour: Behaviour, yaml: impl FnOnce(String) -> String) -> anyhow::Result<Setup> {
    let upstream = MockUpstream::start(behaviour).await?;
    let gateway = TestGateway::start(&yaml(manifests(&upstream.base_url(), "")), &[]).await?;
    Ok(Setup { upstream, gateway, client: reqwest::Client::new() })
}

impl Setup {
    async fn post(&self, key: &str, id: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let url = self.gateway.url("/v1/chat/completions");
        Ok(self.client.post(url).bearer_auth(key).header("x-request-id", id).json(body).send().await?)
    }

    /// Shuts the gateway down (which writes every record) and opens its store
    /// (which lives as long as the gateway's folder).
    async fn store(&mut self) -> anyhow::Result<Store> {
        self.gateway.begin_shutdown();
        self.gateway.wait().await?;
        let url = self.gateway.usage_store_url().ok_or_else(|| anyhow::anyhow!("a standalone gateway"))?;
        Ok(Store::connect(&url, StoreOptions::default())?)
    }
}

async fn record(store: &Store, id: &str) -> anyhow::Result<UsageRecord> {
    let page = store.records(&RecordFilter::default(), None, 100).await?;
    page.records
        .into_iter()
        .find(|r| weaver_e2e::records::sent_id(r) == id)
        .ok_or_else(|| anyhow::anyhow!("no record {id}"))
}

fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": stream})
}

/// The text of a stream's content deltas, and its events.
async fn streamed_content(response: reqwest::Response) -> anyhow::Result<String> {
    let text = response.text().await?;
    let mut content = String::new();
    for data in text.split("\n\n").filter_map(|e| e.trim().strip_prefix("data: ")) {
        if let Ok(chunk) = serde_json::from_str::<Value>(data) {
            content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
        }
    }
    Ok(content)
}

/// `estimate` is within `percent` of `exact`.
fn close(estimate: u64, exact: u64, percent: u64) -> bool {
    estimate.abs_diff(exact) * 100 <= exact * percent
}

#[tokio::test]
async fn a_stream_the_client_abandons_is_charged_the_tokens_counted_so_far() -> anyhow::Result<()> {
    // 50 one-token chunks, 50 ms apart; the usage chunk would come last.
    let produced = 50;
    let behaviour =
        Behaviour { tokens: Some(produced), chunk_delay: Duration::from_millis(50), ..Behaviour::default() };
    let mut s = setup(behaviour, |y| y).await?;
    let response = s.post(KEY, "abandoned", &chat("Tell me a story", true)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"content\":\" ").count() < 5 {
        let Some(chunk) = stream.next().await else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    drop(stream);
    let store = s.store().await?;
    let r = record(&store, "abandoned").await?;
    assert_eq!((r.status, r.outcome), (499, Outcome::ClientAborted));
    assert!(r.estimated, "no usage was reported: the gateway counted");
    assert!(r.output_tokens > 0 && r.output_tokens <= produced as u64, "{} output tokens", r.output_tokens);
    // One message: its text plus OpenAI's framing (3 a message, 3 a request).
    assert_eq!(r.input_tokens, tokens("Tell me a story") + 6);
    assert_eq!(r.cost_nanos, r.input_tokens * INPUT_NANOS + r.output_tokens * OUTPUT_NANOS);
    Ok(())
}

#[tokio::test]
async fn a_channel_without_stream_usage_is_charged_counted_tokens() -> anyhow::Result<()> {
    // No `stream_options` upstream: the mock sends no usage chunk.
    let mut s = setup(Behaviour::default(), |y| y.replace("  timeouts:", "  streamUsage: false\n  timeouts:")).await?;
    let prompt = "Summarise the plot of Hamlet in one paragraph, please, with the names of the main characters.";
    let response = s.post(KEY, "no-stream-usage", &chat(prompt, true)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content = streamed_content(response).await?;
    assert!(content.contains("You said:"), "{content}");
    assert!(s.upstream.requests()[0].body.get("stream_options").is_none());

    // And an upstream that never reports usage, in a whole answer.
    s.upstream.set(Behaviour { omit_usage: true, ..Behaviour::default() });
    let whole: Value = s.post(KEY, "no-usage-whole", &chat(prompt, false)).await?.json().await?;
    assert!(whole.get("usage").is_none(), "{whole}");
    let whole_content = whole["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();

    let store = s.store().await?;
    let expected_input = tokens(prompt) + 6;
    for (id, text) in [("no-stream-usage", &content), ("no-usage-whole", &whole_content)] {
        let r = record(&store, id).await?;
        assert_eq!(r.outcome, Outcome::Ok, "{id}");
        assert!(r.estimated, "{id}");
        assert!(close(r.output_tokens, tokens(text), 10), "{id}: {} vs {}", r.output_tokens, tokens(text));
        assert!(close(r.input_tokens, expected_input, 10), "{id}: {} vs {expected_input}", r.input_tokens);
        assert_eq!(r.cost_nanos, r.input_tokens * INPUT_NANOS + r.output_tokens * OUTPUT_NANOS, "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn reported_usage_is_used_as_reported() -> anyhow::Result<()> {
    let mut s = setup(Behaviour { tokens: Some(7), ..Behaviour::default() }, |y| y).await?;
    let whole: Value = s.post(KEY, "reported-whole", &chat("Hi", false)).await?.json().await?;
    let mut body = chat("Hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = s.post(KEY, "reported-stream", &body).await?.text().await?;
    assert!(events.contains("\"completion_tokens\":7"), "{events}");
    let store = s.store().await?;
    for id in ["reported-whole", "reported-stream"] {
        let r = record(&store, id).await?;
        assert!(!r.estimated, "{id}");
        assert_eq!(r.input_tokens, whole["usage"]["prompt_tokens"].as_u64().unwrap_or_default(), "{id}");
        assert_eq!(r.output_tokens, 7, "{id}");
        assert_eq!(r.cost_nanos, r.input_tokens * INPUT_NANOS + 7 * OUTPUT_NANOS, "{id}");
    }
    Ok(())
}

#[tokio::test]
async fn bodies_are_logged_redacted_and_cut_for_keys_that_ask_only() -> anyhow::Result<()> {
    let logging = |y: String| {
        y.replace(
            "  secretRef: {name: client-key}",
            "  secretRef: {name: client-key}\n  logging: {bodies: true, maxBodyBytes: 2048}",
        ) + &api_key("quiet", "lw-quiet-key-0001")
    };
    let mut s = setup(Behaviour::default(), logging).await?;
    // The client's own key and a credential-looking member in the body; the
    // mock quotes the message back, so the key is in the answer too.
    let mut body = chat(&format!("my key is {KEY} and then {}", "words ".repeat(500)), false);
    body["messages"][0]["api_key"] = json!("sk-client-secret-0123");
    assert_eq!(s.post(KEY, "logged-whole", &body).await?.status(), StatusCode::OK);
    let streamed = s.post(KEY, "logged-stream", &chat("Tell me more", true)).await?;
    assert_eq!(streamed.status(), StatusCode::OK);
    streamed.text().await?;
    // The mock streams the quoted key as one event of its own and the text
    // around it in others: the secret is found in the joined deltas.
    let echoed = s.post(KEY, "logged-echo", &chat(&format!("again {KEY}"), true)).await?;
    assert!(echoed.text().await?.contains(KEY), "the client gets its answer unredacted");
    assert_eq!(s.post("lw-quiet-key-0001", "not-logged", &chat("hello", false)).await?.status(), StatusCode::OK);

    let store = s.store().await?;
    let whole = store
        .bodies(&record(&store, "logged-whole").await?.request_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no bodies stored"))?;
    assert!(whole.request.len() <= 2048 && whole.request_truncated, "{} bytes", whole.request.len());
    // (serde_json writes members in name order.)
    assert!(whole.request.starts_with(r#"{"messages":[{"api_key":"[REDACTED]","content":"#), "{}", whole.request);
    assert!(whole.request.contains("my key is [REDACTED]"), "{}", whole.request);
    assert!(whole.response.contains("You said: my key is [REDACTED]"), "{}", whole.response);
    assert!(!whole.response_truncated);
    let stream = store
        .bodies(&record(&store, "logged-stream").await?.request_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no stream bodies"))?;
    assert!(stream.response.starts_with("data: {"), "the SSE text: {}", stream.response);
    assert!(stream.response.contains(r#""content":"This "#), "{}", stream.response);
    assert!(stream.response.len() <= 2048 && stream.response_truncated, "{} bytes", stream.response.len());
    let echo = store
        .bodies(&record(&store, "logged-echo").await?.request_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no echo bodies"))?;
    assert!(echo.request.contains("again [REDACTED]"), "{}", echo.request);
    assert!(echo.response.starts_with("[REDACTED") && echo.response_truncated, "{}", echo.response);
    for b in [&whole, &stream, &echo] {
        for secret in [KEY, "sk-client-secret-0123", "sk-upstream-secret"] {
            assert!(!b.request.contains(secret) && !b.response.contains(secret), "{secret} was stored");
        }
    }
    assert_eq!(
        store.bodies(&record(&store, "not-logged").await?.request_id).await?,
        None,
        "a key without logging stores no bodies"
    );
    let r = record(&store, "not-logged").await?;
    assert_eq!(r.outcome, Outcome::Ok);
    Ok(())
}

#[tokio::test]
async fn a_namespaces_logging_applies_to_keys_without_their_own() -> anyhow::Result<()> {
    let policy = "---
apiVersion: llmweaver.io/v1alpha1
kind: NamespacePolicy
metadata: {name: default, namespace: team-a}
spec:
  logging: {bodies: true, maxBodyBytes: 4096}
";
    // `checkout` sets no logging: the namespace's applies. `quiet` turns it off.
    let quiet = api_key("quiet", "lw-quiet-key-0001").replace("spec: {}", "spec: {logging: {bodies: false}}");
    let mut s = setup(Behaviour::default(), |y| y + policy + &quiet).await?;
    assert_eq!(s.post(KEY, "namespace-logged", &chat("hello from the team", false)).await?.status(), StatusCode::OK);
    assert_eq!(s.post("lw-quiet-key-0001", "opted-out", &chat("hello", false)).await?.status(), StatusCode::OK);
    let store = s.store().await?;
    let logged = store
        .bodies(&record(&store, "namespace-logged").await?.request_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no bodies stored"))?;
    assert!(logged.request.contains("hello from the team"), "{}", logged.request);
    assert!(logged.response.contains("You said: hello from the team"), "{}", logged.response);
    assert_eq!(
        store.bodies(&record(&store, "opted-out").await?.request_id).await?,
        None,
        "a key's own logging overrides its namespace's"
    );
    Ok(())
}
