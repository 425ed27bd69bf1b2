//! One suite, run against both stores. SQLite runs on a temporary file; Postgres
//! needs `WEAVER_TEST_POSTGRES_URL` (start a throwaway server with
//! `eval "$(e2e/postgres up)"`); each test gets a database of its own.

#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use weaver_store::{
    AttemptRecord, Bodies, DAY_MS, GroupBy, HOUR_MS, MaintainReport, Outcome, RecordFilter, RecordPage, Scope,
    ScopeUsage, Store, StoreError, StoreOptions, SummaryRow, UsageFilter, UsageRecord, UsageStore, Writer,
    WriterConfig, floor_day, floor_hour,
};

/// A fresh, migrated store of the given kind, and what must outlive it.
struct Bed {
    store: Store,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/nested/usage.db", dir.path().display());
    let store = Store::connect(&url, StoreOptions::default()).expect("connect sqlite");
    store.migrate().await.expect("migrate sqlite");
    Bed { store, _dir: dir }
}

async fn postgres() -> Option<Bed> {
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
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("weaver_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(pg.pool()).await.expect("create database");
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    let store = Store::connect(&format!("{base}/{name}"), StoreOptions::default()).expect("connect test db");
    store.migrate().await.expect("migrate postgres");
    Some(Bed { store, _dir: tempfile::tempdir().expect("tempdir") })
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { let bed = super::sqlite().await; super::$name(&bed.store, bed._dir.path()).await; })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { if let Some(bed) = super::postgres().await { super::$name(&bed.store, bed._dir.path()).await; } })*
        }
    };
}

both!(
    n_records_make_n_rows_and_exact_summaries,
    a_replayed_batch_adds_nothing,
    pagination_walks_every_record_once,
    filters_select_the_matching_records,
    usage_is_exact_for_any_instant,
    totals_are_exact_for_any_bounds,
    maintenance_applies_retention,
    bodies_are_stored_once_read_back_and_expire_with_their_events,
    writer_spools_while_the_store_is_down_and_replays_exactly_once,
    a_spool_left_by_a_crash_replays_on_start,
    concurrent_replicas_never_lease_more_than_the_budget,
    a_ledger_opens_with_the_spend_already_in_its_period,
);

const BASE: i64 = 1_750_000_000_000; // mid-June 2025

/// A deterministic mix: several namespaces, keys, models and channels, every
/// outcome, hours apart across three days.
fn mixed(n: usize, seed: u64) -> Vec<UsageRecord> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    (0..n)
        .map(|i| {
            let outcome = [Outcome::Ok, Outcome::Ok, Outcome::UpstreamError, Outcome::ClientAborted, Outcome::Rejected]
                [next(5) as usize];
            let channel = ["openai", "azure", ""][next(3) as usize];
            UsageRecord {
                request_id: format!("{seed}-{i:06}"),
                client_request_id: None,
                time: BASE + next(3 * DAY_MS as u64) as i64,
                namespace: ["team-a", "team-b"][next(2) as usize].into(),
                api_key: ["ci", "prod", ""][next(3) as usize].into(),
                channel: (!channel.is_empty()).then(|| channel.into()),
                model: ["gpt-4o", "claude", ""][next(3) as usize].into(),
                upstream_model: "up".into(),
                status: [200, 502, 499, 429][next(4) as usize],
                outcome,
                input_tokens: next(5_000),
                output_tokens: next(2_000),
                cached_input_tokens: next(100),
                cache_write_tokens: next(10),
                reasoning_tokens: next(50),
                estimated: next(2) == 0,
                cost_nanos: next(10_000_000_000),
                duration_ms: next(60_000),
                ttft_ms: (next(2) == 0).then(|| next(2_000)),
                replica: "gw-0".into(),
                attempts: (0..next(3))
                    .map(|a| AttemptRecord {
                        channel: format!("ch{a}").into(),
                        status: 500,
                        error: Some("boom".into()),
                        ttft_ms: None,
                    })
                    .collect(),
                bodies: None,
            }
        })
        .collect()
}

