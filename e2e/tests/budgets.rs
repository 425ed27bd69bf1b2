//! Budgets hold: many concurrent requests (plain, streamed, some abandoned by
//! their client) against a key with a small budget — or two keys with large
//! budgets sharing their namespace's small one (a NamespacePolicy) — through
//! one gateway on SQLite and through replicas sharing one Postgres. Settled
//! spend never exceeds the budget, the budget is used to at least 95 % before
//! requests are refused, refusals are 429 `budget_exceeded`, and the ledger's
//! settled spend is exactly what the usage records cost.

use std::ops::ControlFlow;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use weaver_e2e::fixtures::{KEY, NAMESPACE, api_key, openai_namespace};
use weaver_e2e::gateway::TestGateway;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::postgres::PgCluster;
use weaver_e2e::records;
use weaver_store::ledger::BudgetId;
use weaver_store::{RecordFilter, Scope, Store, StoreOptions};

/// The budget: four thousandths of a dollar, never resetting; each request
/// here costs about 1/400 of it and reserves about three times that.
const BUDGET_NANOS: u64 = 4_000_000;
const KEY_SPEC: &str = r#"budget: {amount: "0.004", period: total}"#;
const REQUESTS: usize = 600;

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    refused: usize,
    timed_out: usize,
    other: Vec<String>,
    /// The message of a `budget_exceeded` refusal.
    refusal: Option<String>,
}

/// A refused request: status, error code, message.
type Refusal = (u16, String, String);

