//! Records/s into Postgres through the batch writer, the writer's CPU per record,
//! and the Postgres rows written per 1,000 requests. Prints figures; not a test.
//!
//! `eval "$(e2e/postgres up)"; cargo bench -p weaver-store --bench write`
//! (WEAVER_BENCH_RECORDS sets the count, default 200,000).

use std::time::{Duration, Instant};

use weaver_store::{
    AttemptRecord, Outcome, Store, StoreOptions, UsageRecord, UsageStore, Writer, WriterConfig, now_ms,
};

/// User + system CPU time of this process (the writer; Postgres is another process).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split(' ').skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    let ticks: u64 = fields.iter().sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn record(i: usize, now: i64) -> UsageRecord {
    let key = i % 20;
    UsageRecord {
        request_id: format!("bench-{now}-{i:09}"),
        client_request_id: None,
        time: now + (i as i64 % 60_000),
        namespace: "team-a".into(),
        api_key: format!("key-{key}").into(),
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

async fn stat(store: &Store) -> (i64, i64) {
    let Store::Postgres(pg) = store else { return (0, 0) };
    // Backends report their counters when idle; give them that moment.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sqlx::query_as("SELECT tup_inserted, tup_updated FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pg.pool())
        .await
        .unwrap_or((0, 0))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("WEAVER_TEST_POSTGRES_URL") else {
        eprintln!("set WEAVER_TEST_POSTGRES_URL (eval \"$(e2e/postgres up)\") to run this benchmark");
        return Ok(());
    };
    let n: usize = std::env::var("WEAVER_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    // One core for the writer: a current-thread runtime (spool I/O would use the
    // blocking pool, but the store stays up here).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let admin = Store::connect(&url, StoreOptions::default())?;
        let Store::Postgres(pg) = &admin else { return Err("not a Postgres URL".into()) };
        let db = format!("weaver_bench_{}", std::process::id());
        sqlx::raw_sql(&format!("CREATE DATABASE {db}")).execute(pg.pool()).await?;
        let (base, _) = url.rsplit_once('/').ok_or("URL without a database")?;
        let store = Store::connect(&format!("{base}/{db}"), StoreOptions::default())?;
        store.migrate().await?;
        let fsync: String = match &store {
            Store::Postgres(p) => sqlx::query_scalar("SHOW fsync").fetch_one(p.pool()).await?,
            Store::Sqlite(_) => String::new(),
        };
        let dir = tempfile::tempdir()?;
        let now = now_ms();
        let records: Vec<UsageRecord> = (0..n).map(|i| record(i, now)).collect();
        let (ins0, upd0) = stat(&store).await;

        let writer = Writer::start(store.clone(), WriterConfig::new(dir.path()))?;
        let handle = writer.handle();
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let mut refused = 0;
        for r in records {
            let mut r = r;
            // The queue is bounded: when it is full, let the writer run (a gateway
            // would refuse the request instead). A sleep, not a yield: spinning
            // while the writer waits on Postgres would count as writer CPU.
            while let Err(back) = handle.try_record(r) {
                refused += 1;
                r = *back;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
        writer.flush_and_close().await?;
        let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
        let (ins1, upd1) = stat(&store).await;

        let rows = (ins1 - ins0) + (upd1 - upd0);
        println!("records:                      {n}");
        println!("postgres fsync:               {fsync}");
        println!("wall:                         {:.2} s", wall.as_secs_f64());
        println!("records/s (wall):             {:.0}", n as f64 / wall.as_secs_f64());
        println!(
            "writer CPU:                   {:.2} s ({:.1} µs/record)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
        println!("records/s per writer CPU-s:   {:.0}", n as f64 / cpu.as_secs_f64().max(1e-9));
        println!("queue-full retries:           {refused}");
        println!("postgres rows inserted:       {}", ins1 - ins0);
        println!("postgres rows updated:        {}", upd1 - upd0);
        println!("rows written per 1,000 req:   {:.1}", rows as f64 * 1_000.0 / n as f64);
        drop(store);
        sqlx::raw_sql(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(pg.pool()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