async fn all_records(store: &Store, filter: &RecordFilter, page: u32) -> Vec<UsageRecord> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let RecordPage { records, next_cursor } =
            store.records(filter, cursor.as_deref(), page).await.expect("records");
        assert!(records.len() <= page as usize);
        out.extend(records);
        match next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn sorted(mut v: Vec<UsageRecord>) -> Vec<UsageRecord> {
    v.sort_by(|a, b| (b.time, &b.request_id).cmp(&(a.time, &a.request_id)));
    v
}

/// The summary computed directly from raw records (the oracle).
fn oracle(records: &[UsageRecord], group_by: &[GroupBy]) -> BTreeMap<weaver_store::GroupKey, [u64; 6]> {
    let mut out: BTreeMap<_, [u64; 6]> = BTreeMap::new();
    for r in records {
        let mut key = weaver_store::GroupKey::default();
        for g in group_by {
            match g {
                GroupBy::Day => key.bucket_ms = Some(floor_day(r.time)),
                GroupBy::Hour => key.bucket_ms = Some(floor_hour(r.time)),
                GroupBy::Namespace => key.namespace = Some(r.namespace.to_string()),
                GroupBy::Key => key.api_key = Some((r.namespace.to_string(), r.api_key.to_string())),
                GroupBy::Model => key.model = Some(r.model.to_string()),
                GroupBy::Channel => key.channel = Some(r.channel.as_deref().unwrap_or_default().to_owned()),
            }
        }
        let t = out.entry(key).or_default();
        t[0] += 1;
        t[1] += u64::from(r.outcome.is_error());
        t[2] += r.input_tokens;
        t[3] += r.output_tokens;
        t[4] += r.cached_input_tokens;
        t[5] += r.cost_nanos;
    }
    out
}

fn totals(rows: &[SummaryRow]) -> BTreeMap<weaver_store::GroupKey, [u64; 6]> {
    rows.iter()
        .map(|r| {
            (
                r.group.clone(),
                [r.requests, r.errors, r.input_tokens, r.output_tokens, r.cached_input_tokens, r.cost_nanos],
            )
        })
        .collect()
}

async fn n_records_make_n_rows_and_exact_summaries(store: &Store, _: &std::path::Path) {
    let records = mixed(1_500, 1);
    // Uneven batches, one larger than a SQLite statement holds.
    let mut inserted = 0;
    for chunk in [&records[..1_200], &records[1_200..1_201], &records[1_201..]] {
        inserted += store.insert_batch(chunk).await.expect("insert");
    }
    assert_eq!(inserted, 1_500);
    let stored = all_records(store, &RecordFilter::default(), 500).await;
    assert_eq!(stored, sorted(records.clone()), "every field round-trips");

    let groupings: &[&[GroupBy]] = &[
        &[],
        &[GroupBy::Day],
        &[GroupBy::Hour],
        &[GroupBy::Key],
        &[GroupBy::Model, GroupBy::Channel],
        &[GroupBy::Day, GroupBy::Key, GroupBy::Model, GroupBy::Channel],
    ];
    for group_by in groupings {
        let rows = store.summary(&UsageFilter::default(), group_by).await.expect("summary");
        assert_eq!(totals(&rows), oracle(&records, group_by), "group by {group_by:?}");
        for row in &rows {
            let (p50, p99) = (row.p50_ms.unwrap_or_default(), row.p99_ms.unwrap_or_default());
            assert!(p50 > 0.0 && p50 <= p99, "{row:?}");
        }
    }
    // A range with ragged edges: hourly rollups at both ends, daily in between.
    let (from, to) = (floor_hour(BASE) + 5 * HOUR_MS, floor_hour(BASE) + 2 * DAY_MS + 7 * HOUR_MS);
    let filter =
        UsageFilter { from_ms: Some(from), to_ms: Some(to), namespaces: vec!["team-a".into()], ..Default::default() };
    let expected: Vec<_> =
        records.iter().filter(|r| r.time >= from && r.time < to && r.namespace == "team-a").cloned().collect();
    let rows = store.summary(&filter, &[GroupBy::Day, GroupBy::Model]).await.expect("summary");
    assert_eq!(totals(&rows), oracle(&expected, &[GroupBy::Day, GroupBy::Model]));
    // The latency sketch merged across rollup rows equals one sketch of the records.
    let mut sketch = weaver_crds::protocol::LatencySketch::default();
    for r in &expected {
        sketch.record(r.duration_ms as f64);
    }
    let whole = store.summary(&filter, &[]).await.expect("summary");
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].p95_ms, sketch.quantile(0.95));
}

