//! Nothing metered is lost when the usage store goes away: the real gateway
//! binary writing into a real Postgres that is stopped under load, and a
//! gateway killed with SIGKILL while its records wait in the spool.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use weaver_e2e::cluster::{Process, binary};
use weaver_e2e::fixtures::{KEY, openai_namespace};
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::postgres::PgCluster;
use weaver_e2e::records;
use weaver_store::{RecordFilter, Store, StoreOptions, UsageFilter, UsageStore as _};

/// How long the database stays away while requests keep coming (the figure).
const OUTAGE: Duration = Duration::from_secs(30);
/// How long catching up after an outage may take before the test fails.
const DRAIN: Duration = Duration::from_secs(60);

/// Starts the gateway binary on `manifests`, metering into `store`, with its
/// spool in `data`.
async fn gateway(manifests: &Path, store: &str, data: &Path, log: &Path) -> anyhow::Result<Process> {
    let args: Vec<String> = [
        "--manifests",
        &manifests.to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--data-dir",
        &data.to_string_lossy(),
        "--log-format",
        "json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    Process::start(&binary("weaver-gateway")?, &args, &[], log.to_path_buf()).await
}

/// One sample of the gateway's metrics, 0 when absent.
async fn metric(http: &reqwest::Client, admin: &str, name: &str) -> anyhow::Result<f64> {
    let text = http.get(format!("http://{admin}/metrics")).send().await?.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0))
}

/// Waits until `condition` holds, for at most `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends one chat request; the request id the gateway answered with when it
/// succeeded, an error otherwise.
async fn chat(http: &reqwest::Client, addr: &str, stream: bool) -> anyhow::Result<String> {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": stream});
    let response = http.post(format!("http://{addr}/v1/chat/completions")).bearer_auth(KEY).json(&body).send().await?;
    anyhow::ensure!(response.status().is_success(), "status {}", response.status());
    let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    response.bytes().await?;
    Ok(id)
}

/// Requests counted in the store's rollups (cheap to poll).
async fn stored_count(store: &Store) -> anyhow::Result<usize> {
    let rows = store.summary(&UsageFilter::default(), &[]).await?;
    Ok(rows.iter().map(|r| r.requests).sum::<u64>() as usize)
}

/// Asserts the store holds exactly `expected` (each id once).
async fn assert_exactly(store: &Store, expected: &HashSet<String>) -> anyhow::Result<()> {
    records::ensure_exactly(&records::all(store, &RecordFilter::default()).await?, expected)
}

struct Bed {
    _upstream: MockUpstream,
    dir: tempfile::TempDir,
    pg: PgCluster,
    http: reqwest::Client,
}

impl Bed {
    async fn new() -> anyhow::Result<Bed> {
        // reqwest is built without a default TLS provider; this test speaks plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let upstream = MockUpstream::start(Behaviour { tokens: Some(3), ..Behaviour::default() }).await?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("manifests"))?;
        std::fs::write(dir.path().join("manifests/config.yaml"), openai_namespace(&upstream.base_url(), ""))?;
        Ok(Bed { _upstream: upstream, dir, pg: PgCluster::up()?, http: reqwest::Client::new() })
    }

    async fn gateway(&self, log: &str) -> anyhow::Result<Process> {
        let p = self.dir.path();
        gateway(&p.join("manifests"), &self.pg.url, &p.join("data"), &p.join(log)).await
    }

    fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::connect(&self.pg.url, StoreOptions::default())?)
    }
}

#[tokio::test]
async fn a_postgres_outage_under_load_loses_no_record_and_stores_none_twice() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    let gw = bed.gateway("gateway.log").await?;
    let (addr, admin) = (gw.addr("addr"), gw.addr("admin_addr"));

    // Steady load from four clients, plain and streamed, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (http, addr, stop) = (bed.http.clone(), addr.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ids, mut failures) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match chat(&http, &addr, i % 2 == 0).await {
                        Ok(id) => ids.push(id),
                        Err(e) => failures.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ids, failures)
            })
        })
        .collect();

    let stored = "weaver_gateway_usage_records_stored_total ";
    let spooled = "weaver_gateway_usage_records_spooled_total ";
    within(DRAIN, "records stored before the outage", || async { Ok(metric(&bed.http, &admin, stored).await? > 0.0) })
        .await?;
    bed.pg.stop()?;
    within(DRAIN, "records spooled during the outage", || async {
        Ok(metric(&bed.http, &admin, spooled).await? > 0.0)
    })
    .await?;
    tokio::time::sleep(OUTAGE).await;
    let spooled_in_outage = metric(&bed.http, &admin, spooled).await?;
    let stored_in_outage = metric(&bed.http, &admin, stored).await?;
    bed.pg.start()?;
    // The store answers again: the load goes on until new records reach it.
    within(DRAIN, "records stored after the outage", || async {
        Ok(metric(&bed.http, &admin, stored).await? > stored_in_outage)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut sent = HashSet::new();
    for client in clients {
        let (ids, failures) = client.await?;
        assert_eq!(failures, Vec::<String>::new(), "the gateway served throughout the outage");
        sent.extend(ids);
    }
    assert!(spooled_in_outage > 100.0, "load ran during the outage: {spooled_in_outage} records spooled");
    println!("{} requests served, {spooled_in_outage} records spooled during the {OUTAGE:?} outage", sent.len());

    let store = bed.store()?;
    within(DRAIN, "the spool replayed", || async { Ok(stored_count(&store).await? >= sent.len()) }).await?;
    assert_exactly(&store, &sent).await
}

#[tokio::test]
async fn records_spooled_by_a_gateway_killed_with_sigkill_reach_the_store_after_restart() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    bed.pg.stop()?;
    let gw = bed.gateway("first.log").await?;
    let (addr, admin) = (gw.addr("addr"), gw.addr("admin_addr"));
    let mut sent = HashSet::new();
    for i in 0..200 {
        sent.insert(chat(&bed.http, &addr, i % 2 == 0).await?);
    }
    // Records are safe once spooled (fsync'ed); only then is the process killed.
    within(DRAIN, "every record spooled", || async {
        Ok(metric(&bed.http, &admin, "weaver_gateway_usage_records_spooled_total ").await? == 200.0)
    })
    .await?;
    gw.kill().await?;

    bed.pg.start()?;
    let gw = bed.gateway("second.log").await?;
    let store = bed.store()?;
    let admin = gw.addr("admin_addr");
    within(DRAIN, "the spool replayed by the next process", || async {
        Ok(metric(&bed.http, &admin, "weaver_gateway_usage_spool_bytes ").await? == 0.0
            && stored_count(&store).await? >= sent.len())
    })
    .await?;
    assert_exactly(&store, &sent).await
}
