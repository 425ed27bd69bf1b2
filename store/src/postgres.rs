//! The Postgres store, for clusters: events partitioned by UTC day, rollups upserted
//! in the inserting transaction, batches of events sent as one binary `COPY`
//! (arrays through one `UNNEST` insert when the batch repeats stored records).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Executor, Postgres, Row};

use crate::copy::{self, COPY_EVENTS};
use crate::query::{
    DAY_MS, GroupBy, RecordFilter, RecordPage, Rollup, Scope, ScopeUsage, SummaryRow, UsageFilter, floor_day,
};
use crate::rollup::{deltas, dense_text, to_i64};
use crate::sql::{self, Dialect};
use crate::{Cursor, MaintainReport, StoreError, StoreOptions, UsageRecord, UsageStore, migrations, now_ms};

const DIALECT: Dialect = Dialect {
    attempts: "attempts::text",
    sketch_join: "CROSS JOIN LATERAL unnest(u.latency) WITH ORDINALITY AS s(c, i)",
    sketch_bucket: "s.i - 1",
    sketch_count: "s.c",
};

/// Serialises migrations of replicas starting together (any constant works; this
/// one spells "weaver").
const MIGRATION_LOCK: i64 = 0x7765_6176_6572;

/// A Postgres usage store. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    options: StoreOptions,
    /// Days (start, unix ms) whose event and body partitions are known to exist,
    /// so inserts issue `CREATE TABLE` only for a day they have not seen.
    partitions: Arc<Mutex<BTreeSet<i64>>>,
}

impl PgStore {
    /// A pool for `url` that connects on first use, so a gateway can start (and
    /// spool) while the database is away.
    pub fn connect_lazy(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let connect: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect.application_name("llm-weaver"));
        Ok(PgStore { pool, options, partitions: Arc::default() })
    }

    /// The pool, for callers that keep other tables in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the partitions for `days` (day starts, unix ms) that are not known yet.
    async fn ensure_partitions(&self, days: impl IntoIterator<Item = i64>) -> Result<usize, StoreError> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            days.into_iter().filter(|d| !known.contains(d)).collect::<BTreeSet<_>>().into_iter().collect()
        };
        let mut created = 0;
        for day in missing {
            for table in PARTITIONED {
                let name = partition_name(table, day)?;
                let create = format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({day}) TO ({})",
                    day + DAY_MS
                );
                if let Err(err) = sqlx::raw_sql(&create).execute(&self.pool).await {
                    // Two replicas creating the same partition at once: one of them loses
                    // the race on the catalog; the partition exists all the same.
                    let exists: Option<String> =
                        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&name).fetch_one(&self.pool).await?;
                    if exists.is_none() {
                        return Err(err.into());
                    }
                } else if table == "usage_events" {
                    created += 1;
                }
            }
            self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(day);
        }
        Ok(created)
    }
}

/// The tables partitioned by UTC day, with the same partitions and retention.
const PARTITIONED: [&str; 2] = ["usage_events", "usage_bodies"];

/// `<table>_YYYYMMDD` for the UTC day starting at `day_ms`.
fn partition_name(table: &str, day_ms: i64) -> Result<String, StoreError> {
    let ts = jiff::Timestamp::from_millisecond(day_ms)
        .map_err(|_| StoreError::OutOfRange { field: "time", value: day_ms.unsigned_abs() })?;
    Ok(format!("{table}_{}", ts.strftime("%Y%m%d")))
}

/// The day a partition of `table` stands for, or `None` for a table we did not name.
fn partition_day(table: &str, name: &str) -> Option<i64> {
    let date = jiff::civil::Date::strptime("%Y%m%d", name.strip_prefix(table)?.strip_prefix('_')?).ok()?;
    Some(date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_millisecond())
}

