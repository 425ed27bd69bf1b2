//! What must hold across replicas, with every part a real process over the
//! test control plane: cluster-mode gateways, operator replicas electing a
//! leader, one Postgres. Run with `make e2e` (it starts the plane and the
//! Postgres).
//!
//! - Usage: two gateways write one Postgres while two keys send plain,
//!   streamed, failed and abandoned requests through both, and the leading
//!   operator is killed (SIGKILL) mid-run. The store holds every request once;
//!   the usage API's summary (read from the leading operator with a token a
//!   namespaced Role grants, as a team's dashboard reads it) and the ApiKey
//!   status the new leader writes equal the records' sums, to the nano-dollar.
//! - Rate limits: clients hammer three gateways with one key for two minutes.
//!   Admitted requests stay within the bound the README states for the
//!   window and come close to it; the upstream never has more of the key's
//!   requests at once than its `maxConcurrent`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_crds::money::Usd;
use weaver_e2e::bed::{Bed, Setup, UPSTREAM_CREDS, WAIT, api_key, channel, store_url};
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::records;
use weaver_e2e::usage_reader::{UsageReader, team_token};
use weaver_store::{Outcome, RecordFilter, Store, StoreOptions, UsageFilter, UsageRecord, UsageStore as _};

/// Channel `primary` at `upstream` serving `gpt-4o-mini`, with timeouts no
/// loaded test machine reaches (a request the gateway gave up on could
/// linger at the upstream).
fn primary_channel(upstream: &str) -> String {
    UPSTREAM_CREDS.to_owned() + &channel("primary", upstream, "gpt-4o-mini", "timeouts: {firstByte: 60s, total: 120s}")
}

/// Requests sent before, during and after the failover.
const PER_PHASE: usize = 80;
/// Requests the usage test's clients have in flight at once.
const USAGE_CLIENTS: usize = 8;

/// What one request of the usage mix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Streamed,
    /// To a model whose upstream answers 500.
    Failed,
    /// A stream the client leaves after its first chunk.
    Abandoned,
}

impl Kind {
    /// Request `i` goes to gateway `i % 2` with key `(i / 2) % 2`, so every
    /// 16 requests hold each kind through each gateway for each key.
    fn of(i: usize) -> Kind {
        [Kind::Plain, Kind::Streamed, Kind::Failed, Kind::Abandoned][(i / 4) % 4]
    }
}

/// The clients of the usage test.
#[derive(Clone)]
struct Traffic {
    http: reqwest::Client,
    gateways: [String; 2],
    keys: [String; 2],
    ns: String,
    /// Requests finished so far.
    done: Arc<AtomicUsize>,
}