async fn totals_are_exact_for_any_bounds(store: &Store, _: &std::path::Path) {
    let records = mixed(900, 11);
    store.insert_batch(&records).await.expect("insert");
    let h0 = floor_hour(BASE);
    let bounds = [
        (None, None),
        // Ragged at both ends: raw events, hourly and daily rollups.
        (Some(h0 + 5 * HOUR_MS + 1_234), Some(h0 + 2 * DAY_MS + 7 * HOUR_MS + 99)),
        // Inside one hour: raw events only.
        (Some(h0 + HOUR_MS + 10), Some(h0 + HOUR_MS + 1_800_000)),
        // A budget period: from a day start, open-ended (daily rollups only).
        (Some(floor_day(BASE) + DAY_MS), None),
        (None, Some(BASE + DAY_MS + 17)),
    ];
    let groupings: &[&[GroupBy]] = &[
        &[],
        &[GroupBy::Key],
        &[GroupBy::Namespace, GroupBy::Channel],
        &[GroupBy::Hour, GroupBy::Key],
        &[GroupBy::Day, GroupBy::Namespace, GroupBy::Model],
    ];
    for (from_ms, to_ms) in bounds {
        let expected: Vec<_> = records
            .iter()
            .filter(|r| r.namespace == "team-b")
            .filter(|r| from_ms.is_none_or(|t| r.time >= t) && to_ms.is_none_or(|t| r.time < t))
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{from_ms:?}..{to_ms:?} selects something");
        let filter = UsageFilter { from_ms, to_ms, namespaces: vec!["team-b".into()], ..Default::default() };
        for group_by in groupings {
            let rows = store.totals(&filter, group_by).await.expect("totals");
            assert_eq!(totals(&rows), oracle(&expected, group_by), "{from_ms:?}..{to_ms:?} by {group_by:?}");
            assert!(rows.iter().all(|r| r.p50_ms.is_none()), "no percentiles");
        }
    }
}

async fn a_replayed_batch_adds_nothing(store: &Store, _: &std::path::Path) {
    let records = mixed(300, 2);
    assert_eq!(store.insert_batch(&records).await.expect("insert"), 300);
    let before = store.summary(&UsageFilter::default(), &[GroupBy::Key]).await.expect("summary");
    // The same batch again, a batch overlapping it, and a batch with a duplicate inside.
    assert_eq!(store.insert_batch(&records).await.expect("replay"), 0);
    let mut overlap = records[250..].to_vec();
    overlap.extend(mixed(10, 3));
    overlap.push(overlap[overlap.len() - 1].clone());
    assert_eq!(store.insert_batch(&overlap).await.expect("overlap"), 10);
    let all = all_records(store, &RecordFilter::default(), 1000).await;
    assert_eq!(all.len(), 310);
    let after = store.summary(&UsageFilter::default(), &[GroupBy::Key]).await.expect("summary");
    let mut expected = records.clone();
    expected.extend(mixed(10, 3));
    assert_eq!(totals(&after), oracle(&expected, &[GroupBy::Key]));
    assert_ne!(totals(&before), totals(&after));
}

async fn pagination_walks_every_record_once(store: &Store, _: &std::path::Path) {
    let mut records = mixed(257, 4);
    // Ties on time must not lose or repeat records across page boundaries.
    for r in records.iter_mut().take(40) {
        r.time = BASE;
    }
    store.insert_batch(&records).await.expect("insert");
    for page in [1, 7, 40, 1000] {
        let walked = all_records(store, &RecordFilter::default(), page).await;
        let ids: HashSet<_> = walked.iter().map(|r| r.request_id.clone()).collect();
        assert_eq!((walked.len(), ids.len()), (257, 257), "page size {page}");
        assert_eq!(walked, sorted(records.clone()));
    }
    assert!(matches!(store.records(&RecordFilter::default(), Some("nonsense"), 5).await, Err(StoreError::BadCursor)));
}

