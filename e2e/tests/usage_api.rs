//! The usage API on a standalone gateway's admin listener, over real loopback
//! HTTP: mixed traffic through the gateway to the mock upstream, then the
//! records, summaries, exports and key status read back through the API, on
//! SQLite and on Postgres (`WEAVER_TEST_POSTGRES_URL`, from
//! `eval "$(e2e/postgres up)"`; each test gets a database of its own).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_crds::money::Usd;
use weaver_e2e::fixtures::{KEY, NAMESPACE, api_key, openai_namespace};
use weaver_e2e::gateway::{TestGateway, eventually};
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_store::{AttemptRecord, Outcome, Store, StoreOptions, UsageRecord, UsageStore as _};
use weaver_usage_api::{CSV_COLUMNS, OPENAPI_YAML, ROUTES};

const BATCH_KEY: &str = "lw-batch-key";
/// The budget of ApiKey `checkout`.
const BUDGET: &str = "budget: {amount: \"10.00\", period: monthly}";
/// Requests [`Bed::traffic`] sends.
const REQUESTS: usize = 10;

/// Which store the gateway writes to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A gateway (with its store) that served [`REQUESTS`] mixed requests.
struct Bed {
    upstream: MockUpstream,
    gateway: TestGateway,
    client: reqwest::Client,
    token: String,
    store_url: String,
    /// What each request was: request id -> (expected status, the JSON the client got, if any).
    sent: BTreeMap<String, (u16, Option<Value>)>,
}

/// A fresh Postgres database's URL, or `None` when Postgres is explicitly skipped.
async fn postgres_database() -> Option<String> {
    let Ok(url) = std::env::var("WEAVER_TEST_POSTGRES_URL") else {
        if std::env::var("WEAVER_TEST_POSTGRES").as_deref() == Ok("skip") {
            eprintln!("WEAVER_TEST_POSTGRES=skip: skipping the Postgres half");
            return None;
        }
        panic!(
            "WEAVER_TEST_POSTGRES_URL is not set: start a server with `eval \"$(e2e/postgres up)\"` \
             (or set WEAVER_TEST_POSTGRES=skip to skip the Postgres half explicitly)"
        );
    };
    let admin = Store::connect(&url, StoreOptions::default()).expect("connect postgres");
    let Store::Postgres(pg) = &admin else { unreachable!("a postgres URL") };
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("weaver_usage_api_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(pg.pool()).await.expect("create database");
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    Some(format!("{base}/{name}"))
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": stream})
}

impl Bed {
    /// A gateway on `kind`'s store, before any traffic; `None` when Postgres is skipped.
    async fn empty(kind: Kind, flags: &[&str]) -> Option<Bed> {
        let upstream = MockUpstream::start(Behaviour { tokens: Some(3), ..Behaviour::default() }).await.unwrap();
        let manifests = openai_namespace(&upstream.base_url(), BUDGET) + &api_key("batch", BATCH_KEY);
        let pg = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(postgres_database().await?),
        };
        let mut args: Vec<&str> = flags.to_vec();
        if let Some(url) = &pg {
            args.extend(["--store", url.as_str()]);
        }
        let gateway = TestGateway::start(&manifests, &args).await.unwrap();
        let store_url = pg.clone().or_else(|| gateway.usage_store_url()).unwrap();
        let token_file = gateway.data_dir().unwrap().join("admin-token");
        let token = std::fs::read_to_string(token_file).unwrap_or_default().trim().to_owned();
        Some(Bed { upstream, gateway, client: reqwest::Client::new(), token, store_url, sent: BTreeMap::new() })
    }

    /// [`Self::empty`], then [`REQUESTS`] requests: plain and streamed chats
    /// and an embedding with key `checkout`, chats with key `batch`, one
    /// without a key (401) and one the upstream fails (502). Waits until the
    /// API shows every record.
    async fn with_traffic(kind: Kind) -> Option<Bed> {
        let mut bed = Bed::empty(kind, &[]).await?;
        let embed = json!({"model": "text-embedding-3-small", "input": "hello"});
        let plan: Vec<(&str, Option<&str>, &str, Value, u16)> = vec![
            ("plain-1", Some(KEY), "/v1/chat/completions", chat(false), 200),
            ("plain-2", Some(KEY), "/v1/chat/completions", chat(false), 200),
            ("plain-3", Some(KEY), "/v1/chat/completions", chat(false), 200),
            ("stream-1", Some(KEY), "/v1/chat/completions", chat(true), 200),
            ("stream-2", Some(KEY), "/v1/chat/completions", chat(true), 200),
            ("batch-1", Some(BATCH_KEY), "/v1/chat/completions", chat(false), 200),
            ("batch-2", Some(BATCH_KEY), "/v1/chat/completions", chat(false), 200),
            ("embed-1", Some(KEY), "/v1/embeddings", embed, 200),
            ("nokey-1", None, "/v1/chat/completions", chat(false), 401),
        ];
        for (id, key, path, body, status) in plan {
            let mut request = bed.client.post(bed.gateway.url(path)).header("x-request-id", id).json(&body);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{id}");
            let streamed = body["stream"] == json!(true);
            let text = response.text().await.unwrap();
            let answer = if streamed { None } else { serde_json::from_str(&text).ok() };
            bed.sent.insert(id.to_owned(), (status, answer));
        }
        bed.upstream.set(Behaviour { error_status: Some(500), ..Behaviour::default() });
        let failed = bed
            .client
            .post(bed.gateway.url("/v1/chat/completions"))
            .header("x-request-id", "fail-1")
            .bearer_auth(KEY)
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        bed.sent.insert("fail-1".into(), (502, None));
        assert_eq!(bed.sent.len(), REQUESTS);
        eventually("every request is in the usage API", || async {
            bed.get_json("/admin/v1/usage/records?limit=1000").await.1["data"].as_array().map(Vec::len)
                == Some(REQUESTS)
        })
        .await
        .unwrap();
        Some(bed)
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        let url = self.gateway.admin_url(path_and_query);
        self.client.get(url).bearer_auth(&self.token).send().await.unwrap()
    }

    async fn get_json(&self, path_and_query: &str) -> (StatusCode, Value) {
        let response = self.get(path_and_query).await;
        let status = response.status();
        assert_eq!(response.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
        (status, response.json().await.unwrap())
    }

    /// Every record the API has, through its pages of `limit`, in order.
    async fn all_records(&self, query: &str, limit: u32) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("/admin/v1/usage/records?limit={limit}{query}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get_json(&q).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            schema("RecordPage").validate(&page).unwrap_or_else(|e| panic!("{e}: {page}"));
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= limit as usize);
            out.extend(data.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return out,
            }
        }
    }
}

