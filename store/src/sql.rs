//! SQL shared by both databases: the read queries (records, summaries, key usage)
//! are the same text on Postgres and SQLite except for a few [`Dialect`] pieces, so
//! they are built once here; each backend runs them on its own pool.

use std::collections::BTreeMap;

use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};
use weaver_crds::protocol::LatencySketch;

use crate::query::{
    Cursor, DAY_MS, GroupBy, GroupKey, HOUR_MS, Piece, RecordFilter, Rollup, RollupRange, Scope, Source, SummaryRow,
    UsageFilter, UsagePlan,
};
use crate::record::{Outcome, UsageRecord};
use crate::rollup::to_u64;
use crate::{Name, StoreError};

/// The pieces of SQL that differ between the databases.
pub(crate) struct Dialect {
    /// The attempts column read back as JSON text.
    pub attempts: &'static str,
    /// Joined to a rollup row `u`: one row `s` per sketch bucket.
    pub sketch_join: &'static str,
    /// The bucket index (from 0) and count of `s`.
    pub sketch_bucket: &'static str,
    pub sketch_count: &'static str,
}

/// The record columns in the order [`record_from_row`] reads them.
const RECORD_COLUMNS: &str = "time_ms, request_id, namespace, api_key, channel, model, upstream_model, status, \
    outcome, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, estimated, \
    cost_nanos, duration_ms, ttft_ms, replica";

/// `AND ...` for the namespace, key, model and channel of a filter.
fn push_dimensions<'q, DB>(qb: &mut QueryBuilder<'q, DB>, f: &UsageFilter)
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
{
    if !f.namespaces.is_empty() {
        qb.push(" AND namespace IN (");
        let mut list = qb.separated(", ");
        for ns in &f.namespaces {
            list.push_bind(ns.clone());
        }
        qb.push(")");
    }
    for (column, value) in [("api_key", &f.api_key), ("model", &f.model), ("channel", &f.channel)] {
        if let Some(value) = value {
            qb.push(format_args!(" AND {column} = ")).push_bind(value.clone());
        }
    }
}

/// One page of records, newest first, after `cursor`; asks for one more row than
/// `limit` to learn whether a next page exists (no `count(*)`).
pub(crate) fn records_query<'q, DB>(
    dialect: &Dialect,
    f: &RecordFilter,
    cursor: Option<&Cursor>,
    limit: u32,
) -> QueryBuilder<'q, DB>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    i32: Encode<'q, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new(format!(
        "SELECT {RECORD_COLUMNS}, {}, client_request_id FROM usage_events WHERE TRUE",
        dialect.attempts
    ));
    if let Some(from) = f.usage.from_ms {
        qb.push(" AND time_ms >= ").push_bind(from);
    }
    if let Some(to) = f.usage.to_ms {
        qb.push(" AND time_ms < ").push_bind(to);
    }
    push_dimensions(&mut qb, &f.usage);
    if let Some(status) = f.status {
        qb.push(" AND status = ").push_bind(i32::from(status));
    }
    if let Some(outcome) = f.outcome {
        qb.push(" AND outcome = ").push_bind(outcome.as_str().to_owned());
    }
    if let Some(id) = &f.request_id {
        // Either id: the gateway's (from an answer or a log line) or the
        // client's own (what the client knows); each has an index.
        qb.push(" AND (request_id = ").push_bind(id.clone());
        qb.push(" OR client_request_id = ").push_bind(id.clone()).push(")");
    }
    if let Some(c) = cursor {
        // Keyset pagination: a row-value comparison the (time_ms, request_id) index
        // answers directly, however deep the page.
        qb.push(" AND (time_ms, request_id) < (").push_bind(c.time_ms).push(", ").push_bind(c.request_id.clone());
        qb.push(")");
    }
    qb.push(" ORDER BY time_ms DESC, request_id DESC LIMIT ").push_bind(i64::from(limit) + 1);
    qb
}

/// Turns the rows of [`records_query`] into a page.
pub(crate) fn records_page<R>(rows: &[R], limit: u32) -> Result<crate::RecordPage, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut records = rows.iter().take(limit).map(record_from_row).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if rows.len() > limit { records.last().map(|r| Cursor::after(r).encode()) } else { None };
    records.shrink_to_fit();
    Ok(crate::RecordPage { records, next_cursor })
}