/// Sends `REQUESTS` requests, eight at a time, spread over `gateways` and
/// `keys`: alternately plain and streamed, every fifth stream abandoned after
/// its first chunk.
async fn load(gateways: &[&TestGateway], keys: &[&str]) -> anyhow::Result<Seen> {
    let http = reqwest::Client::new();
    let results: Vec<anyhow::Result<Result<(), Refusal>>> = futures_util::stream::iter(0..REQUESTS)
        .map(|i| {
            let (http, gw, key) = (http.clone(), gateways[i % gateways.len()], keys[i % keys.len()]);
            async move {
                let stream = i % 2 == 1;
                let body = json!({"model": "gpt-4o-mini", "max_tokens": 16, "stream": stream,
                    "messages": [{"role": "user", "content": "Say hi"}]});
                let response = http.post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await?;
                let status = response.status().as_u16();
                if status != 200 {
                    let error: Value = response.json().await?;
                    let text = |field: &str| error["error"][field].as_str().unwrap_or_default().to_owned();
                    return Ok(Err((status, text("code"), text("message"))));
                }
                let mut body = response.bytes_stream();
                if stream && i % 10 == 1 {
                    body.next().await; // the client leaves after the first chunk
                } else {
                    while let Some(chunk) = body.next().await {
                        chunk?;
                    }
                }
                Ok(Ok(()))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut seen = Seen::default();
    for r in results {
        match r? {
            Ok(()) => seen.ok += 1,
            Err((429, code, message)) if code == "budget_exceeded" => {
                seen.refused += 1;
                seen.refusal.get_or_insert(message);
            }
            // A loaded test machine can miss the fixture's 1 s first-byte timeout;
            // such a request costs nothing and is not a budget matter.
            Err((504, code, _)) if code == "upstream_timeout" => seen.timed_out += 1,
            Err((status, code, _)) => seen.other.push(format!("{status} {code}")),
        }
    }
    Ok(seen)
}

/// The cost of every usage record in `store`, in nano-dollars.
async fn recorded_cost(store: &Store) -> anyhow::Result<u64> {
    Ok(records::all(store, &RecordFilter::default()).await?.iter().map(|r| r.cost_nanos).sum())
}

/// The key budget of the fixture's key `checkout`.
fn key_budget() -> BudgetId {
    BudgetId { scope: Scope::key(NAMESPACE, "checkout"), period_ms: 0 }
}

/// The JSON of ApiKey `name` of the fixture's namespace, as `gw`'s usage API
/// shows it (with this replica's budget ledger).
async fn key_status(gw: &TestGateway, name: &str) -> anyhow::Result<Value> {
    let token_file = gw.data_dir().ok_or_else(|| anyhow::anyhow!("standalone"))?.join("admin-token");
    let token = std::fs::read_to_string(token_file)?;
    let url = gw.admin_url(&format!("/admin/v1/keys/{NAMESPACE}/{name}"));
    let response = reqwest::Client::new().get(url).bearer_auth(token.trim()).send().await?;
    Ok(response.error_for_status()?.json().await?)
}

/// Waits until no request holds a reservation of keys `names` on any of
/// `gateways`: every request, abandoned streams too (the gateway may read on
/// after their client left), has ended and handed its record to the writer.
async fn idle(gateways: &[&TestGateway], names: &[&str]) -> anyhow::Result<()> {
    weaver_e2e::gateway::eventually("no reservation left in flight", || async {
        for gw in gateways {
            for name in names {
                match key_status(gw, name).await {
                    Ok(key) if key["budget"]["ledger"]["reserved_usd"] == "0.00" => {}
                    _ => return false,
                }
            }
        }
        true
    })
    .await
}

/// Checks what a run left, once every request of keys `names` ended on `gateways`: refusals
/// only once the budget `id` was nearly used, settled spend within it, the
/// ledger agreeing with the records (every record is charged to that budget)
/// exactly.
async fn check(
    seen: &Seen,
    gateways: &[&TestGateway],
    names: &[&str],
    store: &Store,
    id: &BudgetId,
) -> anyhow::Result<()> {
    assert_eq!(seen.other, Vec::<String>::new(), "only answers and budget refusals");
    assert!(seen.refused > 0 && seen.ok > 300, "the budget ran out during the run: {seen:?}");
    idle(gateways, names).await?;
    // Replicas settle their spend within a second or two.
    weaver_e2e::gateway::eventually("the ledger settles what the records cost", || async {
        let settled = store.budget_totals(id).await.ok().flatten().map(|t| t.settled_nanos);
        recorded_cost(store).await.ok().is_some_and(|cost| Some(cost) == settled)
    })
    .await?;
    let settled = store.budget_totals(id).await?.unwrap_or_default().settled_nanos;
    let cost = recorded_cost(store).await?;
    assert_eq!(settled, cost, "the ledger settled exactly what the records cost");
    assert!(cost <= BUDGET_NANOS, "settled spend {cost} exceeds the budget {BUDGET_NANOS}");
    assert!(cost * 100 >= BUDGET_NANOS * 95, "only {cost} of {BUDGET_NANOS} used before refusals");
    println!("{seen:?}; {cost} of {BUDGET_NANOS} nano-dollars spent");
    Ok(())
}

fn upstream_behaviour() -> Behaviour {
    Behaviour { tokens: Some(12), chunk_delay: Duration::from_millis(2), ..Behaviour::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_on_sqlite_keeps_a_budget() -> anyhow::Result<()> {
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let gw = TestGateway::start(&openai_namespace(&upstream.base_url(), KEY_SPEC), &[]).await?;
    let seen = load(&[&gw], &[KEY]).await?;
    let url = gw.usage_store_url().ok_or_else(|| anyhow::anyhow!("standalone"))?;
    let store = Store::connect(&url, StoreOptions::default())?;
    check(&seen, &[&gw], &["checkout"], &store, &key_budget()).await?;
    // The usage API's key endpoint shows the ledger: settled, leased, reserved.
    let key = key_status(&gw, "checkout").await?;
    let cost = weaver_crds::money::Usd(recorded_cost(&store).await?).to_string();
    assert_eq!(key["budget"]["ledger"]["settled_usd"].as_str(), Some(cost.as_str()), "{key}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_postgres_keep_one_budget() -> anyhow::Result<()> {
    let pg = PgCluster::up()?;
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let manifests = openai_namespace(&upstream.base_url(), KEY_SPEC);
    let mut gateways = Vec::new();
    for i in 0..3 {
        let instance = format!("gw-{i}");
        let flags = ["--store", pg.url.as_str(), "--instance", instance.as_str(), "--replicas", "3"];
        gateways.push(TestGateway::start(&manifests, &flags).await?);
    }
    let gateways: Vec<_> = gateways.iter().collect();
    let seen = load(&gateways, &[KEY]).await?;
    let store = Store::connect(&pg.url, StoreOptions::default())?;
    check(&seen, &gateways, &["checkout"], &store, &key_budget()).await
}

/// The second key of [`shared_budget`].
const SECOND_KEY: &str = "lw-second-test-key";

/// The fixture's namespace with two keys whose own budgets ($1 each) are far
/// larger than their namespace's ([`BUDGET_NANOS`], a NamespacePolicy).
fn shared_budget(upstream: &str) -> String {
    let big = r#"budget: {amount: "1.00", period: total}"#;
    let second = api_key("second", SECOND_KEY).replace("spec: {}", &format!("spec: {{{big}}}"));
    openai_namespace(upstream, big)
        + &second
        + &format!(
            "---\napiVersion: llmweaver.io/v1alpha1\nkind: NamespacePolicy\n\
             metadata: {{name: default, namespace: {NAMESPACE}}}\n\
             spec: {{budget: {{amount: \"0.004\", period: total}}}}\n"
        )
}

/// What a shared-budget run must show beyond [`check`]: the namespace's
/// budget refused (and said so), and each key's own ledger settled what its
/// records cost.
async fn check_shared(seen: &Seen, gateways: &[&TestGateway], store: &Store) -> anyhow::Result<()> {
    let names = ["checkout", "second"];
    check(seen, gateways, &names, store, &BudgetId { scope: Scope::namespace(NAMESPACE), period_ms: 0 }).await?;
    let message = seen.refusal.clone().unwrap_or_default();
    assert!(message.starts_with("The total budget of $0.004 that the keys of namespace team-a share"), "{message}");
    // The keys' ledgers settle on the replicas' own sync, after the
    // namespace's: a loaded machine (CI) can take longer than `eventually`'s
    // default.
    let what = "each key's ledger settles what its records cost";
    weaver_e2e::gateway::eventually_within(what, Duration::from_secs(30), Duration::from_millis(50), async || {
        let records = records::all(store, &RecordFilter::default()).await?;
        let mut seen = Vec::new();
        for name in names {
            let id = BudgetId { scope: Scope::key(NAMESPACE, name), period_ms: 0 };
            let settled = store.budget_totals(&id).await?.map_or(0, |t| t.settled_nanos);
            let mine = records.iter().filter(|r| r.api_key.as_str() == name);
            let (count, recorded) = mine.fold((0, 0), |(n, c), r| (n + 1, c + r.cost_nanos));
            seen.push((name, settled, recorded, count));
        }
        Ok(if seen.iter().all(|(_, settled, recorded, _)| settled == recorded) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("(key, settled, recorded, records): {seen:?}"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_share_their_namespaces_budget_on_sqlite() -> anyhow::Result<()> {
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let gw = TestGateway::start(&shared_budget(&upstream.base_url()), &[]).await?;
    let seen = load(&[&gw], &[KEY, SECOND_KEY]).await?;
    let url = gw.usage_store_url().ok_or_else(|| anyhow::anyhow!("standalone"))?;
    check_shared(&seen, &[&gw], &Store::connect(&url, StoreOptions::default())?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_share_a_namespaces_budget() -> anyhow::Result<()> {
    let pg = PgCluster::up()?;
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let manifests = shared_budget(&upstream.base_url());
    let mut gateways = Vec::new();
    for i in 0..2 {
        let instance = format!("gw-{i}");
        let flags = ["--store", pg.url.as_str(), "--instance", instance.as_str(), "--replicas", "2"];
        gateways.push(TestGateway::start(&manifests, &flags).await?);
    }
    let gateways: Vec<_> = gateways.iter().collect();
    let seen = load(&gateways, &[KEY, SECOND_KEY]).await?;
    check_shared(&seen, &gateways, &Store::connect(&pg.url, StoreOptions::default())?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_max_tokens_reserves_the_keys_output_allowance() -> anyhow::Result<()> {
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    // 100,000 output tokens at $0.60 per million reserve $0.06: more than the budget.
    let spec = r#"budget: {amount: "0.004", period: total, reserveOutputTokens: 100000}"#;
    let gw = TestGateway::start(&openai_namespace(&upstream.base_url(), spec), &[]).await?;
    let http = reqwest::Client::new();
    let send = |body: Value| http.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send();
    let message = json!([{"role": "user", "content": "Say hi"}]);
    let unbounded = send(json!({"model": "gpt-4o-mini", "messages": message})).await?;
    assert_eq!(unbounded.status(), 429);
    let error: Value = unbounded.json().await?;
    assert_eq!(
        (error["error"]["type"].as_str(), error["error"]["code"].as_str()),
        (Some("insufficient_quota"), Some("budget_exceeded"))
    );
    let bounded = send(json!({"model": "gpt-4o-mini", "messages": message, "max_tokens": 16})).await?;
    assert_eq!(bounded.status(), 200, "a request that bounds its output fits");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_n_completions_reserves_n_times_its_output_limit() -> anyhow::Result<()> {
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let gw = TestGateway::start(&openai_namespace(&upstream.base_url(), KEY_SPEC), &[]).await?;
    let http = reqwest::Client::new();
    let send = |n: u64| {
        let body = json!({"model": "gpt-4o-mini", "n": n, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hi"}]});
        http.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&body).send()
    };
    // 1,000 completions of up to 16 tokens at $0.60 per million may cost
    // $0.0096: more than the whole budget, though one completion fits.
    let many = send(1000).await?;
    assert_eq!(many.status(), 429);
    let error: Value = many.json().await?;
    assert_eq!(error["error"]["code"], "budget_exceeded", "{error}");
    assert_eq!(send(2).await?.status(), 200, "two completions fit");
    Ok(())
}

/// One plain request of key `key` through `gw`, giving up after `timeout`.
async fn chat(gw: &TestGateway, key: &str, timeout: Duration) -> reqwest::Result<reqwest::Response> {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi"}]});
    let request = reqwest::Client::new().post(gw.url("/v1/chat/completions")).bearer_auth(key).json(&body);
    request.timeout(timeout).send().await
}

/// A client that gives up while its request waits on the budget ledger (a
/// transaction holds the namespace's ledger row) strands no reservation and
/// loses no spend: once the ledger answers, what the request reserved is
/// given back, and the ledgers still settle exactly what the records cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_the_ledger_is_slow_strands_no_reservation() -> anyhow::Result<()> {
    let pg = PgCluster::up()?;
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let gw = TestGateway::start(&shared_budget(&upstream.base_url()), &["--store", pg.url.as_str()]).await?;
    let patient = Duration::from_secs(20);
    assert_eq!(chat(&gw, KEY, patient).await?.status(), 200, "the ledger rows exist");
    let store = Store::connect(&pg.url, StoreOptions::default())?;
    let Store::Postgres(postgres) = &store else { anyhow::bail!("a Postgres URL") };
    let mut lock = postgres.pool().begin().await?;
    sqlx::query("SELECT 1 FROM budget_ledger WHERE name = '' FOR UPDATE").execute(&mut *lock).await?;
    // Requests go on from the slices this replica holds until the
    // namespace's runs short; the next waits on the ledger, and its client
    // gives up.
    let mut gave_up = false;
    for _ in 0..40 {
        match chat(&gw, KEY, Duration::from_millis(500)).await {
            Ok(response) => assert_eq!(response.status(), 200, "{:?}", response.text().await),
            Err(e) if e.is_timeout() => {
                gave_up = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(gave_up, "no request waited on the locked ledger");
    lock.commit().await?;
    idle(&[&gw], &["checkout", "second"]).await?;
    assert_eq!(chat(&gw, KEY, patient).await?.status(), 200, "the budget serves again");
    idle(&[&gw], &["checkout", "second"]).await?;
    let namespace = BudgetId { scope: Scope::namespace(NAMESPACE), period_ms: 0 };
    weaver_e2e::gateway::eventually("the ledgers settle what the records cost", || async {
        let settled = async |id: &BudgetId| store.budget_totals(id).await.ok().flatten().map(|t| t.settled_nanos);
        let cost = recorded_cost(&store).await.ok();
        cost.is_some() && settled(&namespace).await == cost && settled(&key_budget()).await == cost
    })
    .await
}

/// With its usage store (the budget ledger) stopped, a replica serves from
/// the slices it holds; the request they cannot cover is refused with 503
/// `budget_unavailable` — not a 429 saying the budget is spent — and once
/// the store is back, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_out_of_reach_refuses_with_503_not_budget_exceeded() -> anyhow::Result<()> {
    let pg = PgCluster::up()?;
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let spec = r#"budget: {amount: "1.00", period: total}"#;
    let gw = TestGateway::start(&openai_namespace(&upstream.base_url(), spec), &["--store", pg.url.as_str()]).await?;
    let patient = Duration::from_secs(20);
    assert_eq!(chat(&gw, KEY, patient).await?.status(), 200);
    pg.stop()?;
    let mut refusal = None;
    for _ in 0..40 {
        let response = chat(&gw, KEY, patient).await?;
        if response.status() != 200 {
            refusal = Some((
                response.status(),
                response.headers().get("retry-after").cloned(),
                response.json::<Value>().await?,
            ));
            break;
        }
    }
    let (status, retry_after, error) = refusal.ok_or_else(|| anyhow::anyhow!("the slice never ran short"))?;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "budget_unavailable", "{error}");
    assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
    pg.start()?;
    let what = "requests are served again once the ledger answers";
    weaver_e2e::gateway::eventually_within(what, Duration::from_secs(30), Duration::from_millis(200), async || {
        let status = chat(&gw, KEY, patient).await?.status();
        Ok(if status == 200 { ControlFlow::Break(()) } else { ControlFlow::Continue(format!("{status}")) })
    })
    .await
}

/// A replica that shuts down (a rolling update) settles what it spent and
/// gives its slices back: right after it stopped, the ledger holds exactly
/// what the records cost and leases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shutting_down_settles_its_spend_and_gives_its_slices_back() -> anyhow::Result<()> {
    let pg = PgCluster::up()?;
    let upstream = MockUpstream::start(upstream_behaviour()).await?;
    let gw = TestGateway::start(&shared_budget(&upstream.base_url()), &["--store", pg.url.as_str()]).await?;
    for _ in 0..5 {
        let response = chat(&gw, KEY, Duration::from_secs(20)).await?;
        assert_eq!(response.status(), 200);
        response.bytes().await?;
    }
    gw.shutdown().await?;
    let store = Store::connect(&pg.url, StoreOptions::default())?;
    let cost = recorded_cost(&store).await?;
    assert!(cost > 0);
    for id in [BudgetId { scope: Scope::namespace(NAMESPACE), period_ms: 0 }, key_budget()] {
        let totals = store.budget_totals(&id).await?.unwrap_or_default();
        assert_eq!((totals.settled_nanos, totals.leased_nanos), (cost, 0), "{id:?}");
    }
    Ok(())
}