async fn filters_select_the_matching_records(store: &Store, _: &std::path::Path) {
    let records = mixed(400, 5);
    store.insert_batch(&records).await.expect("insert");
    let filters = [
        RecordFilter { status: Some(502), ..Default::default() },
        RecordFilter { outcome: Some(Outcome::ClientAborted), ..Default::default() },
        RecordFilter { request_id: Some(records[7].request_id.clone()), ..Default::default() },
        RecordFilter {
            usage: UsageFilter {
                namespaces: vec!["team-b".into()],
                api_key: Some("ci".into()),
                model: Some("claude".into()),
                channel: Some("".into()),
                from_ms: Some(BASE + DAY_MS),
                to_ms: Some(BASE + 2 * DAY_MS),
            },
            ..Default::default()
        },
        RecordFilter {
            usage: UsageFilter { namespaces: vec!["team-a".into(), "team-b".into()], ..Default::default() },
            ..Default::default()
        },
    ];
    for f in filters {
        let u = &f.usage;
        let expected: Vec<_> = records
            .iter()
            .filter(|r| f.status.is_none_or(|s| r.status == s))
            .filter(|r| f.outcome.is_none_or(|o| r.outcome == o))
            .filter(|r| f.request_id.as_ref().is_none_or(|id| &r.request_id == id))
            .filter(|r| u.namespaces.is_empty() || u.namespaces.iter().any(|ns| *ns == r.namespace))
            .filter(|r| u.api_key.as_ref().is_none_or(|k| &r.api_key == k))
            .filter(|r| u.model.as_ref().is_none_or(|m| &r.model == m))
            .filter(|r| u.channel.as_ref().is_none_or(|c| r.channel.clone().unwrap_or_default() == *c))
            .filter(|r| u.from_ms.is_none_or(|t| r.time >= t) && u.to_ms.is_none_or(|t| r.time < t))
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{f:?} selects something");
        assert_eq!(all_records(store, &f, 50).await, sorted(expected), "{f:?}");
    }
}

async fn usage_is_exact_for_any_instant(store: &Store, _: &std::path::Path) {
    let records = mixed(600, 6);
    store.insert_batch(&records).await.expect("insert");
    for since in [BASE - DAY_MS, BASE, BASE + 1_234_567, floor_day(BASE) + DAY_MS, BASE + 2 * DAY_MS + 17] {
        for scope in [Scope::key("team-a", "prod"), Scope::namespace("team-a")] {
            let mut expected = ScopeUsage::default();
            let of_scope = |r: &&UsageRecord| {
                r.namespace == "team-a" && scope.key_name().is_none_or(|k| r.api_key == k) && r.time >= since
            };
            for r in records.iter().filter(of_scope) {
                expected.requests += 1;
                expected.input_tokens += r.input_tokens;
                expected.output_tokens += r.output_tokens;
                expected.cost_nanos += r.cost_nanos;
            }
            assert_eq!(store.usage(&scope, since).await.expect("usage"), expected, "{scope:?} since {since}");
        }
    }
}

async fn maintenance_applies_retention(store: &Store, _: &std::path::Path) {
    let old = UsageRecord { time: BASE - 40 * DAY_MS, ..mixed(1, 7).remove(0) };
    let new = UsageRecord { time: BASE, ..mixed(1, 8).remove(0) };
    store.insert_batch(&[old.clone(), new.clone()]).await.expect("insert");
    let report: MaintainReport = store.maintain(BASE).await.expect("maintain");
    let left = all_records(store, &RecordFilter::default(), 10).await;
    assert_eq!(left, vec![new]);
    match store {
        Store::Postgres(_) => assert!(report.partitions_dropped >= 1, "{report:?}"),
        Store::Sqlite(_) => assert!(report.rows_deleted >= 1, "{report:?}"),
    }
    // Daily rollups outlive the raw events.
    let since_old = store.summary(&UsageFilter { to_ms: Some(BASE - 30 * DAY_MS), ..Default::default() }, &[]).await;
    assert_eq!(since_old.expect("summary").first().map(|r| r.requests), Some(1));
}