fn record_from_row<R>(row: &R) -> Result<UsageRecord, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let n = |i: usize, column: &'static str| -> Result<u64, StoreError> { to_u64(column, row.try_get::<i64, _>(i)?) };
    let name = |i: usize| -> Result<Name, StoreError> { Ok(row.try_get::<String, _>(i)?.into()) };
    let channel: String = row.try_get(4)?;
    let status: i32 = row.try_get(7)?;
    let outcome: String = row.try_get(8)?;
    let ttft: Option<i64> = row.try_get(17)?;
    let attempts: String = row.try_get(19)?;
    Ok(UsageRecord {
        time: row.try_get(0)?,
        request_id: row.try_get(1)?,
        client_request_id: row.try_get(20)?,
        namespace: name(2)?,
        api_key: name(3)?,
        channel: (!channel.is_empty()).then(|| channel.into()),
        model: name(5)?,
        upstream_model: name(6)?,
        status: u16::try_from(status)
            .map_err(|_| StoreError::Corrupt { column: "status", value: status.to_string() })?,
        outcome: Outcome::parse(&outcome).ok_or(StoreError::Corrupt { column: "outcome", value: outcome })?,
        input_tokens: n(9, "input_tokens")?,
        output_tokens: n(10, "output_tokens")?,
        cached_input_tokens: n(11, "cached_input_tokens")?,
        cache_write_tokens: n(12, "cache_write_tokens")?,
        reasoning_tokens: n(13, "reasoning_tokens")?,
        estimated: row.try_get(14)?,
        cost_nanos: n(15, "cost_nanos")?,
        duration_ms: n(16, "duration_ms")?,
        ttft_ms: ttft.map(|t| to_u64("ttft_ms", t)).transpose()?,
        replica: name(18)?,
        attempts: serde_json::from_str(&attempts)
            .map_err(|_| StoreError::Corrupt { column: "attempts", value: attempts.clone() })?,
        bodies: None,
    })
}

/// One request's bodies, newest first should the id repeat.
pub(crate) const SELECT_BODIES: &str = "SELECT request, request_truncated, response, response_truncated \
    FROM usage_bodies WHERE request_id = $1 ORDER BY time_ms DESC LIMIT 1";

pub(crate) fn bodies_from_row<R>(row: &R) -> Result<crate::Bodies, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(crate::Bodies {
        request: row.try_get(0)?,
        request_truncated: row.try_get(1)?,
        response: row.try_get(2)?,
        response_truncated: row.try_get(3)?,
    })
}

/// The summary's dimensions, each once, in a fixed order (the column order).
pub(crate) fn normalise(group_by: &[GroupBy]) -> Vec<GroupBy> {
    let mut g = group_by.to_vec();
    g.sort();
    g.dedup();
    g
}

fn group_columns(group_by: &[GroupBy]) -> Vec<String> {
    group_columns_at(group_by, false)
}

/// The group columns of rollup rows, or of raw events (`events`: whose time
/// column is `time_ms`, not an hour's `bucket_ms`).
fn group_columns_at(group_by: &[GroupBy], events: bool) -> Vec<String> {
    group_by
        .iter()
        .map(|g| match g {
            // Integer division: the start of the UTC day, from hourly or daily rows.
            GroupBy::Day if events => format!("(time_ms / {DAY_MS}) * {DAY_MS}"),
            GroupBy::Day => format!("(bucket_ms / {DAY_MS}) * {DAY_MS}"),
            GroupBy::Hour if events => format!("(time_ms / {HOUR_MS}) * {HOUR_MS}"),
            GroupBy::Hour => "bucket_ms".into(),
            GroupBy::Namespace => "namespace".into(),
            GroupBy::Key => "namespace, api_key".into(),
            GroupBy::Model => "model".into(),
            GroupBy::Channel => "channel".into(),
        })
        .collect()
}

fn table(range: &RollupRange) -> &'static str {
    match range.table {
        Rollup::Hourly => "usage_hourly",
        Rollup::Daily => "usage_daily",
    }
}

fn push_rollup_where<'q, DB>(qb: &mut QueryBuilder<'q, DB>, range: &RollupRange, f: &UsageFilter)
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    qb.push(" WHERE bucket_ms >= ").push_bind(range.from_ms).push(" AND bucket_ms < ").push_bind(range.to_ms);
    push_dimensions(qb, f);
}

fn push_group_by<DB: Database>(qb: &mut QueryBuilder<'_, DB>, columns: &[String], extra: Option<&str>) {
    let mut all: Vec<&str> = columns.iter().map(String::as_str).collect();
    all.extend(extra);
    if !all.is_empty() {
        qb.push(" GROUP BY ").push(all.join(", "));
    }
}