/// The OpenAPI document as JSON.
fn openapi() -> Value {
    serde_yaml::from_str(OPENAPI_YAML).expect("the OpenAPI document is YAML")
}

/// A validator for one of the document's component schemas (OpenAPI 3.1
/// schemas are JSON Schema 2020-12); references resolve inside the document.
fn schema(name: &str) -> jsonschema::Validator {
    let mut root = openapi();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::draft202012::options().should_validate_formats(true).build(&root).expect("a valid schema")
}

fn nanos(usd: &Value) -> u64 {
    usd.as_str().and_then(|s| s.parse::<Usd>().ok()).map(|u| u.0).unwrap_or_else(|| panic!("not USD: {usd}"))
}

fn millis(time: &Value) -> i64 {
    time.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond()).unwrap()
}

/// The id a record's request was sent with: the client's own, else (for
/// records written straight into the store) the record's.
fn sent_id(r: &Value) -> &str {
    r["client_request_id"].as_str().or(r["request_id"].as_str()).unwrap()
}

fn ids(records: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = records.iter().map(|r| sent_id(r).to_owned()).collect();
    ids.sort();
    ids
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Sqlite).await; })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Postgres).await; })*
        }
    };
}

both!(
    records_are_exactly_the_requests_and_pages_hold_each_once,
    filters_select_exactly_the_matching_records,
    summary_totals_equal_the_records_to_the_nano_dollar,
    exports_hold_every_record_once_and_parse_back,
    key_status_shows_the_period_spend_of_the_records,
    days_follow_the_reporting_time_zone,
    requests_reusing_a_client_id_are_each_recorded_and_found_by_it,
);