async fn bodies_are_stored_once_read_back_and_expire_with_their_events(store: &Store, _: &std::path::Path) {
    let bodies = |n: usize| Bodies {
        request: format!("{{\"model\":\"m\",\"messages\":[{{\"content\":\"caf\u{e9} {n}\"}}]}}"),
        request_truncated: n.is_multiple_of(2),
        response: "data: {\"choices\":[]}\n\n".repeat(n + 1),
        response_truncated: true,
    };
    let mut records = mixed(6, 21);
    for (i, r) in records.iter_mut().enumerate().take(3) {
        r.bodies = Some(bodies(i));
    }
    let old = UsageRecord { time: BASE - 40 * DAY_MS, bodies: Some(bodies(9)), ..mixed(1, 22).remove(0) };
    records.push(old.clone());
    assert_eq!(store.insert_batch(&records).await.expect("insert"), 7);
    // A replay (the spool after a crash) stores nothing twice.
    assert_eq!(store.insert_batch(&records).await.expect("replay"), 0);
    for r in &records {
        assert_eq!(store.bodies(&r.request_id).await.expect("bodies"), r.bodies, "{}", r.request_id);
    }
    assert_eq!(store.bodies("no-such-request").await.expect("bodies"), None);
    // Records are read without their bodies.
    let page = store.records(&RecordFilter::default(), None, 100).await.expect("records");
    assert!(page.records.iter().all(|r| r.bodies.is_none()));
    store.maintain(BASE).await.expect("maintain");
    assert_eq!(store.bodies(&old.request_id).await.expect("bodies"), None, "expired with its event");
    assert_eq!(store.bodies(&records[0].request_id).await.expect("bodies"), records[0].bodies);
}

/// A store that fails while `down` is set (the database behind it is real).
#[derive(Clone)]
struct Flaky {
    inner: Store,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) { Err(StoreError::Database(sqlx::Error::PoolTimedOut)) } else { Ok(()) }
    }
}

impl UsageStore for Flaky {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.migrate().await
    }
    async fn maintain(&self, now_ms: i64) -> Result<MaintainReport, StoreError> {
        self.check()?;
        self.inner.maintain(now_ms).await
    }
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.insert_batch(records).await
    }
    async fn records(&self, f: &RecordFilter, c: Option<&str>, limit: u32) -> Result<RecordPage, StoreError> {
        self.inner.records(f, c, limit).await
    }
    async fn summary(&self, f: &UsageFilter, g: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        self.inner.summary(f, g).await
    }
    async fn totals(&self, f: &UsageFilter, g: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        self.inner.totals(f, g).await
    }
    async fn usage(&self, scope: &Scope, since: i64) -> Result<ScopeUsage, StoreError> {
        self.inner.usage(scope, since).await
    }
    async fn bodies(&self, request_id: &str) -> Result<Option<Bodies>, StoreError> {
        self.inner.bodies(request_id).await
    }
}

fn config(dir: &std::path::Path) -> WriterConfig {
    WriterConfig {
        batch_size: 64,
        batch_interval: Duration::from_millis(5),
        retry_interval: Duration::from_millis(20),
        // The records here are from 2025: retention would delete them.
        maintain_interval: None,
        ..WriterConfig::new(dir.join("spool"))
    }
}

/// Polls `cond` until it holds (bounded, so a bug fails instead of hanging).
async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    for _ in 0..3_000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn count(store: &Store) -> usize {
    all_records(store, &RecordFilter::default(), 1000).await.len()
}

async fn writer_spools_while_the_store_is_down_and_replays_exactly_once(store: &Store, dir: &std::path::Path) {
    let down = Arc::new(AtomicBool::new(false));
    let flaky = Flaky { inner: store.clone(), down: down.clone() };
    let writer = Writer::start(flaky, config(dir)).expect("writer");
    let handle = writer.handle();
    let mut records = mixed(900, 9);
    // One record written from the spool carries logged bodies.
    let logged = Bodies { request: "{\"model\":\"m\"}".into(), response: "data: {}\n\n".into(), ..Bodies::default() };
    records[450].bodies = Some(logged.clone());
    for r in &records[..300] {
        handle.try_record(r.clone()).expect("queued");
    }
    wait_for("the first records", || async { count(store).await == 300 }).await;
    down.store(true, Ordering::SeqCst);
    for r in &records[300..600] {
        handle.try_record(r.clone()).expect("queued");
    }
    wait_for("records to reach the spool", || async { handle.queue_depth() == 0 && handle.spool_bytes() > 0 }).await;
    assert_eq!(count(store).await, 300, "nothing written while down");
    down.store(false, Ordering::SeqCst);
    // Records arriving during replay queue up behind the spool.
    for r in &records[600..] {
        handle.try_record(r.clone()).expect("queued");
    }
    wait_for("the replay", || async { count(store).await == 900 && handle.spool_bytes() == 0 }).await;
    writer.flush_and_close().await.expect("close");
    assert_eq!(store.bodies(&records[450].request_id).await.expect("bodies"), Some(logged));
    records[450].bodies = None;
    assert_eq!(all_records(store, &RecordFilter::default(), 1000).await, sorted(records.clone()));
    let rows = store.summary(&UsageFilter::default(), &[GroupBy::Key]).await.expect("summary");
    assert_eq!(totals(&rows), oracle(&records, &[GroupBy::Key]), "rollups count each record once");
}

