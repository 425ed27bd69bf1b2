//! The SQLite store, the embedded default for standalone mode: one file in WAL mode,
//! the same tables as Postgres without partitions (retention deletes rows).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Executor, QueryBuilder, Sqlite};

use crate::query::{
    DAY_MS, GroupBy, RecordFilter, RecordPage, Rollup, Scope, ScopeUsage, SummaryRow, UsageFilter, floor_day,
};
use crate::rollup::{deltas, dense_text, to_i64};
use crate::sql::{self, Dialect};
use crate::{Cursor, MaintainReport, StoreError, StoreOptions, UsageRecord, UsageStore, migrations, now_ms};

const DIALECT: Dialect = Dialect {
    attempts: "attempts",
    sketch_join: ", json_each(u.latency) AS s",
    sketch_bucket: "s.key",
    sketch_count: "s.value",
};

/// SQLite allows 32,766 bound values per statement; 21 columns a row.
const ROWS_PER_STATEMENT: usize = 1_000;

/// A SQLite usage store. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    options: StoreOptions,
}

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) the database at a
    /// `sqlite://PATH` URL, in WAL mode so readers never block the writer.
    pub fn connect_lazy(url: &str, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses at most the last transactions on power loss, never
            // consistency; the spool covers what the store did not acknowledge.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.acquire_timeout);
        if let Some(parent) = connect.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.display().to_string(), source })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        Ok(SqliteStore { pool, options })
    }

    /// The pool, for callers that keep other tables in the same database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn upsert_rollup(table: &str) -> String {
    format!(
        "INSERT INTO {table} (bucket_ms, namespace, api_key, model, channel, requests, errors, input_tokens, \
         output_tokens, cached_input_tokens, cost_nanos, latency) "
    )
}

fn on_conflict(table: &str) -> String {
    // The sketch merge: element-wise sum of two JSON arrays of different lengths.
    format!(
        " ON CONFLICT (bucket_ms, namespace, api_key, model, channel) DO UPDATE SET \
         requests = {table}.requests + excluded.requests, errors = {table}.errors + excluded.errors, \
         input_tokens = {table}.input_tokens + excluded.input_tokens, \
         output_tokens = {table}.output_tokens + excluded.output_tokens, \
         cached_input_tokens = {table}.cached_input_tokens + excluded.cached_input_tokens, \
         cost_nanos = {table}.cost_nanos + excluded.cost_nanos, \
         latency = (SELECT json_group_array(v ORDER BY k) FROM (SELECT coalesce(a.key, b.key) AS k, \
         coalesce(a.value, 0) + coalesce(b.value, 0) AS v FROM json_each({table}.latency) AS a \
         FULL JOIN json_each(excluded.latency) AS b ON a.key = b.key))"
    )
}