/// Clients reuse ids (a library's concurrent retries, one id per session):
/// each request is still its own record — billed, charged — under the
/// gateway's id, keeps the client's, and a search by the client's id finds
/// them all.
async fn requests_reusing_a_client_id_are_each_recorded_and_found_by_it(kind: Kind) {
    const EACH: usize = 6;
    let Some(bed) = Bed::empty(kind, &[]).await else { return };
    // Group "reused" names its id only in x-request-id (still accepted);
    // group "named" also in OpenAI's x-client-request-id, which wins.
    let send = |client_id: &'static str, named: bool| {
        let mut request = bed.client.post(bed.gateway.url("/v1/chat/completions")).bearer_auth(KEY);
        request = request.header("x-request-id", if named { "other" } else { client_id });
        if named {
            request = request.header("x-client-request-id", client_id);
        }
        async move {
            let response = request.json(&chat(false)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let header = |h: &str| response.headers()[h].to_str().unwrap().to_owned();
            assert_eq!(header("x-client-request-id"), client_id);
            (client_id, header("x-request-id"))
        }
    };
    let sends = (0..EACH).flat_map(|_| [send("reused", false), send("named", true)]);
    let answered = futures_util::future::join_all(sends).await;
    for client_id in ["reused", "named"] {
        let ids: BTreeSet<String> =
            answered.iter().filter(|(c, _)| *c == client_id).map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), EACH, "the gateway's ids are unique: {ids:?}");
        assert!(!ids.contains(client_id) && !ids.contains("other"), "the gateway's own ids: {ids:?}");
        let query = format!("&request_id={client_id}");
        eventually("every request is recorded", || async { bed.all_records(&query, 100).await.len() >= EACH })
            .await
            .unwrap();
        let found = bed.all_records(&query, 100).await;
        let found_ids: BTreeSet<String> = found.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(found_ids, ids, "one record per request, each found by the client's id");
        assert!(found.iter().all(|r| r["client_request_id"] == client_id), "{found:?}");
        // And one record by the gateway's id.
        let one = ids.first().unwrap();
        assert_eq!(bed.all_records(&format!("&request_id={one}"), 10).await.len(), 1);
    }
    let all = bed.all_records("", 100).await;
    assert_eq!(all.len(), 2 * EACH, "no other record");
    assert!(all.iter().all(|r| r["input_tokens"].as_u64().is_some_and(|n| n > 0)), "each billed: {all:?}");
}

/// A successful record at `time` (RFC 3339) costing `cost_nanos`.
fn record_at(id: &str, time: &str, cost_nanos: u64) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        client_request_id: None,
        time: time.parse::<jiff::Timestamp>().unwrap().as_millisecond(),
        namespace: NAMESPACE.into(),
        api_key: "tz".into(),
        channel: Some("primary".into()),
        model: "m".into(),
        upstream_model: "m".into(),
        status: 200,
        outcome: Outcome::Ok,
        input_tokens: 1,
        output_tokens: 1,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
        cost_nanos,
        duration_ms: 5,
        ttft_ms: None,
        replica: "test".into(),
        attempts: Vec::new(),
        bodies: None,
    }
}