async fn a_spool_left_by_a_crash_replays_on_start(store: &Store, dir: &std::path::Path) {
    let records = mixed(500, 10);
    // A previous process: the store was down, it spooled, then died (its runtime is
    // dropped mid-flight, like SIGKILL; only the fsync'ed spool remains).
    let cfg = config(dir);
    let (inner, spool_records) = (store.clone(), records.clone());
    let cfg2 = cfg.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let flaky = Flaky { inner, down: Arc::new(AtomicBool::new(true)) };
            let writer = Writer::start(flaky, cfg2).expect("writer");
            let handle = writer.handle();
            for r in spool_records {
                handle.try_record(r).expect("queued");
            }
            wait_for("everything spooled", || async { handle.queue_depth() == 0 && handle.spool_bytes() > 0 }).await;
            // Wait for the last batch's append to land: the spool only grows.
            let mut last = 0;
            wait_for("the spool to settle", || {
                let now = handle.spool_bytes();
                let settled = now == last;
                last = now;
                async move { settled }
            })
            .await;
            std::mem::forget(writer); // no flush: the process "dies" here
        });
        drop(rt);
    })
    .join()
    .expect("crashed process");
    // Half of the spooled records had reached the store before the crash.
    store.insert_batch(&records[..250]).await.expect("insert");
    let writer = Writer::start(store.clone(), cfg).expect("writer");
    let handle = writer.handle();
    assert!(handle.spool_bytes() > 0, "the spool survived");
    wait_for("the replay", || async { handle.spool_bytes() == 0 }).await;
    writer.flush_and_close().await.expect("close");
    assert_eq!(all_records(store, &RecordFilter::default(), 1000).await, sorted(records.clone()));
    let rows = store.summary(&UsageFilter::default(), &[GroupBy::Model]).await.expect("summary");
    assert_eq!(totals(&rows), oracle(&records, &[GroupBy::Model]));
}

// Summaries equal sums over the raw records for arbitrary batches (SQLite: fast and
// always available; the same code runs on Postgres in the tests above).
proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn summaries_equal_sums_over_records(seed in 0u64..1_000_000, n in 1usize..200, split in 0usize..200,
                                         groups in proptest::sample::subsequence(
                                             vec![GroupBy::Day, GroupBy::Hour, GroupBy::Key, GroupBy::Model, GroupBy::Channel], 0..=3)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let bed = sqlite().await;
            let records = mixed(n, seed);
            let split = split.min(n);
            bed.store.insert_batch(&records[..split]).await.expect("insert");
            bed.store.insert_batch(&records[split..]).await.expect("insert");
            bed.store.insert_batch(&records).await.expect("replay");
            let rows = bed.store.summary(&UsageFilter::default(), &groups).await.expect("summary");
            assert_eq!(totals(&rows), oracle(&records, &groups));
            let ids: BTreeSet<_> = all_records(&bed.store, &RecordFilter::default(), 64).await.into_iter().map(|r| r.request_id).collect();
            assert_eq!(ids.len(), n);
        });
    }
}