impl UsageStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // One process owns a SQLite file (standalone mode), so no cross-process lock.
        let mut tx = self.pool.begin().await?;
        (&mut *tx).execute(sqlx::raw_sql(migrations::CREATE_TABLE)).await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM weaver_store_migrations").fetch_one(&mut *tx).await?;
        for m in migrations::pending(migrations::SQLITE, current.unwrap_or(0))? {
            // Through the Executor trait: its boxed future keeps this one Send.
            (&mut *tx).execute(sqlx::raw_sql(m.sql)).await.map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
            sqlx::query("INSERT INTO weaver_store_migrations (version, name, applied_ms) VALUES (?, ?, ?)")
                .bind(m.version)
                .bind(m.name)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn maintain(&self, now_ms: i64) -> Result<MaintainReport, StoreError> {
        let today = floor_day(now_ms);
        let cutoff = today - i64::from(self.options.retention_days) * DAY_MS;
        let events = sqlx::query("DELETE FROM usage_events WHERE time_ms < ?").bind(cutoff).execute(&self.pool).await?;
        let bodies = sqlx::query("DELETE FROM usage_bodies WHERE time_ms < ?").bind(cutoff).execute(&self.pool).await?;
        let hourly_cutoff = today - i64::from(self.options.hourly_retention_days) * DAY_MS;
        let hourly =
            sqlx::query("DELETE FROM usage_hourly WHERE bucket_ms < ?").bind(hourly_cutoff).execute(&self.pool).await?;
        Ok(MaintainReport {
            partitions_created: 0,
            partitions_dropped: 0,
            rows_deleted: events.rows_affected() + bodies.rows_affected() + hourly.rows_affected(),
        })
    }

    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        // Usually every record is new: then the count says so, and the rows'
        // keys need not come back. A replayed batch that was partly stored
        // before is redone, asking which rows are new, so that only those
        // reach the rollups.
        let fresh = if insert_events(&mut tx, records, false).await?.0 == records.len() as u64 {
            records.iter().collect()
        } else {
            tx.rollback().await?;
            tx = self.pool.begin().await?;
            crate::newly_inserted(records, insert_events(&mut tx, records, true).await?.1)
        };
        let logged: Vec<(&UsageRecord, &crate::Bodies)> =
            fresh.iter().filter_map(|r| Some((*r, r.bodies.as_ref()?))).collect();
        for chunk in logged.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO usage_bodies (time_ms, request_id, request, request_truncated, response, \
                 response_truncated) ",
            );
            qb.push_values(chunk, |mut b, (r, bodies)| {
                b.push_bind(r.time)
                    .push_bind(r.request_id.as_str())
                    .push_bind(bodies.request.as_str())
                    .push_bind(bodies.request_truncated)
                    .push_bind(bodies.response.as_str())
                    .push_bind(bodies.response_truncated);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        for (table, rows) in deltas(fresh.iter().copied()) {
            let name = match table {
                Rollup::Hourly => "usage_hourly",
                Rollup::Daily => "usage_daily",
            };
            let rows = rows.into_iter().collect::<Vec<_>>();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut values = Vec::with_capacity(chunk.len());
                for (k, t) in chunk {
                    let sums = [
                        to_i64("requests", t.requests)?,
                        to_i64("errors", t.errors)?,
                        to_i64("input_tokens", t.input_tokens)?,
                        to_i64("output_tokens", t.output_tokens)?,
                        to_i64("cached_input_tokens", t.cached_input_tokens)?,
                        to_i64("cost_nanos", t.cost_nanos)?,
                    ];
                    values.push((k, sums, dense_text(&t.latency, '[', ']')));
                }
                let mut qb = QueryBuilder::<Sqlite>::new(upsert_rollup(name));
                qb.push_values(values, |mut b, (k, sums, sketch)| {
                    b.push_bind(k.bucket_ms)
                        .push_bind(k.namespace)
                        .push_bind(k.api_key)
                        .push_bind(k.model)
                        .push_bind(k.channel);
                    for v in sums {
                        b.push_bind(v);
                    }
                    b.push_bind(sketch);
                });
                qb.push(on_conflict(name));
                qb.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(fresh.len() as u64)
    }

    async fn records(&self, filter: &RecordFilter, cursor: Option<&str>, limit: u32) -> Result<RecordPage, StoreError> {
        let cursor = cursor.map(Cursor::decode).transpose()?;
        let rows = sql::records_query::<Sqlite>(&DIALECT, filter, cursor.as_ref(), limit)
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
                sql::summary_totals_query::<Sqlite>(&range, filter, &group_by).build().fetch_all(&self.pool).await?;
            acc.add_totals(&rows, &group_by)?;
            let rows = sql::summary_sketch_query::<Sqlite>(&DIALECT, &range, filter, &group_by)
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
                sql::exact_totals_query::<Sqlite>(&piece, filter, &group_by).build().fetch_all(&self.pool).await?;
            acc.add_totals(&rows, &group_by)?;
        }
        Ok(acc.finish())
    }

    async fn usage(&self, scope: &Scope, since_ms: i64) -> Result<ScopeUsage, StoreError> {
        let plan = crate::query::usage_plan(since_ms);
        let row = sql::usage_query::<Sqlite>(scope, since_ms, plan).build().fetch_one(&self.pool).await?;
        sql::usage_from_row(&row)
    }

    async fn bodies(&self, request_id: &str) -> Result<Option<crate::Bodies>, StoreError> {
        let row = sqlx::query(sql::SELECT_BODIES).bind(request_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(sql::bodies_from_row).transpose()
    }
}

/// Inserts the events of `records` (duplicates of stored ones are skipped):
/// the number of rows inserted, and with `returning` their keys.
async fn insert_events(
    tx: &mut SqliteConnection,
    records: &[UsageRecord],
    returning: bool,
) -> Result<(u64, Vec<(i64, String)>), StoreError> {
    let mut count = 0;
    let mut inserted = Vec::new();
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for r in chunk {
            rows.push((
                r,
                [
                    to_i64("input_tokens", r.input_tokens)?,
                    to_i64("output_tokens", r.output_tokens)?,
                    to_i64("cached_input_tokens", r.cached_input_tokens)?,
                    to_i64("cache_write_tokens", r.cache_write_tokens)?,
                    to_i64("reasoning_tokens", r.reasoning_tokens)?,
                    to_i64("cost_nanos", r.cost_nanos)?,
                    to_i64("duration_ms", r.duration_ms)?,
                ],
                r.ttft_ms.map(|t| to_i64("ttft_ms", t)).transpose()?,
                serde_json::to_string(&r.attempts)?,
            ));
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO usage_events (time_ms, request_id, namespace, api_key, channel, model, upstream_model, \
             status, outcome, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, \
             reasoning_tokens, cost_nanos, duration_ms, estimated, ttft_ms, replica, attempts, client_request_id) ",
        );
        qb.push_values(rows, |mut b, (r, n, ttft, attempts)| {
            b.push_bind(r.time)
                .push_bind(r.request_id.as_str())
                .push_bind(r.namespace.as_str())
                .push_bind(r.api_key.as_str())
                .push_bind(r.channel.as_deref().unwrap_or_default())
                .push_bind(r.model.as_str())
                .push_bind(r.upstream_model.as_str())
                .push_bind(i32::from(r.status))
                .push_bind(r.outcome.as_str());
            for v in n {
                b.push_bind(v);
            }
            b.push_bind(r.estimated).push_bind(ttft).push_bind(r.replica.as_str()).push_bind(attempts);
            b.push_bind(r.client_request_id.as_deref());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        if returning {
            qb.push(" RETURNING time_ms, request_id");
            let rows = qb.build_query_as::<(i64, String)>().fetch_all(&mut *tx).await?;
            count += rows.len() as u64;
            inserted.extend(rows);
        } else {
            count += qb.build().execute(&mut *tx).await?.rows_affected();
        }
    }
    Ok((count, inserted))
}