async fn days_follow_the_reporting_time_zone(kind: Kind) {
    let Some(bed) = Bed::empty(kind, &[]).await else { return };
    let store = Store::connect(&bed.store_url, StoreOptions::default()).unwrap();
    // One UTC day, two in Shanghai (+08: its 30 November starts at 16:00 UTC).
    let records = [record_at("tz-1", "2026-11-29T15:30:00Z", 1_000), record_at("tz-2", "2026-11-29T16:30:00Z", 20)];
    store.insert_batch(&records).await.unwrap();
    let bed = &bed;
    let days = |query: &'static str| async move {
        let (status, body) = bed.get_json(&format!("/admin/v1/usage/summary?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let rows = body["data"].as_array().unwrap().clone();
        rows.iter()
            .map(|r| (r["day"].as_str().unwrap().to_owned(), r["cost_usd"].as_str().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    let pair = |d: &str, c: &str| (d.to_owned(), c.to_owned());
    assert_eq!(days("group_by=day&from=2026-11-29T00:00:00Z").await, [pair("2026-11-29", "0.00000102")]);
    assert_eq!(
        days("group_by=day&tz=Asia/Shanghai&from=2026-11-28T16:00:00Z&to=2026-11-30T16:00:00Z").await,
        [pair("2026-11-29", "0.000001"), pair("2026-11-30", "0.00000002")]
    );
    assert_eq!(
        days("group_by=day&tz=America/New_York&from=2026-11-29T05:00:00Z&to=2026-12-01T05:00:00Z").await,
        [pair("2026-11-29", "0.00000102")]
    );
    let (_, body) =
        bed.get_json("/admin/v1/usage/summary?group_by=hour&tz=Asia/Shanghai&from=2026-11-29T00:00:00Z").await;
    let hours: Vec<&str> = body["data"].as_array().unwrap().iter().map(|r| r["hour"].as_str().unwrap()).collect();
    assert_eq!(hours, ["2026-11-29T23:00:00+08:00", "2026-11-30T00:00:00+08:00"]);
    // One record by its request id, whenever it was.
    let found = bed.all_records("&request_id=tz-2", 10).await;
    assert_eq!(ids(&found), ["tz-2"]);
}

async fn records_are_exactly_the_requests_and_pages_hold_each_once(kind: Kind) {
    let Some(bed) = Bed::with_traffic(kind).await else { return };
    let records = bed.all_records("", 1000).await;
    assert_eq!(ids(&records), bed.sent.keys().cloned().collect::<Vec<_>>());
    let times: Vec<i64> = records.iter().map(|r| millis(&r["time"])).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    for r in &records {
        let id = sent_id(r);
        let (status, answer) = &bed.sent[id];
        assert_eq!(r["status"], json!(status), "{r}");
        let fields: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields.iter().collect::<BTreeSet<_>>(), CSV_COLUMNS.iter().collect::<BTreeSet<_>>(), "{r}");
        match id {
            "nokey-1" => {
                assert_eq!(
                    (&r["outcome"], &r["api_key"], &r["channel"]),
                    (&json!("rejected"), &json!(""), &json!(null))
                );
                assert_eq!(r["cost_usd"], json!("0.00"));
            }
            "fail-1" => {
                assert_eq!(r["outcome"], json!("upstream_error"));
                assert_eq!(r["attempts"][0]["status"], json!(500), "{r}");
                assert_eq!(r["cost_usd"], json!("0.00"));
            }
            _ => {
                assert_eq!(r["outcome"], json!("ok"), "{r}");
                assert_eq!(r["namespace"], json!(NAMESPACE));
                let key = if id.starts_with("batch") { "batch" } else { "checkout" };
                assert_eq!(r["api_key"], json!(key));
                assert_eq!(r["channel"], json!("primary"));
                assert_eq!(r["attempts"].as_array().map(Vec::len), Some(1), "{r}");
                let (input, output) = (r["input_tokens"].as_u64().unwrap(), r["output_tokens"].as_u64().unwrap());
                if id.starts_with("embed") {
                    assert_eq!(
                        (&r["model"], &r["upstream_model"]),
                        (&json!("text-embedding-3-small"), &json!("text-embedding-3-small"))
                    );
                    assert_eq!(r["cost_usd"], json!("0.00"), "no price set");
                } else {
                    assert_eq!(
                        (&r["model"], &r["upstream_model"]),
                        (&json!("gpt-4o-mini"), &json!("gpt-4o-mini-2024-07-18"))
                    );
                    assert_eq!(output, 3, "{r}");
                    assert_eq!(nanos(&r["cost_usd"]), input * 150 + output * 600, "{r}");
                    assert!(r["ttft_ms"].is_u64(), "{r}");
                }
                if let Some(answer) = answer {
                    assert_eq!(input, answer["usage"]["prompt_tokens"].as_u64().unwrap(), "{r}");
                }
            }
        }
    }
    // Pages of 3 hold every record exactly once, in the same order.
    let paged = bed.all_records("", 3).await;
    assert_eq!(paged, records);
    let (_, first) = bed.get_json("/admin/v1/usage/records?limit=4").await;
    assert_eq!(first["data"].as_array().map(Vec::len), Some(4));
    assert!(first["next_cursor"].is_string());
    let (_, all) = bed.get_json("/admin/v1/usage/records").await;
    assert_eq!(all["next_cursor"], json!(null), "the default page (100) holds all 10");
}

async fn filters_select_exactly_the_matching_records(kind: Kind) {
    let Some(bed) = Bed::with_traffic(kind).await else { return };
    let all = bed.all_records("", 1000).await;
    let select = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        ids(&all.iter().filter(|r| pred(r)).cloned().collect::<Vec<_>>())
    };
    let mut times: Vec<i64> = all.iter().map(|r| millis(&r["time"])).collect();
    times.sort();
    let (t_from, t_to) = (times[2], times[7]);
    let rfc = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("&namespace={NAMESPACE}"), select(&|r| r["namespace"] == json!(NAMESPACE))),
        ("&namespace=nobody".into(), vec![]),
        ("&api_key=batch".into(), select(&|r| r["api_key"] == json!("batch"))),
        ("&api_key=".into(), select(&|r| r["api_key"] == json!(""))),
        ("&model=text-embedding-3-small".into(), select(&|r| r["model"] == json!("text-embedding-3-small"))),
        ("&channel=primary".into(), select(&|r| r["channel"] == json!("primary"))),
        ("&channel=".into(), select(&|r| r["channel"].is_null())),
        ("&status=401".into(), select(&|r| r["status"] == json!(401))),
        ("&outcome=upstream_error".into(), select(&|r| r["outcome"] == json!("upstream_error"))),
        (
            "&outcome=ok&api_key=checkout".into(),
            select(&|r| r["outcome"] == json!("ok") && r["api_key"] == json!("checkout")),
        ),
        (format!("&from={}", rfc(t_from)), select(&|r| millis(&r["time"]) >= t_from)),
        (format!("&to={}", rfc(t_to)), select(&|r| millis(&r["time"]) < t_to)),
        (format!("&from={}&to={}", rfc(t_from), rfc(t_to)), select(&|r| (t_from..t_to).contains(&millis(&r["time"])))),
    ];
    assert_eq!(select(&|r| r["api_key"] == json!("batch")).len(), 2);
    for (query, expected) in cases {
        let got = ids(&bed.all_records(&query, 2).await);
        assert_eq!(got, expected, "{query}");
    }
    // The same filters stream through the export.
    let export = bed.get(&format!("/admin/v1/usage/export?format=jsonl&api_key=batch&namespace={NAMESPACE}")).await;
    let lines: Vec<Value> = export.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(ids(&lines), select(&|r| r["api_key"] == json!("batch")));
}