/// Column arrays of a batch, in `usage_events` column order, borrowed from
/// the records, for the insert that skips records already stored.
#[derive(Default)]
struct Columns<'a> {
    time: Vec<i64>,
    request_id: Vec<&'a str>,
    namespace: Vec<&'a str>,
    api_key: Vec<&'a str>,
    channel: Vec<&'a str>,
    model: Vec<&'a str>,
    upstream_model: Vec<&'a str>,
    status: Vec<i32>,
    outcome: Vec<&'static str>,
    input: Vec<i64>,
    output: Vec<i64>,
    cached: Vec<i64>,
    cache_write: Vec<i64>,
    reasoning: Vec<i64>,
    estimated: Vec<bool>,
    cost: Vec<i64>,
    duration: Vec<i64>,
    ttft: Vec<Option<i64>>,
    replica: Vec<&'a str>,
    attempts: Vec<String>,
    client_request_id: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(records: &'a [UsageRecord]) -> Result<Columns<'a>, StoreError> {
        let mut c = Columns::default();
        for r in records {
            c.time.push(r.time);
            c.request_id.push(&r.request_id);
            c.namespace.push(&r.namespace);
            c.api_key.push(&r.api_key);
            c.channel.push(r.channel.as_deref().unwrap_or_default());
            c.model.push(&r.model);
            c.upstream_model.push(&r.upstream_model);
            c.status.push(i32::from(r.status));
            c.outcome.push(r.outcome.as_str());
            c.input.push(to_i64("input_tokens", r.input_tokens)?);
            c.output.push(to_i64("output_tokens", r.output_tokens)?);
            c.cached.push(to_i64("cached_input_tokens", r.cached_input_tokens)?);
            c.cache_write.push(to_i64("cache_write_tokens", r.cache_write_tokens)?);
            c.reasoning.push(to_i64("reasoning_tokens", r.reasoning_tokens)?);
            c.estimated.push(r.estimated);
            c.cost.push(to_i64("cost_nanos", r.cost_nanos)?);
            c.duration.push(to_i64("duration_ms", r.duration_ms)?);
            c.ttft.push(r.ttft_ms.map(|t| to_i64("ttft_ms", t)).transpose()?);
            c.replica.push(&r.replica);
            c.attempts.push(serde_json::to_string(&r.attempts)?);
            c.client_request_id.push(r.client_request_id.as_deref());
        }
        Ok(c)
    }

    /// The events insert with these columns bound, skipping rows already
    /// stored and answering the inserted rows' keys.
    fn insert_returning(&self) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(INSERT_EVENTS_RETURNING)
            .bind(&self.time)
            .bind(&self.request_id)
            .bind(&self.namespace)
            .bind(&self.api_key)
            .bind(&self.channel)
            .bind(&self.model)
            .bind(&self.upstream_model)
            .bind(&self.status)
            .bind(&self.outcome)
            .bind(&self.input)
            .bind(&self.output)
            .bind(&self.cached)
            .bind(&self.cache_write)
            .bind(&self.reasoning)
            .bind(&self.estimated)
            .bind(&self.cost)
            .bind(&self.duration)
            .bind(&self.ttft)
            .bind(&self.replica)
            .bind(&self.attempts)
            .bind(&self.client_request_id)
    }
}

const INSERT_EVENTS_RETURNING: &str = "INSERT INTO usage_events (time_ms, request_id, namespace, api_key, channel, model, \
    upstream_model, status, outcome, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, \
    reasoning_tokens, estimated, cost_nanos, duration_ms, ttft_ms, replica, attempts, client_request_id) \
    SELECT t.time_ms, t.request_id, t.namespace, t.api_key, t.channel, t.model, t.upstream_model, t.status, \
    t.outcome, t.input_tokens, t.output_tokens, t.cached_input_tokens, t.cache_write_tokens, t.reasoning_tokens, \
    t.estimated, t.cost_nanos, t.duration_ms, t.ttft_ms, t.replica, t.attempts::jsonb, t.client_request_id \
    FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[], \
    $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bool[], \
    $16::bigint[], $17::bigint[], $18::bigint[], $19::text[], $20::text[], $21::text[]) \
    AS t(time_ms, request_id, namespace, api_key, channel, model, upstream_model, status, outcome, input_tokens, \
    output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, estimated, cost_nanos, duration_ms, \
    ttft_ms, replica, attempts, client_request_id) \
    ON CONFLICT DO NOTHING RETURNING time_ms, request_id";

const INSERT_BODIES: &str = "INSERT INTO usage_bodies (time_ms, request_id, request, request_truncated, response, \
    response_truncated) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bool[], $5::text[], \
    $6::bool[]) ON CONFLICT DO NOTHING";

/// Sends a binary `COPY` body of events; answers the rows stored.
async fn copy_in(conn: &mut PgConnection, body: Vec<u8>) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(COPY_EVENTS).await?;
    copy.send(body).await?;
    copy.finish().await
}