/// Totals per group from one rollup range.
pub(crate) fn summary_totals_query<'q, DB>(
    range: &RollupRange,
    f: &UsageFilter,
    group_by: &[GroupBy],
) -> QueryBuilder<'q, DB>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let columns = group_columns(group_by);
    let mut select: Vec<String> = columns.clone();
    // CAST: Postgres sums bigints into numeric; SQLite keeps integers either way.
    for c in ["requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "cost_nanos"] {
        select.push(format!("CAST(coalesce(sum({c}), 0) AS bigint)"));
    }
    let mut qb = QueryBuilder::new(format!("SELECT {} FROM {}", select.join(", "), table(range)));
    push_rollup_where(&mut qb, range, f);
    push_group_by(&mut qb, &columns, None);
    qb
}

/// Totals per group from one piece of an exact range, in the column layout of
/// [`summary_totals_query`] (so [`SummaryAcc::add_totals`] reads both).
pub(crate) fn exact_totals_query<'q, DB>(piece: &Piece, f: &UsageFilter, group_by: &[GroupBy]) -> QueryBuilder<'q, DB>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let table = match piece.source {
        Source::Rollup(table) => table,
        Source::Events => {
            let columns = group_columns_at(group_by, true);
            let errors = [Outcome::Ok, Outcome::UpstreamError, Outcome::ClientAborted, Outcome::Rejected]
                .into_iter()
                .filter(|o| o.is_error())
                .map(|o| format!("'{}'", o.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            let mut select = columns.clone();
            select.push("CAST(count(*) AS bigint)".into());
            select.push(format!("CAST(coalesce(sum(CASE WHEN outcome IN ({errors}) THEN 1 ELSE 0 END), 0) AS bigint)"));
            for c in ["input_tokens", "output_tokens", "cached_input_tokens", "cost_nanos"] {
                select.push(format!("CAST(coalesce(sum({c}), 0) AS bigint)"));
            }
            let mut qb = QueryBuilder::new(format!("SELECT {} FROM usage_events", select.join(", ")));
            qb.push(" WHERE time_ms >= ").push_bind(piece.from_ms).push(" AND time_ms < ").push_bind(piece.to_ms);
            push_dimensions(&mut qb, f);
            push_group_by(&mut qb, &columns, None);
            return qb;
        }
    };
    summary_totals_query(&RollupRange { table, from_ms: piece.from_ms, to_ms: piece.to_ms }, f, group_by)
}

/// Merged sketch buckets per group from one rollup range: (group..., bucket, count).
pub(crate) fn summary_sketch_query<'q, DB>(
    dialect: &Dialect,
    range: &RollupRange,
    f: &UsageFilter,
    group_by: &[GroupBy],
) -> QueryBuilder<'q, DB>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let columns = group_columns(group_by);
    let bucket = format!("CAST({} AS bigint)", dialect.sketch_bucket);
    let mut select = columns.clone();
    select.push(bucket.clone());
    select.push(format!("CAST(sum({}) AS bigint)", dialect.sketch_count));
    let mut qb =
        QueryBuilder::new(format!("SELECT {} FROM {} u {}", select.join(", "), table(range), dialect.sketch_join));
    push_rollup_where(&mut qb, range, f);
    qb.push(format_args!(" AND {} > 0", dialect.sketch_count));
    push_group_by(&mut qb, &columns, Some(&bucket));
    qb
}

/// Accumulates summary rows from any number of rollup ranges.
#[derive(Default)]
pub(crate) struct SummaryAcc {
    groups: BTreeMap<GroupKey, (SummaryRow, LatencySketch)>,
}

impl SummaryAcc {
    /// Reads the group columns at the start of a row; returns the key and the next column.
    fn group_key<R>(row: &R, group_by: &[GroupBy]) -> Result<(GroupKey, usize), StoreError>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    {
        let mut key = GroupKey::default();
        let mut i = 0;
        for g in group_by {
            match g {
                GroupBy::Day | GroupBy::Hour => key.bucket_ms = Some(row.try_get(i)?),
                GroupBy::Namespace => key.namespace = Some(row.try_get(i)?),
                GroupBy::Key => {
                    key.api_key = Some((row.try_get(i)?, row.try_get(i + 1)?));
                    i += 1;
                }
                GroupBy::Model => key.model = Some(row.try_get(i)?),
                GroupBy::Channel => key.channel = Some(row.try_get(i)?),
            }
            i += 1;
        }
        Ok((key, i))
    }