async fn summary_totals_equal_the_records_to_the_nano_dollar(kind: Kind) {
    let Some(bed) = Bed::with_traffic(kind).await else { return };
    let records = bed.all_records("", 1000).await;
    #[derive(Default, Debug, PartialEq)]
    struct Totals {
        requests: u64,
        errors: u64,
        input: u64,
        output: u64,
        cached: u64,
        nanos: u64,
    }
    let add = |t: &mut Totals, requests: u64, errors: u64, v: &Value, cost: &Value| {
        t.requests += requests;
        t.errors += errors;
        t.input += v["input_tokens"].as_u64().unwrap();
        t.output += v["output_tokens"].as_u64().unwrap();
        t.cached += v["cached_input_tokens"].as_u64().unwrap();
        t.nanos += nanos(cost);
    };
    let group = |key: &dyn Fn(&Value) -> String| {
        let mut by: BTreeMap<String, Totals> = BTreeMap::new();
        for r in &records {
            let error = ["upstream_error", "rejected"].contains(&r["outcome"].as_str().unwrap());
            add(by.entry(key(r)).or_default(), 1, u64::from(error), r, &r["cost_usd"]);
        }
        by
    };
    let from_summary = |rows: &Value, key: &dyn Fn(&Value) -> String| {
        let mut by: BTreeMap<String, Totals> = BTreeMap::new();
        for row in rows["data"].as_array().unwrap() {
            let requests = row["requests"].as_u64().unwrap();
            let errors = row["errors"].as_u64().unwrap();
            let rate = row["error_rate"].as_f64().unwrap();
            assert!((rate - errors as f64 / requests as f64).abs() < 1e-9, "{row}");
            assert!(row["latency_ms"]["p50"].is_number(), "{row}");
            add(by.entry(key(row)).or_default(), requests, errors, row, &row["cost_usd"]);
        }
        by
    };
    let everything = |_: &Value| String::new();
    let (status, total) = bed.get_json("/admin/v1/usage/summary").await;
    assert_eq!(status, StatusCode::OK, "{total}");
    schema("Summary").validate(&total).unwrap_or_else(|e| panic!("{e}: {total}"));
    assert_eq!(total["data"].as_array().map(Vec::len), Some(1), "no group_by: one row of totals");
    assert_eq!(from_summary(&total, &everything), group(&everything));
    assert_eq!(from_summary(&total, &everything)[""].requests, REQUESTS as u64);

    let by_key = |v: &Value| format!("{}/{}", v["namespace"].as_str().unwrap(), v["api_key"].as_str().unwrap());
    let (_, rows) = bed.get_json("/admin/v1/usage/summary?group_by=key").await;
    assert_eq!(from_summary(&rows, &by_key), group(&by_key));

    let all_four = |v: &Value| {
        let day = v.get("day").and_then(Value::as_str).map(str::to_owned);
        let day = day.unwrap_or_else(|| v["time"].as_str().unwrap()[..10].to_owned());
        format!("{day} {} {} {}", by_key(v), v["model"], v["channel"])
    };
    let (_, rows) = bed.get_json("/admin/v1/usage/summary?group_by=day,key,model,channel").await;
    schema("Summary").validate(&rows).unwrap_or_else(|e| panic!("{e}: {rows}"));
    for row in rows["data"].as_array().unwrap() {
        let fields: BTreeSet<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        for f in ["day", "namespace", "api_key", "model", "channel"] {
            assert!(fields.contains(f), "{f} missing: {row}");
        }
        assert!(!fields.contains("hour"), "{row}");
    }
    assert_eq!(from_summary(&rows, &all_four), group(&all_four));

    let (_, hours) = bed.get_json(&format!("/admin/v1/usage/summary?group_by=hour&namespace={NAMESPACE}")).await;
    schema("Summary").validate(&hours).unwrap_or_else(|e| panic!("{e}: {hours}"));
    let in_ns = records.iter().filter(|r| r["namespace"] == json!(NAMESPACE)).count() as u64;
    let rows = hours["data"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["hour"].as_str().is_some_and(|h| h.ends_with(":00:00Z"))), "{hours}");
    assert_eq!(rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum::<u64>(), in_ns);
}

