//! The Grafana dashboards against a real Prometheus: the operator and two
//! gateways (with the mock upstream: one healthy channel, one that answers
//! 500) on the test control plane, driven with plain, streamed, failing and
//! budget-refused requests, scraped every second; then every panel's query of
//! every dashboard in `config/grafana/` (read from the JSON, the template
//! variables set to "All") must return data, and every template variable must
//! have values. Needs `prometheus` on PATH (`make setup`) and the control
//! plane (`make e2e`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use weaver_e2e::bed::{Bed, Setup, UPSTREAM_CREDS, api_key};
use weaver_e2e::gateway::eventually_within;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::prometheus::Prometheus;

/// How long load is driven before a panel without data fails the test:
/// generous, for a loaded CI machine.
const DEADLINE: Duration = Duration::from_secs(180);

/// What Grafana puts for the variables when "All" is selected, and the rate
/// window (`$__rate_interval` is four scrape intervals at least; a minute
/// holds enough 1 s scrapes on a slow machine).
const SUBSTITUTIONS: [(&str, &str); 4] =
    [("$__rate_interval", "1m"), ("$namespace", ".*"), ("$model", ".*"), ("$channel", ".*")];

fn channel(name: &str, upstream: &str, models: &[&str]) -> String {
    let models: String = models
        .iter()
        .map(|m| format!("    - name: {m}\n      pricing: {{inputPerMillion: \"0.15\", outputPerMillion: \"0.60\"}}\n"))
        .collect();
    format!(
        "---\napiVersion: llmweaver.io/v1alpha1\nkind: Channel\nmetadata: {{name: {name}, labels: {{tier: {name}}}}}\n\
         spec:\n  provider: openai\n  baseUrl: {upstream}\n  credentials: {{secretRef: {{name: upstream-creds}}}}\n  models:\n{models}"
    )
}

/// `primary` serves `gpt-4o-mini`; `broken` (every answer a 500) serves it
/// too, so its failures are retried on `primary` and it gets ejected, and
/// alone serves `gpt-4o`, whose requests fail. Key `app` has a budget with
/// low alert thresholds, key `capped` one too small for any request, and the
/// namespace a NamespacePolicy budget.
fn manifests(good: &str, bad: &str) -> String {
    let policy = "---\napiVersion: llmweaver.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: default}\n\
                  spec: {models: [\"gpt-4o*\"], channels: [{selector: {matchLabels: {tier: primary}}}, \
                  {selector: {matchLabels: {tier: broken}}}]}\n";
    let namespace_policy = "---\napiVersion: llmweaver.io/v1alpha1\nkind: NamespacePolicy\nmetadata: {name: default}\n\
                            spec: {budget: {amount: \"5.00\", period: monthly}}\n";
    UPSTREAM_CREDS.to_owned()
        + &channel("primary", good, &["gpt-4o-mini"])
        + &channel("broken", bad, &["gpt-4o-mini", "gpt-4o"])
        + policy
        + namespace_policy
        + &api_key(
            "app",
            r#"{allowedModels: ["gpt-4o*"], budget: {amount: "0.01", period: total, alertThresholds: [1, 50, 80, 100]}}"#,
        )
        + &api_key("capped", r#"{allowedModels: ["gpt-4o*"], budget: {amount: "0.000001", period: total}}"#)
}

/// Every dashboard's panel queries (title, expression) and template
/// variables (name, `label_values` metric and label).
struct Dashboards {
    queries: Vec<(String, String)>,
    variables: Vec<(String, String, String)>,
}

fn dashboards() -> anyhow::Result<Dashboards> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/grafana");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut out = Dashboards { queries: Vec::new(), variables: Vec::new() };
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "json")) {
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
        let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
        assert!(
            variables.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
            "{name}: no DS_PROMETHEUS datasource variable"
        );
        for v in variables.iter().filter(|v| v["type"] == "query") {
            let definition = v["definition"].as_str().unwrap_or_default();
            let inner = definition.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')'));
            let Some((metric, label)) = inner.and_then(|i| i.split_once(", ")) else {
                anyhow::bail!("{name}: variable {} is not label_values(metric, label): {definition}", v["name"]);
            };
            out.variables.push((
                format!("{name} ${}", v["name"].as_str().unwrap_or_default()),
                metric.into(),
                label.into(),
            ));
        }
        for panel in dashboard["panels"].as_array().into_iter().flatten().filter(|p| p["type"] != "row") {
            let title = format!("{name}: {}", panel["title"].as_str().unwrap_or_default());
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: not on the DS_PROMETHEUS variable");
            assert!(panel["fieldConfig"]["defaults"]["unit"].is_string(), "{title}: no unit");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let mut expr = target["expr"].as_str().unwrap_or_default().to_owned();
                for (from, to) in SUBSTITUTIONS {
                    expr = expr.replace(from, to);
                }
                assert!(!expr.contains('$'), "{title}: a variable the test does not know: {expr}");
                out.queries.push((format!("{title} [{}]", target["refId"].as_str().unwrap_or_default()), expr));
            }
        }
    }
    anyhow::ensure!(out.queries.len() > 40, "only {} panel queries found in {}", out.queries.len(), dir.display());
    Ok(out)
}