fn upsert_rollup(table: &str) -> String {
    format!(
        "INSERT INTO {table} (bucket_ms, namespace, api_key, model, channel, requests, errors, input_tokens, \
         output_tokens, cached_input_tokens, cost_nanos, latency) \
         SELECT b, ns, k, m, c, r, e, i, o, ci, cost, lat::bigint[] FROM UNNEST($1::bigint[], $2::text[], \
         $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
         $11::bigint[], $12::text[]) AS t(b, ns, k, m, c, r, e, i, o, ci, cost, lat) \
         ON CONFLICT (bucket_ms, namespace, api_key, model, channel) DO UPDATE SET \
         requests = {table}.requests + excluded.requests, errors = {table}.errors + excluded.errors, \
         input_tokens = {table}.input_tokens + excluded.input_tokens, \
         output_tokens = {table}.output_tokens + excluded.output_tokens, \
         cached_input_tokens = {table}.cached_input_tokens + excluded.cached_input_tokens, \
         cost_nanos = {table}.cost_nanos + excluded.cost_nanos, \
         latency = weaver_sketch_add({table}.latency, excluded.latency)"
    )
}

impl UsageStore for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
        (&mut *tx).execute(sqlx::raw_sql(migrations::CREATE_TABLE)).await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM weaver_store_migrations").fetch_one(&mut *tx).await?;
        for m in migrations::pending(migrations::POSTGRES, current.unwrap_or(0))? {
            // Through the Executor trait: its boxed future keeps this one Send.
            (&mut *tx).execute(sqlx::raw_sql(m.sql)).await.map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
            sqlx::query("INSERT INTO weaver_store_migrations (version, name, applied_ms) VALUES ($1, $2, $3)")
                .bind(m.version)
                .bind(m.name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.maintain(now_ms()).await?;
        Ok(())
    }

    async fn maintain(&self, now_ms: i64) -> Result<MaintainReport, StoreError> {
        let today = floor_day(now_ms);
        let ahead = (0..=i64::from(self.options.partitions_ahead_days)).map(|d| today + d * DAY_MS);
        let created = self.ensure_partitions(ahead).await?;
        let cutoff = today - i64::from(self.options.retention_days) * DAY_MS;
        let mut dropped = 0;
        for table in PARTITIONED {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = $1::regclass",
            )
            .bind(table)
            .fetch_all(&self.pool)
            .await?;
            for name in names {
                // A partition goes once its whole day is older than the retention.
                let Some(day) = partition_day(table, &name) else { continue };
                if day + DAY_MS <= cutoff {
                    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {name}")).execute(&self.pool).await?;
                    self.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&day);
                    if table == "usage_events" {
                        dropped += 1;
                    }
                }
            }
        }
        let hourly_cutoff = today - i64::from(self.options.hourly_retention_days) * DAY_MS;
        let hourly = sqlx::query("DELETE FROM usage_hourly WHERE bucket_ms < $1")
            .bind(hourly_cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(MaintainReport { partitions_created: created, partitions_dropped: dropped, rows_deleted: hourly })
    }

    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        self.ensure_partitions(records.iter().map(|r| floor_day(r.time))).await?;
        let body = copy::events(records)?;
        let mut tx = self.pool.begin().await?;
        // Usually every record is new: one binary COPY stores them all. COPY
        // knows no ON CONFLICT, so a batch holding a record stored before (a
        // replay of a batch that was partly stored, or a record twice) fails
        // on the primary key; it is then redone as an insert that skips what
        // is there and says which rows are new, so that only those reach the
        // rollups.
        let fresh = match copy_in(&mut tx, body).await {
            Ok(_) => records.iter().collect(),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                tx = self.pool.begin().await?;
                let inserted = Columns::of(records)?.insert_returning().fetch_all(&mut *tx).await?;
                let keys = inserted
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?;
                crate::newly_inserted(records, keys)
            }
            Err(e) => return Err(e.into()),
        };
        let logged: Vec<(&UsageRecord, &crate::Bodies)> =
            fresh.iter().filter_map(|r| Some((*r, r.bodies.as_ref()?))).collect();
        if !logged.is_empty() {
            sqlx::query(INSERT_BODIES)
                .bind(logged.iter().map(|(r, _)| r.time).collect::<Vec<_>>())
                .bind(logged.iter().map(|(r, _)| r.request_id.as_str()).collect::<Vec<_>>())
                .bind(logged.iter().map(|(_, b)| b.request.as_str()).collect::<Vec<_>>())
                .bind(logged.iter().map(|(_, b)| b.request_truncated).collect::<Vec<_>>())
                .bind(logged.iter().map(|(_, b)| b.response.as_str()).collect::<Vec<_>>())
                .bind(logged.iter().map(|(_, b)| b.response_truncated).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        for (table, rows) in deltas(fresh.iter().copied()) {
            if rows.is_empty() {
                continue;
            }
            let mut buckets = Vec::with_capacity(rows.len());
            let mut names: [Vec<&str>; 4] = Default::default();
            let mut sums: [Vec<i64>; 6] = Default::default();
            let mut sketches = Vec::with_capacity(rows.len());
            for (k, t) in rows {
                buckets.push(k.bucket_ms);
                for (column, value) in names.iter_mut().zip([k.namespace, k.api_key, k.model, k.channel]) {
                    column.push(value);
                }
                for (sum, (field, v)) in sums.iter_mut().zip([
                    ("requests", t.requests),
                    ("errors", t.errors),
                    ("input_tokens", t.input_tokens),
                    ("output_tokens", t.output_tokens),
                    ("cached_input_tokens", t.cached_input_tokens),
                    ("cost_nanos", t.cost_nanos),
                ]) {
                    sum.push(to_i64(field, v)?);
                }
                sketches.push(dense_text(&t.latency, '{', '}'));
            }
            let table = match table {
                Rollup::Hourly => "usage_hourly",
                Rollup::Daily => "usage_daily",
            };
            let [r, e, i, o, ci, cost] = sums;
            let [ns, key, model, channel] = names;
            sqlx::query(&upsert_rollup(table))
                .bind(buckets)
                .bind(ns)
                .bind(key)
                .bind(model)
                .bind(channel)
                .bind(r)
                .bind(e)
                .bind(i)
                .bind(o)
                .bind(ci)
                .bind(cost)
                .bind(sketches)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(fresh.len() as u64)
    }

    async fn records(&self, filter: &RecordFilter, cursor: Option<&str>, limit: u32) -> Result<RecordPage, StoreError> {
        let cursor = cursor.map(Cursor::decode).transpose()?;
        let rows = sql::records_query::<Postgres>(&DIALECT, filter, cursor.as_ref(), limit)
            .build()
            .fetch_all(&self.pool)
            .await?;
        sql::records_page(&rows, limit)
    }

    async fn summary(&self, filter: &UsageFilter, group_by: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        let group_by = sql::normalise(group_by);
        let mut acc = sql::SummaryAcc::default();
        let hourly_only = group_by.contains(&GroupBy::Hour);
        for range in crate::query::rollup_ranges(filter.from_ms, filter.to_ms, hourly_only) {
            let rows =
                sql::summary_totals_query::<Postgres>(&range, filter, &group_by).build().fetch_all(&self.pool).await?;
            acc.add_totals(&rows, &group_by)?;
            let rows = sql::summary_sketch_query::<Postgres>(&DIALECT, &range, filter, &group_by)
                .build()
                .fetch_all(&self.pool)
                .await?;
            acc.add_sketches(&rows, &group_by)?;
        }
        Ok(acc.finish())
    }

    async fn totals(&self, filter: &UsageFilter, group_by: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
        let group_by = sql::normalise(group_by);
        let mut acc = sql::SummaryAcc::default();
        let hourly_only = group_by.contains(&GroupBy::Hour);
        for piece in crate::query::exact_pieces(filter.from_ms, filter.to_ms, hourly_only) {
            let rows =
                sql::exact_totals_query::<Postgres>(&piece, filter, &group_by).build().fetch_all(&self.pool).await?;
            acc.add_totals(&rows, &group_by)?;
        }
        Ok(acc.finish())
    }

    async fn usage(&self, scope: &Scope, since_ms: i64) -> Result<ScopeUsage, StoreError> {
        let plan = crate::query::usage_plan(since_ms);
        let row = sql::usage_query::<Postgres>(scope, since_ms, plan).build().fetch_one(&self.pool).await?;
        sql::usage_from_row(&row)
    }

    async fn bodies(&self, request_id: &str) -> Result<Option<crate::Bodies>, StoreError> {
        let row = sqlx::query(sql::SELECT_BODIES).bind(request_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(sql::bodies_from_row).transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_to_their_day() {
        let day = 19_700 * DAY_MS;
        let name = partition_name("usage_events", day).unwrap_or_default();
        assert_eq!(name, "usage_events_20231209");
        assert_eq!(partition_day("usage_events", &name), Some(day));
        assert_eq!(partition_day("usage_events", "usage_events_default"), None);
        assert_eq!(partition_day("usage_bodies", "usage_bodies_20231209"), Some(day));
        assert_eq!(partition_day("usage_events", "usage_bodies_20231209"), None);
    }
}
