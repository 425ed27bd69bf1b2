//! The usage store of LLM Weaver: one [`UsageRecord`] per request, written in batches
//! by a [`Writer`] (with a local spool for store outages) into Postgres (clusters) or
//! SQLite (standalone), and read back as request logs, rollup summaries and per-key
//! usage for budgets and status.
//!
//! Used by the gateway and the operator alike, so it knows no HTTP server and no
//! Kubernetes runtime.
//!
//! Money is in nano-dollars (`u64`), durations in milliseconds, instants in unix
//! milliseconds (UTC) throughout.

mod copy;
mod error;
pub mod ledger;
mod migrations;
mod name;
mod postgres;
mod query;
mod record;
mod rollup;
pub mod spool;
mod sql;
mod sqlite;
mod writer;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

pub use error::{SpoolError, StoreError, WriterError};
pub use name::Name;
pub use postgres::PgStore;
pub use query::{
    DAY_MS, GroupBy, GroupKey, HOUR_MS, RecordFilter, RecordPage, Scope, ScopeUsage, SummaryRow, UsageFilter,
    floor_day, floor_hour,
};
pub use record::{ApiRecord, AttemptRecord, Bodies, Outcome, UsageRecord};
pub use sqlite::SqliteStore;
pub use writer::{Writer, WriterConfig, WriterHandle};

use query::Cursor;

/// Operations every usage store offers. Futures are `Send` so the writer and HTTP
/// handlers can run them on any runtime thread.
pub trait UsageStore: Send + Sync {
    /// Applies the embedded migrations the database lacks; run at start-up. Safe to
    /// run from several replicas at once.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Housekeeping to call periodically (say hourly) and at start-up: creates event
    /// partitions ahead (Postgres) and drops or deletes data past its retention.
    fn maintain(&self, now_ms: i64) -> impl Future<Output = Result<MaintainReport, StoreError>> + Send;

    /// Inserts records and updates the rollups in one transaction. Idempotent: a
    /// record already stored (same request id and time) is skipped and not counted
    /// again. Returns how many records were new.
    fn insert_batch(&self, records: &[UsageRecord]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records matching `filter`, newest first (by time, then request id), at most
    /// `limit` of them, after the `cursor` of a previous page.
    fn records(
        &self,
        filter: &RecordFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<RecordPage, StoreError>> + Send;

    /// Totals per group, answered from the hourly and daily rollups (never from raw
    /// events), at hour resolution: the range bounds are rounded down to the hour.
    /// Rows come ordered by group.
    fn summary(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupBy],
    ) -> impl Future<Output = Result<Vec<SummaryRow>, StoreError>> + Send;

    /// Totals per group over exactly `[from_ms, to_ms)` of `filter`, for any
    /// bounds: raw events for the ragged hour at either end, rollups for the
    /// whole hours and days between (rollups are written with the events, so the
    /// current hour is in them). No latency percentiles (`p*_ms` are `None`):
    /// this is the query for status and budgets, run for every object each
    /// status interval, so it skips the sketch work [`UsageStore::summary`] does.
    /// Rows come ordered by group.
    fn totals(
        &self,
        filter: &UsageFilter,
        group_by: &[GroupBy],
    ) -> impl Future<Output = Result<Vec<SummaryRow>, StoreError>> + Send;

    /// One key's or one namespace's usage since `since_ms` (unix milliseconds),
    /// exact for any instant: raw events up to the next full hour, then hourly
    /// rollups to the next full day, then daily rollups. Rollups are written
    /// with the events, so the current hour is already in them.
    fn usage(&self, scope: &Scope, since_ms: i64) -> impl Future<Output = Result<ScopeUsage, StoreError>> + Send;

    /// The logged bodies of the request with this id (the newest, should ids
    /// repeat), or `None` when its key did not log bodies or they have expired
    /// (bodies are kept as long as events).
    fn bodies(&self, request_id: &str) -> impl Future<Output = Result<Option<Bodies>, StoreError>> + Send;
}

/// Settings shared by both stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long an operation waits for a connection (and SQLite for its lock).
    pub acquire_timeout: Duration,
    /// Raw events older than this many days are dropped (Postgres: whole partitions).
    pub retention_days: u32,
    /// Hourly rollups older than this many days are deleted; daily rollups stay.
    pub hourly_retention_days: u32,
    /// Event partitions created ahead of today (Postgres).
    pub partitions_ahead_days: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            retention_days: 30,
            hourly_retention_days: 90,
            partitions_ahead_days: 3,
        }
    }
}

/// What one [`UsageStore::maintain`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub partitions_created: usize,
    pub partitions_dropped: usize,
    pub rows_deleted: u64,
}

/// The store chosen by URL: a closed set, dispatched without boxing.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    /// `postgres://...` (or `postgresql://...`) or `sqlite://PATH`. Connects on first
    /// use, so a process can start and spool while the database is away; call
    /// [`UsageStore::migrate`] to find out whether it answers.
    pub fn connect(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect_lazy(url, options)?))
        } else if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect_lazy(url, options)?))
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }
}

impl UsageStore for Store {
    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.migrate().await,
            Store::Sqlite(s) => s.migrate().await,
        }
    }

    async fn maintain(&self, now_ms: i64) -> Result<MaintainReport, StoreError> {
        match self {
            Store::Postgres(s) => s.maintain(now_ms).await,
            Store::Sqlite(s) => s.maintain(now_ms).await,
        }
    }

    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.insert_batch(records).await,
            Store::Sqlite(s) => s.insert_batch(records).await,
        }
    }

    async fn records(&self, filter: &RecordFilter, cursor: Option<&str>, limit: u32) -> Result<RecordPage, StoreError> {
        match self {
            Store::Postgres(s) => s.records(filter, cursor, limit).await,
            Store::Sqlite(s) => s.records(filter, cursor, limit).await,
        }
    }

    async fn summary(&self, filter: &UsageFilter, group_by: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        match self {
            Store::Postgres(s) => s.summary(filter, group_by).await,
            Store::Sqlite(s) => s.summary(filter, group_by).await,
        }
    }

    async fn totals(&self, filter: &UsageFilter, group_by: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        match self {
            Store::Postgres(s) => s.totals(filter, group_by).await,
            Store::Sqlite(s) => s.totals(filter, group_by).await,
        }
    }

    async fn usage(&self, scope: &Scope, since_ms: i64) -> Result<ScopeUsage, StoreError> {
        match self {
            Store::Postgres(s) => s.usage(scope, since_ms).await,
            Store::Sqlite(s) => s.usage(scope, since_ms).await,
        }
    }

    async fn bodies(&self, request_id: &str) -> Result<Option<Bodies>, StoreError> {
        match self {
            Store::Postgres(s) => s.bodies(request_id).await,
            Store::Sqlite(s) => s.bodies(request_id).await,
        }
    }
}

/// The records of a batch that the database reported as inserted, each once (a
/// batch may carry the same record twice; the database keeps the first).
fn newly_inserted(records: &[UsageRecord], inserted: Vec<(i64, String)>) -> Vec<&UsageRecord> {
    let mut fresh: HashSet<(i64, &str)> = inserted.iter().map(|(t, id)| (*t, id.as_str())).collect();
    records.iter().filter(|r| fresh.remove(&(r.time, r.request_id.as_str()))).collect()
}

/// The wall clock in unix milliseconds (migration bookkeeping, maintenance).
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