/// One round of traffic through gateway `i`: plain and streamed chats,
/// embeddings, chats of a model only the broken channel serves, and a
/// request the capped key's budget refuses.
async fn drive(bed: &Bed, i: usize, key: &str, capped: &str) -> anyhow::Result<BTreeMap<u16, usize>> {
    let base = bed.gateway(i);
    let mut seen = BTreeMap::new();
    let chat = |model: &str, stream: bool| json!({"model": model, "messages": [{"role": "user", "content": "Say hi"}], "stream": stream, "max_tokens": 50});
    let requests = [
        (key, "/v1/chat/completions", chat("gpt-4o-mini", false)),
        (key, "/v1/chat/completions", chat("gpt-4o-mini", true)),
        (key, "/v1/chat/completions", chat("gpt-4o-mini", true)),
        (key, "/v1/embeddings", json!({"model": "gpt-4o-mini", "input": "hello"})),
        (key, "/v1/chat/completions", chat("gpt-4o", false)),
        (capped, "/v1/chat/completions", chat("gpt-4o-mini", false)),
    ];
    for (key, path, body) in requests {
        let response = bed.http.post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await?;
        *seen.entry(response.status().as_u16()).or_default() += 1;
        // Streams are read to their end, so they are metered as complete.
        response.bytes().await?;
    }
    Ok(seen)
}

#[tokio::test]
#[ignore = "needs the test control plane and prometheus (make e2e)"]
async fn every_dashboard_panel_has_data_from_a_real_prometheus() -> anyhow::Result<()> {
    let dashboards = dashboards()?;
    let good = MockUpstream::start(Behaviour { latency: Duration::from_millis(5), ..Behaviour::default() }).await?;
    let bad = MockUpstream::start(Behaviour { error_status: Some(500), ..Behaviour::default() }).await?;
    let mut setup = Setup::new(good);
    setup.manifests = manifests(&setup.upstream.base_url(), &bad.base_url());
    let bed = Bed::start(setup).await?;
    let key = bed.issued_key("app").await?;
    let capped = bed.issued_key("capped").await?;
    bed.until_all(&key, "gpt-4o-mini", reqwest::StatusCode::OK).await?;

    let host = |url: String| url.trim_start_matches("http://").to_owned();
    let mut targets = vec![("operator", host(bed.operator_metrics()))];
    for i in 0..bed.gateways.len() {
        targets.push(("gateway", host(bed.gateway_admin(i))));
    }
    let prometheus = Prometheus::start(bed.dir.path(), &targets).await?;

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut round = 0;
    let every = Duration::from_millis(500);
    let data = eventually_within("every dashboard query returns data", DEADLINE, every, async || {
        for (status, n) in drive(&bed, round % bed.gateways.len(), &key, &capped).await? {
            *statuses.entry(status).or_default() += n;
        }
        round += 1;
        let mut missing = Vec::new();
        for (title, expr) in &dashboards.queries {
            if prometheus.query(expr).await?.is_empty() {
                missing.push(format!("{title}: {expr}"));
            }
        }
        for (title, metric, label) in &dashboards.variables {
            if prometheus.label_values(metric, label).await?.is_empty() {
                missing.push(format!("{title}: label_values({metric}, {label})"));
            }
        }
        Ok(if missing.is_empty() {
            ControlFlow::Break(())
        } else {
            let seen = format!("after {round} rounds ({statuses:?}) these returned no data:\n{}", missing.join("\n"));
            ControlFlow::Continue(seen)
        })
    })
    .await;
    if let Err(e) = data {
        anyhow::bail!("{e}\n(targets {:?})", prometheus.targets().await?);
    }
    // The traffic was what the panels claim to show.
    assert!(statuses.get(&200).is_some_and(|n| *n > 0), "no successful request: {statuses:?}");
    assert!(statuses.get(&502).is_some_and(|n| *n > 0), "no failed request: {statuses:?}");
    assert!(statuses.get(&429).is_some_and(|n| *n > 0), "no budget refusal: {statuses:?}");
    // The variables offer what the test configured.
    assert!(prometheus.label_values("weaver_gateway_requests_total", "namespace").await?.contains(&bed.ns));
    let channels = prometheus.label_values("weaver_gateway_upstream_attempts_total", "channel").await?;
    assert!(channels.contains(&"primary".to_owned()) && channels.contains(&"broken".to_owned()), "{channels:?}");
    Ok(())
}