async fn exports_hold_every_record_once_and_parse_back(kind: Kind) {
    let Some(bed) = Bed::with_traffic(kind).await else { return };
    // More records than one export page, written straight into the store.
    let store = Store::connect(&bed.store_url, StoreOptions::default()).unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let extra: Vec<UsageRecord> = (0..2_500u32)
        .map(|i| UsageRecord {
            request_id: format!("bulk-{i:05}"),
            client_request_id: None,
            time: now - 3_600_000 - i64::from(i % 7) * 1000,
            namespace: "team-b".into(),
            api_key: "bulk, \"quoted\"".into(),
            channel: (i % 3 != 0).then(|| "ch,1".into()),
            model: "m\nline".into(),
            upstream_model: "u".into(),
            status: 200,
            outcome: Outcome::Ok,
            input_tokens: u64::from(i),
            output_tokens: 1,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            estimated: i % 2 == 0,
            cost_nanos: u64::from(i) * 7,
            duration_ms: 5,
            ttft_ms: (i % 2 == 0).then_some(3),
            replica: "bench".into(),
            attempts: vec![AttemptRecord {
                channel: "ch,1".into(),
                status: 200,
                error: Some("a \"b\"".into()),
                ttft_ms: None,
            }],
            bodies: None,
        })
        .collect();
    for chunk in extra.chunks(1000) {
        store.insert_batch(chunk).await.unwrap();
    }
    let total = REQUESTS + extra.len();
    let records = bed.all_records("", 1000).await;
    assert_eq!(records.len(), total);
    let by_id: HashMap<&str, &Value> = records.iter().map(|r| (r["request_id"].as_str().unwrap(), r)).collect();

    let response = bed.get("/admin/v1/usage/export?format=jsonl").await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |r: &reqwest::Response, h: &str| r.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header(&response, "content-type").as_deref(), Some("application/x-ndjson"));
    assert!(header(&response, "content-disposition").is_some_and(|d| d.starts_with("attachment")));
    assert_eq!(header(&response, "cache-control").as_deref(), Some("no-store"));
    let text = response.text().await.unwrap();
    let record_schema = schema("UsageRecord");
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        record_schema.validate(&v).unwrap_or_else(|e| panic!("{e}: {v}"));
        let id = v["request_id"].as_str().unwrap().to_owned();
        assert_eq!(&&v, by_id.get(id.as_str()).unwrap());
        assert!(seen.insert(id), "each record once");
    }
    assert_eq!(seen.len(), total);

    let response = bed.get("/admin/v1/usage/export?format=csv").await;
    assert_eq!(header(&response, "content-type").as_deref(), Some("text/csv; charset=utf-8"));
    assert!(header(&response, "content-disposition").is_some_and(|d| d.starts_with("attachment")));
    let text = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), CSV_COLUMNS);
    let mut seen = BTreeSet::new();
    for row in reader.records() {
        let row = row.unwrap();
        let json = by_id[&row[0]];
        for (column, field) in CSV_COLUMNS.iter().zip(row.iter()) {
            let expected = match &json[column] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if *column == "attempts" {
                let parsed: Value = serde_json::from_str(field).unwrap();
                assert_eq!(parsed, json["attempts"]);
            } else {
                assert_eq!(field, expected, "{column} of {}", &row[0]);
            }
        }
        assert!(seen.insert(row[0].to_owned()), "each record once");
    }
    assert_eq!(seen.len(), total);
}