/// Six replicas syncing at once (each spending part of its slice, wanting more,
/// finally giving back the rest): the ledger serialises them, grants never
/// exceed what is left, and what they settled is exactly what they spent.
async fn concurrent_replicas_never_lease_more_than_the_budget(store: &Store, _: &std::path::Path) {
    use weaver_store::ledger::{BudgetId, SyncRequest};
    const LIMIT: u64 = 1_000_000;
    let id = BudgetId { scope: Scope::key("team-a", "checkout"), period_ms: BASE };
    let tasks: Vec<_> = (0..6)
        .map(|r| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                let (mut slice, mut spent_total) = (0u64, 0u64);
                for round in 0..25 {
                    let spent = slice / 2;
                    let request = SyncRequest {
                        limit_nanos: LIMIT,
                        replica: format!("replica-{r}"),
                        spent_nanos: spent,
                        release_nanos: 0,
                        want_nanos: 40_000,
                        now_ms: BASE + round,
                        ttl_ms: 60_000,
                    };
                    let view = store.sync_budget(&id, &request).await.expect("sync");
                    assert!(view.slice_nanos <= slice - spent + 40_000);
                    spent_total += spent;
                    slice = view.slice_nanos;
                }
                let last = SyncRequest {
                    limit_nanos: LIMIT,
                    replica: format!("replica-{r}"),
                    spent_nanos: 0,
                    release_nanos: slice,
                    want_nanos: 0,
                    now_ms: BASE + 100,
                    ttl_ms: 60_000,
                };
                assert_eq!(store.sync_budget(&id, &last).await.expect("release").slice_nanos, 0);
                spent_total
            })
        })
        .collect();
    let mut spent = 0;
    for t in tasks {
        spent += t.await.expect("task");
    }
    let totals = store.budget_totals(&id).await.expect("totals").expect("a ledger row");
    assert_eq!((totals.settled_nanos, totals.leased_nanos), (spent, 0), "settled is what was spent; nothing held");
    assert!(spent <= LIMIT && spent > LIMIT / 2, "the budget was used, never exceeded: {spent}");
}

/// A budget added mid-period counts what was spent earlier in the period: by
/// the key, or, for a namespace's budget, by every key of the namespace; the
/// key's and the namespace's ledgers are separate.
async fn a_ledger_opens_with_the_spend_already_in_its_period(store: &Store, _: &std::path::Path) {
    use weaver_store::ledger::{BudgetId, SyncRequest};
    let period = floor_day(BASE);
    let earlier: Vec<UsageRecord> = mixed(40, 31)
        .into_iter()
        .map(|r| UsageRecord { namespace: "team-a".into(), api_key: "late".into(), time: period + HOUR_MS, ..r })
        .enumerate()
        .map(|(i, r)| UsageRecord { request_id: format!("late-{i}"), ..r })
        .collect();
    let before: UsageRecord = UsageRecord { time: period - HOUR_MS, request_id: "prior".into(), ..earlier[0].clone() };
    store.insert_batch(&earlier).await.expect("insert");
    store.insert_batch(std::slice::from_ref(&before)).await.expect("insert");
    let spent: u64 = earlier.iter().map(|r| r.cost_nanos).sum();
    let id = BudgetId { scope: Scope::key("team-a", "late"), period_ms: period };
    let request = SyncRequest {
        limit_nanos: spent + 1_000,
        replica: "r0".into(),
        spent_nanos: 0,
        release_nanos: 0,
        want_nanos: 10_000,
        now_ms: period + 2 * HOUR_MS,
        ttl_ms: 30_000,
    };
    let view = store.sync_budget(&id, &request).await.expect("sync");
    assert_eq!(view.totals.settled_nanos, spent, "the period's earlier spend, not the previous period's");
    assert_eq!(view.granted_nanos, 1_000, "only what is left of the budget");

    // Another key of the namespace, and one of another namespace.
    let colleague = UsageRecord { api_key: "colleague".into(), request_id: "colleague".into(), ..earlier[1].clone() };
    let stranger = UsageRecord { namespace: "team-b".into(), request_id: "stranger".into(), ..earlier[2].clone() };
    store.insert_batch(&[colleague.clone(), stranger]).await.expect("insert");
    let namespace = BudgetId { scope: Scope::namespace("team-a"), period_ms: period };
    let team_spent = spent + colleague.cost_nanos;
    let request = SyncRequest { limit_nanos: team_spent + 500, ..request };
    let view = store.sync_budget(&namespace, &request).await.expect("sync");
    assert_eq!(view.totals.settled_nanos, team_spent, "every key of the namespace, this period only");
    assert_eq!(view.granted_nanos, 500);
    let key = store.budget_totals(&id).await.expect("totals").expect("the key's row");
    assert_eq!((key.settled_nanos, key.leased_nanos), (spent, 1_000), "the key's ledger is its own");
}
