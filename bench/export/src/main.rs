//! The usage export through the real gateway binary over HTTP: fills a store
//! with N records (Postgres and SQLite), starts `weaver-gateway` on it, streams
//! `GET /admin/v1/usage/export` (JSON Lines, then CSV) and prints records/s and
//! the gateway's peak resident memory (`VmHWM`) before and after each export.
//! A benchmark, not a test: it prints figures and asserts only that every
//! record arrived.
//!
//! ```sh
//! cargo build --release -p weaver-gateway -p weaver-bench-export
//! eval "$(e2e/postgres up)"
//! target/release/weaver-bench-export            # --records 100000 --stores sqlite,postgres
//! ```
//!
//! `--fill URL` only fills that store and exits: the usage UI's
//! million-record timings (`make ui-bench`) seed their gateway with it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use futures_util::StreamExt as _;
use weaver_store::{AttemptRecord, Outcome, Store, StoreOptions, UsageRecord, UsageStore as _, now_ms};

#[derive(Debug, Parser)]
#[command(name = "weaver-bench-export")]
struct Args {
    /// Records put in each store.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Stores to measure: sqlite, postgres (Postgres needs WEAVER_TEST_POSTGRES_URL).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    stores: Vec<String>,
    /// The gateway binary (default: release/weaver-gateway under $CARGO_TARGET_DIR or ./target).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Only fill this store (`sqlite://PATH` or `postgres://...`) with the
    /// records (spread over the last 3 days), print how long it took and exit.
    #[arg(long, value_name = "URL")]
    fill: Option<String>,
}

const TOKEN: &str = "bench-admin-token";

/// One demo channel and key: the gateway only needs something to load.
const MANIFESTS: &str = r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {name: demo, namespace: default}
spec:
  provider: mock
  models: [{name: demo-chat}]
"#;

fn record(i: usize, now: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("bench-{now}-{i:09}"),
        client_request_id: None,
        // Spread over the last 3 days, several records per millisecond.
        time: now - (i as i64 * 2_593) % (3 * 86_400_000),
        namespace: ["team-a", "team-b"][i % 2].into(),
        api_key: format!("key-{}", i % 20).into(),
        channel: Some(["openai", "azure"][i % 2].into()),
        model: ["gpt-4o", "gpt-4o-mini", "claude"][i % 3].into(),
        upstream_model: "gpt-4o-2024-08-06".into(),
        status: 200,
        outcome: Outcome::Ok,
        input_tokens: 1_000 + (i as u64 % 500),
        output_tokens: 200 + (i as u64 % 300),
        cached_input_tokens: 100,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
        cost_nanos: 123_456 + i as u64,
        duration_ms: 100 + (i as u64 * 7919) % 5_000,
        ttft_ms: Some(80),
        replica: "gw-0".into(),
        attempts: vec![AttemptRecord { channel: "openai".into(), status: 200, error: None, ttft_ms: Some(80) }],
        bodies: None,
    }
}

/// A fresh Postgres database for this run.
async fn postgres_url() -> anyhow::Result<String> {
    let url = std::env::var("WEAVER_TEST_POSTGRES_URL")
        .context("WEAVER_TEST_POSTGRES_URL is not set: eval \"$(e2e/postgres up)\" first, or pass --stores sqlite")?;
    let admin = Store::connect(&url, StoreOptions::default())?;
    let Store::Postgres(pg) = &admin else { bail!("WEAVER_TEST_POSTGRES_URL is not a postgres:// URL") };
    let name = format!("weaver_bench_export_{}", std::process::id());
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}")).execute(pg.pool()).await?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(pg.pool()).await?;
    let (base, _) = url.rsplit_once('/').context("URL with a database")?;
    Ok(format!("{base}/{name}"))
}

async fn fill(url: &str, n: usize) -> anyhow::Result<Duration> {
    let store = Store::connect(url, StoreOptions::default())?;
    store.migrate().await?;
    let now = now_ms();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<UsageRecord> = chunk.iter().map(|&i| record(i, now)).collect();
        store.insert_batch(&batch).await?;
    }
    Ok(started.elapsed())
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
    };
    Ok((field("VmHWM:").context("no VmHWM")?, field("VmRSS:").context("no VmRSS")?))
}

struct Export {
    records: usize,
    bytes: u64,
    took: Duration,
}

async fn export(client: &reqwest::Client, admin: SocketAddr, format: &str) -> anyhow::Result<Export> {
    let started = Instant::now();
    let response = client
        .get(format!("http://{admin}/admin/v1/usage/export?format={format}"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .error_for_status()?;
    let mut stream = response.bytes_stream();
    let (mut lines, mut bytes) = (0usize, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    // CSV has a header line; no field of these records holds a newline.
    let records = if format == "csv" { lines.saturating_sub(1) } else { lines };
    Ok(Export { records, bytes, took: started.elapsed() })
}

async fn measure(kind: &str, gateway: &Path, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    std::fs::write(manifests.join("demo.yaml"), MANIFESTS)?;
    let data = dir.path().join("data");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN)?;
    let url = match kind {
        "sqlite" => format!("sqlite://{}", data.join("usage.db").display()),
        "postgres" => postgres_url().await?,
        other => bail!("unknown store {other:?}: sqlite or postgres"),
    };
    let filled = fill(&url, n).await?;
    println!("{kind}: {n} records written in {:.1} s", filled.as_secs_f64());

    let (listen, admin) = (free_port()?, free_port()?);
    let log = std::fs::File::create(dir.path().join("gateway.log"))?;
    let mut child = tokio::process::Command::new(gateway)
        .args(["--manifests".as_ref(), manifests.as_os_str()])
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
        .args(["--data-dir".as_ref(), data.as_os_str()])
        .args(["--store", &url, "--log-format", "text"])
        .args(["--admin-token-file".as_ref(), token.as_os_str()])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", gateway.display()))?;
    let pid = child.id().context("the gateway exited at once")?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("http://{admin}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        ensure!(Instant::now() < deadline, "the gateway did not get ready; see {}", dir.path().display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (hwm, rss) = memory_kib(pid)?;
    println!("{kind}: gateway ready: VmHWM {:.1} MiB, VmRSS {:.1} MiB", hwm as f64 / 1024.0, rss as f64 / 1024.0);
    for format in ["jsonl", "csv"] {
        let e = export(&client, admin, format).await?;
        ensure!(e.records == n, "{format}: {} records exported, {n} expected", e.records);
        let (hwm, rss) = memory_kib(pid)?;
        println!(
            "{kind}: export {format:5}: {} records, {:.1} MiB in {:.2} s = {:.0} records/s; after: VmHWM {:.1} MiB, VmRSS {:.1} MiB",
            e.records,
            e.bytes as f64 / 1_048_576.0,
            e.took.as_secs_f64(),
            e.records as f64 / e.took.as_secs_f64(),
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0,
        );
    }
    child.kill().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // reqwest is built without a default TLS provider (the workspace picks ring);
    // the bench speaks plain HTTP, but the client wants one all the same.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(url) = &args.fill {
        let took = fill(url, args.records).await?;
        println!("{} records written in {:.1} s", args.records, took.as_secs_f64());
        return Ok(());
    }
    let gateway = args.gateway.unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
        target.join("release").join("weaver-gateway")
    });
    ensure!(gateway.exists(), "{} is missing: cargo build --release -p weaver-gateway", gateway.display());
    for kind in &args.stores {
        measure(kind, &gateway, args.records).await?;
    }
    Ok(())
}