async fn key_status_shows_the_period_spend_of_the_records(kind: Kind) {
    let Some(bed) = Bed::with_traffic(kind).await else { return };
    let records = bed.all_records(&format!("&namespace={NAMESPACE}&api_key=checkout"), 1000).await;
    assert_eq!(records.len(), 7, "3 plain, 2 streamed, 1 embedding, 1 failed");
    let spent: u64 = records.iter().map(|r| nanos(&r["cost_usd"])).sum();
    let input: u64 = records.iter().map(|r| r["input_tokens"].as_u64().unwrap()).sum();
    let (status, key) = bed.get_json(&format!("/admin/v1/keys/{NAMESPACE}/checkout")).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    schema("KeyStatus").validate(&key).unwrap_or_else(|e| panic!("{e}: {key}"));
    assert_eq!((&key["namespace"], &key["name"]), (&json!(NAMESPACE), &json!("checkout")));
    assert_eq!((&key["budget"]["limit_usd"], &key["budget"]["period"]), (&json!("10.00"), &json!("monthly")));
    let start = key["budget"]["period_start"].as_str().unwrap();
    assert!(start.ends_with("-01T00:00:00Z"), "a month starts on the 1st: {start}");
    assert_eq!(key["usage"]["since"].as_str(), Some(start));
    assert_eq!(key["usage"]["requests"], json!(records.len()));
    assert_eq!(key["usage"]["input_tokens"], json!(input));
    assert_eq!(nanos(&key["usage"]["cost_usd"]), spent);
    assert_eq!(nanos(&key["budget"]["remaining_usd"]), 10_000_000_000 - spent);

    let (_, batch) = bed.get_json(&format!("/admin/v1/keys/{NAMESPACE}/batch")).await;
    schema("KeyStatus").validate(&batch).unwrap_or_else(|e| panic!("{e}: {batch}"));
    assert_eq!(batch["budget"], json!(null));
    assert_eq!(batch["usage"]["since"], json!("1970-01-01T00:00:00Z"), "no budget: all time");
    assert_eq!(batch["usage"]["requests"], json!(2));

    for missing in [format!("/admin/v1/keys/{NAMESPACE}/nobody"), "/admin/v1/keys/team-b/checkout".to_owned()] {
        let (status, error) = bed.get_json(&missing).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        schema("Error").validate(&error).unwrap_or_else(|e| panic!("{e}: {error}"));
        assert_eq!(error["error"]["code"], json!("key_not_found"));
    }
}

/// Every routed path, with its parameters filled in.
fn concrete_routes() -> Vec<String> {
    ROUTES.iter().map(|r| r.replace("{namespace}", NAMESPACE).replace("{name}", "checkout")).collect()
}

