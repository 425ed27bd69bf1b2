//! Scale check (a benchmark, not a CI test): 10,000 ApiKeys and 1,000 Channels
//! in a real API server, one operator and two gateways. Prints the snapshot
//! build time and size, and the time from one `apply` to both gateways
//! serving the new version. Run with `bench/scale`.
//!
//! With `WEAVER_TEST_POSTGRES_URL` set (`bench/scale` starts a throwaway
//! Postgres), the operator reads usage from that store and the bench then
//! writes one usage record for every key and times how long the operator
//! takes to write the 10,000 changed ApiKey statuses.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use weaver_crds::{ApiKey, Channel};
use weaver_e2e::cluster::{Cluster, Process, binary};

const CHANNELS: usize = 1_000;
const KEYS: usize = 10_000;
const CHANGES: usize = 5;

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else { return -1.0 };
    let text = r.text().await.unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = cluster.namespace("scale").await?;
    let dir = tempfile::tempdir()?;
    println!("creating {CHANNELS} Channels and {KEYS} ApiKeys (+ their Secrets) in {ns}...");
    let created = Instant::now();
    let pp = PatchParams::apply("weaver-scale").force();
    let channels: Api<Channel> = Api::namespaced(cluster.client.clone(), &ns);
    futures_util::stream::iter(0..CHANNELS)
        .map(|i| {
            let (api, pp) = (channels.clone(), pp.clone());
            async move {
                let c = serde_json::json!({
                    "apiVersion": "llmweaver.io/v1alpha1", "kind": "Channel",
                    "metadata": {"name": format!("ch-{i}"), "labels": {"shard": format!("s{}", i % 10)}},
                    "spec": {"provider": "mock", "weight": 1 + i % 100, "models": [
                        {"name": format!("model-{}", i % 50), "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"}},
                        {"name": "shared-model"}
                    ]}
                });
                api.patch(&format!("ch-{i}"), &pp, &Patch::Apply(&c)).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    let keys: Api<ApiKey> = Api::namespaced(cluster.client.clone(), &ns);
    futures_util::stream::iter(0..KEYS)
        .map(|i| {
            let (secrets, keys, pp) = (secrets.clone(), keys.clone(), pp.clone());
            async move {
                let s = serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("key-{i}")},
                    "stringData": {"apiKey": format!("lw-scale-key-{i:08}-0123456789abcdef")}
                });
                secrets.patch(&format!("key-{i}"), &pp, &Patch::Apply(&s)).await?;
                let k = serde_json::json!({
                    "apiVersion": "llmweaver.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": format!("key-{i}")},
                    "spec": {"secretRef": {"name": format!("key-{i}")}, "allowedModels": ["model-*", "shared-*"]}
                });
                keys.patch(&format!("key-{i}"), &pp, &Patch::Apply(&k)).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    println!("created in {:.1?}", created.elapsed());

    let mut args: Vec<String> =
        ["--listen", "127.0.0.1:0", "--watch-namespace", &ns].iter().map(|s| s.to_string()).collect();
    let store_url = std::env::var("WEAVER_TEST_POSTGRES_URL").ok();
    if let Some(url) = &store_url {
        args.extend(["--store".to_owned(), url.clone()]);
    }
    let operator = cluster.operator(&ns, "scale", &args, dir.path().join("operator.log")).await?;
    let op_metrics = format!("http://{}", operator.addr("metrics_addr"));
    let token = cluster.gateway_token(&ns, "gateway", true).await?;
    std::fs::write(dir.path().join("token"), token)?;
    let started = Instant::now();
    let http = reqwest::Client::new();
    while metric(&http, &op_metrics, "weaver_operator_snapshot_version").await <= 0.0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "no snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(dir.path().join("ca.pem"), cluster.operator_ca(&ns).await?)?;
    let mut gateways = Vec::new();
    let mut processes = Vec::new();
    for i in 0..2 {
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let args = vec![
            "--operator".into(),
            format!("https://{}", operator.addr("addr")),
            "--operator-ca".into(),
            p("ca.pem"),
            "--token-file".into(),
            p("token"),
            "--cache-file".into(),
            p(&format!("cache-{i}.json")),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--log-format".into(),
            "json".into(),
        ];
        let g = Process::start(&binary("weaver-gateway")?, &args, &[], dir.path().join(format!("gw-{i}.log"))).await?;
        gateways.push(format!("http://{}", g.addr("admin_addr")));
        processes.push(g);
    }
    let mut took = Vec::new();
    for change in 0..CHANGES {
        let before = metric(&http, &op_metrics, "weaver_operator_snapshot_version").await;
        let applied = Instant::now();
        let patch = serde_json::json!({"spec": {"weight": 500 + change}});
        channels.patch("ch-0", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        loop {
            let version = metric(&http, &op_metrics, "weaver_operator_snapshot_version").await;
            let mut all = version > before;
            for g in &gateways {
                all &= metric(&http, g, "weaver_gateway_snapshot_version").await == version;
            }
            if all {
                break;
            }
            anyhow::ensure!(applied.elapsed() < Duration::from_secs(60), "gateways never acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(applied.elapsed());
    }
    took.sort();
    let log = std::fs::read_to_string(&operator.log)?;
    let last = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "snapshot published")
        .unwrap_or_default();
    println!("\nScale: {CHANNELS} Channels, {KEYS} ApiKeys, {KEYS} Secrets, 2 gateways");
    println!("snapshot build (compile, last change): {} ms   [goal < 200 ms]", last["took_ms"]);
    println!("snapshot size: {:.1} MiB", last["bytes"].as_f64().unwrap_or_default() / 1048576.0);
    println!(
        "apply -> both gateways serving the new version: median {:?}, max {:?} over {CHANGES} changes   [goal < 1 s]",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    if let Some(url) = &store_url {
        status_writes(&http, &op_metrics, url, &ns).await?;
    }
    for p in processes {
        p.kill().await?;
    }
    operator.kill().await?;
    Ok(())
}

/// One usage record per key, then the time until the operator has written
/// every key's changed status.
async fn status_writes(http: &reqwest::Client, op_metrics: &str, url: &str, ns: &str) -> anyhow::Result<()> {
    use weaver_store::{Outcome, Store, StoreOptions, UsageRecord, UsageStore};
    let passes = "weaver_operator_status_pass_seconds_count";
    let writes = "weaver_operator_status_writes_total";
    // The start-up passes (conditions of every object) are done when a pass
    // writes nothing.
    let started = Instant::now();
    loop {
        let (p0, w0) = (metric(http, op_metrics, passes).await, metric(http, op_metrics, writes).await);
        while metric(http, op_metrics, passes).await <= p0 {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "no status pass");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if metric(http, op_metrics, writes).await == w0 {
            break;
        }
    }
    let store = Store::connect(url, StoreOptions::default())?;
    store.migrate().await?;
    let now = weaver_store::now_ms();
    let records: Vec<UsageRecord> = (0..KEYS)
        .map(|i| UsageRecord {
            request_id: format!("{ns}-{i}"),
            client_request_id: None,
            time: now,
            namespace: ns.into(),
            api_key: format!("key-{i}").into(),
            channel: Some(format!("ch-{}", i % CHANNELS).into()),
            model: "shared-model".into(),
            upstream_model: "shared-model".into(),
            status: 200,
            outcome: Outcome::Ok,
            input_tokens: 100,
            output_tokens: 10,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            estimated: false,
            cost_nanos: 1_000,
            duration_ms: 100,
            ttft_ms: Some(10),
            replica: "scale".into(),
            attempts: Vec::new(),
            bodies: None,
        })
        .collect();
    let (sum0, w0) = (
        metric(http, op_metrics, "weaver_operator_status_pass_seconds_sum").await,
        metric(http, op_metrics, writes).await,
    );
    for chunk in records.chunks(1_000) {
        store.insert_batch(chunk).await?;
    }
    let inserted = Instant::now();
    let want = (KEYS + CHANNELS) as f64;
    while metric(http, op_metrics, writes).await - w0 < want {
        anyhow::ensure!(inserted.elapsed() < Duration::from_secs(600), "statuses not written in 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = inserted.elapsed();
    // Wait for the pass that wrote them to end, for its duration.
    let p0 = metric(http, op_metrics, passes).await;
    while metric(http, op_metrics, passes).await <= p0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pass = metric(http, op_metrics, "weaver_operator_status_pass_seconds_sum").await - sum0;
    println!(
        "usage store -> status: {KEYS} changed ApiKey + {CHANNELS} Channel statuses written {took:.1?} after \
         the records were inserted (status passes in between: {pass:.1} s in total)"
    );
    Ok(())
}