impl Traffic {
    /// The request id request `i` sends (`x-request-id`), which its record keeps.
    fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.ns)
    }

    /// Sends request `i` of the mix; fails on an answer its kind does not expect.
    async fn send(&self, i: usize) -> anyhow::Result<()> {
        let kind = Kind::of(i);
        let model = if kind == Kind::Failed { "gpt-4o-broken" } else { "gpt-4o-mini" };
        let stream = matches!(kind, Kind::Streamed | Kind::Abandoned);
        let body = json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": format!("Request number {i}")}]});
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.gateways[i % 2]))
            .bearer_auth(&self.keys[(i / 2) % 2])
            .header("x-request-id", self.id(i))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success() == (kind != Kind::Failed), "{kind:?} request {i} answered {status}");
        let mut body = response.bytes_stream();
        if kind == Kind::Abandoned {
            body.next().await;
        } else {
            while let Some(chunk) = body.next().await {
                chunk?;
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends requests `range`, [`USAGE_CLIENTS`] at a time; their ids.
    async fn run(&self, range: Range<usize>) -> anyhow::Result<Vec<String>> {
        futures_util::stream::iter(range.clone())
            .map(|i| self.send(i))
            .buffer_unordered(USAGE_CLIENTS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(range.map(|i| self.id(i)).collect())
    }
}

/// One key's usage: requests, errors (failed or refused), tokens, cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_nanos: u64,
}

/// The records' sums per ApiKey name.
fn totals_by_key(records: &[UsageRecord]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for r in records {
        let t = out.entry(r.api_key.to_string()).or_default();
        t.requests += 1;
        t.errors += u64::from(r.outcome.is_error());
        t.input_tokens += r.input_tokens;
        t.output_tokens += r.output_tokens;
        t.cost_nanos += r.cost_nanos;
    }
    out
}

/// The usage in ApiKey `name`'s status, as [`Totals`].
async fn status_totals(bed: &Bed, name: &str) -> Option<Totals> {
    let (requests, input_tokens, output_tokens, cost, errors) = bed.key_usage(name).await?;
    let cost_nanos = cost.parse::<Usd>().ok()?.0;
    Some(Totals { requests, errors: errors?, input_tokens, output_tokens, cost_nanos })
}

/// The ServiceAccount of the team's dashboard that reads the usage API.
const DASHBOARD: &str = "usage-dashboard";

/// The usage summary per ApiKey (`GET /admin/v1/usage/summary?group_by=key`)
/// of namespace `ns`, read from an operator replica by a caller whose RBAC
/// allows that namespace alone; its status and body when it does not answer
/// 200.
async fn summary_by_key(
    api: &UsageReader,
    token: &str,
    ns: &str,
) -> anyhow::Result<Result<BTreeMap<String, Totals>, String>> {
    let (status, summary) = api.get(Some(token), "/usage/summary?group_by=key").await?;
    if status != StatusCode::OK {
        return Ok(Err(format!("{status} {summary}")));
    }
    let mut out = BTreeMap::new();
    for row in summary["data"].as_array().into_iter().flatten() {
        anyhow::ensure!(row["namespace"] == ns, "a row of another namespace: {row}");
        let n = |field: &str| row[field].as_u64().unwrap_or_default();
        let cost = row["cost_usd"].as_str().unwrap_or_default().parse::<Usd>()?;
        let totals = Totals {
            requests: n("requests"),
            errors: n("errors"),
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cost_nanos: cost.0,
        };
        out.insert(row["api_key"].as_str().unwrap_or_default().to_owned(), totals);
    }
    Ok(Ok(out))
}

/// Waits until the store holds exactly the requests `sent` (each once), then
/// until the usage API's summary (read from `api` with `token`) and every
/// ApiKey's status equal the records' sums; returns the records.
async fn until_agreed(
    bed: &Bed,
    store: &Store,
    api: &UsageReader,
    token: &str,
    sent: &HashSet<String>,
) -> anyhow::Result<Vec<UsageRecord>> {
    let filter = RecordFilter {
        usage: UsageFilter { namespaces: vec![bed.ns.clone()], ..Default::default() },
        ..Default::default()
    };
    let started = Instant::now();
    let records = loop {
        // Gateways write in batches; an abandoned stream's record may wait
        // for its usage chunk a little.
        let records = records::all(store, &filter).await?;
        if records.len() >= sent.len() {
            records::ensure_exactly(&records, sent)?;
            break records;
        }
        anyhow::ensure!(started.elapsed() < WAIT, "{} of {} records reached the store", records.len(), sent.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want = totals_by_key(&records);
    let mut status = BTreeMap::new();
    // A fresh RoleBinding may take the API server a moment (and the
    // operator caches a refusal for 5 s).
    let mut summary = Err("not read".to_owned());
    while started.elapsed() < WAIT {
        summary = summary_by_key(api, token, &bed.ns).await?;
        status.clear();
        for name in want.keys() {
            if let Some(t) = status_totals(bed, name).await {
                status.insert(name.clone(), t);
            }
        }
        if summary.as_ref() == Ok(&want) && status == want {
            return Ok(records);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the records sum to {want:?}; the summary says {summary:?}; ApiKey status says {status:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn usage_agrees_across_gateways_sharing_postgres_and_a_leader_failover() -> anyhow::Result<()> {
    let url = store_url()?;
    let store = Store::connect(&url, StoreOptions::default())?;
    store.migrate().await?;
    // Streams long enough that a client leaving after the first chunk leaves
    // mid-stream.
    let healthy = MockUpstream::start(Behaviour {
        tokens: Some(40),
        chunk_delay: Duration::from_millis(10),
        ..Behaviour::default()
    })
    .await?;
    let broken = MockUpstream::start(Behaviour { error_status: Some(500), ..Behaviour::default() }).await?;
    let mut setup = Setup::new(healthy);
    setup.manifests = primary_channel(&setup.upstream.base_url())
        + &channel("failing", &broken.base_url(), "gpt-4o-broken", "")
        + &api_key("alpha", "{}")
        + &api_key("beta", "{}");
    setup.standby = true;
    setup.operator_store = Some(url.clone());
    setup.gateway_store = Some(url.clone());
    let mut bed = Bed::start(setup).await?;
    let keys = [bed.issued_key("alpha").await?, bed.issued_key("beta").await?];
    // Listing the models is a request too, with a record.
    let mut sent = HashSet::new();
    for key in &keys {
        sent.extend(bed.until_served(key).await?);
    }
    let traffic = Traffic {
        http: reqwest::Client::new(),
        gateways: [bed.gateway(0), bed.gateway(1)],
        keys,
        ns: bed.ns.clone(),
        done: Arc::default(),
    };
    // The team's dashboard reads the usage API from the leading operator.
    let token = team_token(&bed.cluster, &bed.ns, DASHBOARD).await?;
    let ca = std::fs::read(bed.path("ca.pem"))?;
    let leader = UsageReader::new(&bed.operator_url(), &ca)?;

    // The first leader's summary and status agree with the records.
    sent.extend(traffic.run(0..PER_PHASE).await?);
    until_agreed(&bed, &store, &leader, &token, &sent).await?;

    // It dies while requests run; the standby takes the lease.
    let during = tokio::spawn({
        let traffic = traffic.clone();
        async move { traffic.run(PER_PHASE..2 * PER_PHASE).await }
    });
    let started = Instant::now();
    while traffic.done.load(Ordering::Relaxed) < PER_PHASE + PER_PHASE / 4 {
        anyhow::ensure!(started.elapsed() < WAIT, "the requests during the failover did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(leader) = bed.operator.take() {
        leader.kill().await?;
    }
    let failover = bed.until_leader("operator-1").await?;
    sent.extend(during.await??);
    sent.extend(traffic.run(2 * PER_PHASE..3 * PER_PHASE).await?);

    // Everything since the first check, the new leader alone has counted;
    // the dashboard now reads it.
    let leader = UsageReader::new(&bed.standby_url(), &ca)?;
    let records = until_agreed(&bed, &store, &leader, &token, &sent).await?;
    let outcomes: HashSet<Outcome> = records.iter().map(|r| r.outcome).collect();
    for outcome in [Outcome::Ok, Outcome::UpstreamError, Outcome::ClientAborted] {
        assert!(outcomes.contains(&outcome), "no {outcome:?} record among {outcomes:?}");
    }
    println!(
        "{} requests over 2 gateways, leader failover in {failover:?}; per key: {:?}",
        sent.len(),
        totals_by_key(&records)
    );
    Ok(())
}

/// The rate-limited key's limits, and how the test spreads its load.
const RPM: u64 = 300;
const MAX_CONCURRENT: usize = 6;
const GATEWAYS: usize = 3;
const CLIENTS_PER_GATEWAY: usize = 4;
/// How long the clients hammer.
const RUN: Duration = Duration::from_secs(120);
/// How long a client waits after a refusal: the offered load stays far above
/// the limit (about 20 requests a second per client) without spinning.
const REFUSED_PAUSE: Duration = Duration::from_millis(50);
/// Key `probe`'s limit, so high that nothing refuses it: its share in the
/// `x-ratelimit-limit-requests` header says how many replicas a gateway counts.
const PROBE_RPM: u64 = 3_000_000;

/// How many replicas gateway `i` divides limits by, from a probe request.
async fn replicas_counted(bed: &Bed, i: usize, probe: &str) -> Option<u64> {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "probe"}]});
    let url = format!("{}/v1/chat/completions", bed.gateway(i));
    let response = bed.http.post(url).bearer_auth(probe).json(&body).send().await.ok()?;
    let share: u64 = response.headers().get("x-ratelimit-limit-requests")?.to_str().ok()?.parse().ok()?;
    response.bytes().await.ok()?;
    PROBE_RPM.checked_div(share)
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    admitted: u64,
    refused: u64,
    /// Anything but a whole answer or a `rate_limit_exceeded` refusal.
    other: Vec<String>,
}

/// Sends requests to `url` with `key`, one at a time, until `until`.
async fn hammer(http: reqwest::Client, url: String, key: String, stream: bool, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "Say hi"}]});
    while Instant::now() < until {
        let response = match http.post(&url).bearer_auth(&key).json(&body).send().await {
            Ok(r) => r,
            Err(e) => {
                seen.other.push(e.to_string());
                continue;
            }
        };
        match response.status() {
            StatusCode::OK => match response.bytes().await {
                Ok(_) => seen.admitted += 1,
                Err(e) => seen.other.push(format!("answer cut: {e}")),
            },
            StatusCode::TOO_MANY_REQUESTS => {
                let error: Value = response.json().await.unwrap_or_default();
                match error["error"]["code"].as_str() {
                    Some("rate_limit_exceeded") => seen.refused += 1,
                    _ => seen.other.push(format!("429 {error}")),
                }
                tokio::time::sleep(REFUSED_PAUSE).await;
            }
            status => seen.other.push(status.to_string()),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn rate_limits_hold_across_three_gateways_for_two_minutes() -> anyhow::Result<()> {
    // Every answer takes a while at the upstream, so requests overlap there.
    let upstream = MockUpstream::start(Behaviour {
        latency: Duration::from_millis(20),
        tokens: Some(5),
        chunk_delay: Duration::from_millis(10),
        ..Behaviour::default()
    })
    .await?;
    let mut setup = Setup::new(upstream);
    setup.manifests = primary_channel(&setup.upstream.base_url())
        + &api_key("limited", &format!("{{rateLimit: {{requestsPerMinute: {RPM}, maxConcurrent: {MAX_CONCURRENT}}}}}"))
        + &api_key("probe", &format!("{{rateLimit: {{requestsPerMinute: {PROBE_RPM}}}}}"));
    setup.gateways = GATEWAYS;
    // Reports every 500 ms keep all three live without a doubt, however
    // loaded the machine: the share must not change during the run.
    setup.gateway_timeout = Duration::from_secs(60);
    let bed = Bed::start(setup).await?;
    let (key, probe) = (bed.issued_key("limited").await?, bed.issued_key("probe").await?);
    for k in [&key, &probe] {
        bed.until_served(k).await?;
    }

    // Every gateway takes a third of each limit, from one snapshot version.
    let started = Instant::now();
    for i in 0..GATEWAYS {
        while replicas_counted(&bed, i, &probe).await != Some(GATEWAYS as u64) {
            anyhow::ensure!(started.elapsed() < WAIT, "gateway {i} never counted {GATEWAYS} replicas");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let version = bed.until_converged(0.0).await?;

    // The hammering: the key was never used before, so every bucket starts full.
    bed.upstream.reset_peak_in_flight();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let until = started + RUN;
    let clients: Vec<_> = (0..GATEWAYS * CLIENTS_PER_GATEWAY)
        .map(|c| {
            let url = format!("{}/v1/chat/completions", bed.gateway(c % GATEWAYS));
            tokio::spawn(hammer(http.clone(), url, key.clone(), c % 2 == 0, until))
        })
        .collect();
    let mut seen = Seen::default();
    for client in clients {
        let s = client.await?;
        seen.admitted += s.admitted;
        seen.refused += s.refused;
        seen.other.extend(s.other);
    }
    // Every request was sent and answered within this window.
    let window = started.elapsed();
    let peak = bed.upstream.peak_in_flight();

    // The share held all along: no new snapshot, still three replicas.
    assert_eq!(bed.until_converged(0.0).await?, version, "a new snapshot during the run");
    for i in 0..GATEWAYS {
        assert_eq!(replicas_counted(&bed, i, &probe).await, Some(GATEWAYS as u64), "gateway {i}");
    }

    // The README's bound over a window W: each replica's bucket admits its
    // burst (a third of the limit) plus its rate (a third) times W.
    let bound = RPM as f64 * (1.0 + window.as_secs_f64() / 60.0);
    println!(
        "{} admitted, {} refused in {window:?} (bound {bound:.1}); at most {peak} in flight at the upstream",
        seen.admitted, seen.refused
    );
    assert!(seen.other.is_empty(), "only answers and rate-limit refusals: {:?}", seen.other);
    assert!(seen.admitted as f64 <= bound, "{} admitted in {window:?}: over the bound {bound:.1}", seen.admitted);
    // Clients asked for more, all the time: the limit was used, nearly all of
    // it (only what refilled after each gateway's last admission is left).
    assert!(seen.refused > seen.admitted, "the load did not exceed the limit: {seen:?}");
    assert!(seen.admitted as f64 >= 0.9 * bound, "only {} admitted of the bound {bound:.1}", seen.admitted);
    assert_eq!(peak, MAX_CONCURRENT, "requests at once at the upstream: never more than maxConcurrent, and that many");
    Ok(())
}