#[tokio::test]
async fn every_route_needs_the_admin_token() {
    let bed = Bed::empty(Kind::Sqlite, &[]).await.unwrap();
    assert!(bed.token.starts_with("lwa-"), "a token was generated into the data folder");
    let error_schema = schema("Error");
    for path in concrete_routes() {
        for token in [None, Some("wrong"), Some(&bed.token[..bed.token.len() - 1])] {
            let mut request = bed.client.get(bed.gateway.admin_url(&path));
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} with {token:?}");
            assert_eq!(response.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
            let body: Value = response.json().await.unwrap();
            error_schema.validate(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        }
        // Bad parameters are no way around authentication either.
        let response = bed.client.get(bed.gateway.admin_url(&format!("{path}?limit=0&from=x"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(bed.get(&path).await.status().is_success(), "{path} with the token");
    }
    // Any other method: an OpenAI-shaped 405 that says what to use.
    let response = bed.client.post(bed.gateway.admin_url("/admin/v1/usage/records")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = response.json().await.unwrap();
    error_schema.validate(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // The probes and metrics stay open.
    for open in ["/healthz", "/readyz", "/metrics"] {
        let response = bed.client.get(bed.gateway.admin_url(open)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn a_token_file_or_variable_is_used_instead_of_a_generated_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let path = file.to_string_lossy().into_owned();
    let mut bed = Bed::empty(Kind::Sqlite, &["--admin-token-file", &path]).await.unwrap();
    assert_eq!(bed.token, "", "nothing generated");
    bed.token = "from-a-file".into();
    assert_eq!(bed.get("/admin/v1/usage/records").await.status(), StatusCode::OK);
    let mut bed = Bed::empty(Kind::Sqlite, &["--admin-token", "given"]).await.unwrap();
    bed.token = "given".into();
    assert_eq!(bed.get("/admin/v1/usage/summary").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let bed = Bed::empty(Kind::Sqlite, &[]).await.unwrap();
    let error_schema = schema("Error");
    let cases = [
        ("/admin/v1/usage/records?from=yesterday", Some("from"), "RFC 3339"),
        ("/admin/v1/usage/records?to=2026-11-29T10:00:00+01:00", Some("to"), "%2B"),
        ("/admin/v1/usage/records?from=2026-11-29T10:00:00Z&to=2026-11-29T09:00:00Z", Some("to"), "later"),
        ("/admin/v1/usage/records?cursor=nonsense", Some("cursor"), "next_cursor"),
        ("/admin/v1/usage/records?limit=0", Some("limit"), "1 to 1000"),
        ("/admin/v1/usage/records?limit=1001", Some("limit"), "1 to 1000"),
        ("/admin/v1/usage/records?outcome=fine", Some("outcome"), "client_aborted"),
        ("/admin/v1/usage/records?status=abc", Some("status"), "HTTP status"),
        ("/admin/v1/usage/records?model=a&model=b", Some("model"), "more than once"),
        ("/admin/v1/usage/records?modle=a", None, "modle"),
        ("/admin/v1/usage/summary?group_by=day,week", Some("group_by"), "week"),
        ("/admin/v1/usage/summary?outcome=ok", Some("outcome"), "rollups"),
        ("/admin/v1/usage/summary?limit=5", None, "limit"),
        ("/admin/v1/usage/summary?tz=Mars/Olympus", Some("tz"), "IANA"),
        ("/admin/v1/usage/summary?group_by=day&tz=Asia/Shanghai", Some("from"), "needs from"),
        ("/admin/v1/usage/summary?request_id=x", Some("request_id"), "rollups"),
        ("/admin/v1/usage/export?format=xml", Some("format"), "csv or jsonl"),
        ("/admin/v1/usage/export?from=2026-13-01T00:00:00Z", Some("from"), "RFC 3339"),
        ("/admin/v1/keys/team-a/checkout?verbose=1", None, "verbose"),
    ];
    for (query, param, mentions) in cases {
        let (status, body) = bed.get_json(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        error_schema.validate(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(body["error"]["param"].as_str(), param, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{query}: {message:?} should mention {mentions:?}");
    }
    let (status, body) = bed.get_json("/admin/v1/usage/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn the_openapi_document_covers_exactly_the_routes() {
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
    let documented: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(documented, ROUTES.into_iter().collect::<BTreeSet<_>>());
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(methods, ["get"], "{path}: every route is GET");
        let responses = item["get"]["responses"].as_object().unwrap();
        assert!(responses.contains_key("200") && responses.contains_key("401"), "{path}");
    }
    // Every component schema compiles (what the other tests validate against).
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        schema(name);
    }
    // And they do reject: a record missing a field, or with one too many.
    let record = json!({"request_id": "r", "client_request_id": null, "time": "2026-11-29T00:00:00Z", "namespace": "", "api_key": "",
        "channel": null, "model": "", "upstream_model": "", "status": 200, "outcome": "ok", "input_tokens": 0,
        "output_tokens": 0, "cached_input_tokens": 0, "reasoning_tokens": 0, "estimated": false,
        "cost_usd": "0.00", "duration_ms": 0, "ttft_ms": null, "attempts": []});
    let records = schema("RecordPage");
    assert!(records.is_valid(&json!({"data": [record.clone()], "next_cursor": null})));
    let mut missing = record.clone();
    missing.as_object_mut().unwrap().remove("cost_usd");
    assert!(!records.is_valid(&json!({"data": [missing], "next_cursor": null})));
    let mut extra = record.clone();
    extra["replica"] = json!("gw-0");
    assert!(!records.is_valid(&json!({"data": [extra], "next_cursor": null})));
    let mut bad_time = record;
    bad_time["time"] = json!("yesterday");
    assert!(!records.is_valid(&json!({"data": [bad_time], "next_cursor": null})), "formats are checked");
    let bed = Bed::empty(Kind::Sqlite, &[]).await.unwrap();
    let response = bed.get("/admin/v1/openapi.yaml").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), OPENAPI_YAML);
    // A route outside the document is not served.
    let response = bed.client.post(bed.gateway.admin_url("/admin/v1/usage/records")).bearer_auth(&bed.token);
    assert_eq!(response.send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn without_a_store_the_usage_api_says_why_it_is_absent() {
    let bed = Bed::empty(Kind::Sqlite, &["--store", "off"]).await.unwrap();
    // The usage API is off, but a token is still made, for the channel test.
    assert!(!bed.token.is_empty(), "a writable data folder gets an admin token");
    for path in concrete_routes() {
        let response = bed.client.get(bed.gateway.admin_url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], json!("usage_api_off"), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("--store off"), "{body}");
    }
    let response = bed.client.get(bed.gateway.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