    pub(crate) fn add_totals<R>(&mut self, rows: &[R], group_by: &[GroupBy]) -> Result<(), StoreError>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    {
        for row in rows {
            let (key, i) = Self::group_key(row, group_by)?;
            let n = |j: usize, column: &'static str| -> Result<u64, StoreError> {
                to_u64(column, row.try_get::<i64, _>(i + j)?)
            };
            let requests = n(0, "requests")?;
            if requests == 0 {
                continue; // an aggregate over no rows
            }
            let (s, _) = self
                .groups
                .entry(key.clone())
                .or_insert_with(|| (SummaryRow { group: key, ..SummaryRow::default() }, LatencySketch::default()));
            s.requests += requests;
            s.errors += n(1, "errors")?;
            s.input_tokens += n(2, "input_tokens")?;
            s.output_tokens += n(3, "output_tokens")?;
            s.cached_input_tokens += n(4, "cached_input_tokens")?;
            s.cost_nanos += n(5, "cost_nanos")?;
        }
        Ok(())
    }

    pub(crate) fn add_sketches<R>(&mut self, rows: &[R], group_by: &[GroupBy]) -> Result<(), StoreError>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    {
        for row in rows {
            let (key, i) = Self::group_key(row, group_by)?;
            let bucket: i64 = row.try_get(i)?;
            let count = to_u64("latency", row.try_get(i + 1)?)?;
            let bucket = u16::try_from(bucket)
                .map_err(|_| StoreError::Corrupt { column: "latency", value: bucket.to_string() })?;
            if let Some((_, sketch)) = self.groups.get_mut(&key) {
                sketch.merge(&LatencySketch { counts: vec![(bucket, count)] });
            }
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<SummaryRow> {
        self.groups
            .into_values()
            .map(|(mut row, sketch)| {
                row.p50_ms = sketch.quantile(0.50);
                row.p95_ms = sketch.quantile(0.95);
                row.p99_ms = sketch.quantile(0.99);
                row
            })
            .collect()
    }
}

/// One key's or namespace's totals from raw events, hourly and daily rollups,
/// per [`UsagePlan`]: one statement, three index range scans (the key indexes
/// lead with the namespace, so a namespace reads a prefix of them).
pub(crate) fn usage_query<'q, DB>(scope: &Scope, since_ms: i64, plan: UsagePlan) -> QueryBuilder<'q, DB>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::new("SELECT CAST(coalesce(sum(r), 0) AS bigint), CAST(coalesce(sum(i), 0) AS bigint), ");
    qb.push("CAST(coalesce(sum(o), 0) AS bigint), CAST(coalesce(sum(c), 0) AS bigint) FROM (");
    qb.push("SELECT count(*) AS r, sum(input_tokens) AS i, sum(output_tokens) AS o, sum(cost_nanos) AS c ");
    let matching = |qb: &mut QueryBuilder<'q, DB>| {
        qb.push(" WHERE namespace = ").push_bind(scope.namespace_name().to_owned());
        if let Some(key) = scope.key_name() {
            qb.push(" AND api_key = ").push_bind(key.to_owned());
        }
    };
    qb.push("FROM usage_events");
    matching(&mut qb);
    qb.push(" AND time_ms >= ").push_bind(since_ms).push(" AND time_ms < ").push_bind(plan.raw_to);
    for (table, from, to) in
        [("usage_hourly", plan.raw_to, Some(plan.daily_from)), ("usage_daily", plan.daily_from, None)]
    {
        qb.push(format_args!(
            " UNION ALL SELECT sum(requests), sum(input_tokens), sum(output_tokens), sum(cost_nanos) FROM {table}"
        ));
        matching(&mut qb);
        qb.push(" AND bucket_ms >= ").push_bind(from);
        if let Some(to) = to {
            qb.push(" AND bucket_ms < ").push_bind(to);
        }
    }
    qb.push(") AS parts");
    qb
}

pub(crate) fn usage_from_row<R>(row: &R) -> Result<crate::ScopeUsage, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let n = |i: usize, column: &'static str| -> Result<u64, StoreError> { to_u64(column, row.try_get::<i64, _>(i)?) };
    Ok(crate::ScopeUsage {
        requests: n(0, "requests")?,
        input_tokens: n(1, "input_tokens")?,
        output_tokens: n(2, "output_tokens")?,
        cost_nanos: n(3, "cost_nanos")?,
    })
}
