//! What the store answers: filters, pages, summaries, and the time buckets they use.

use crate::record::{Outcome, UsageRecord};

/// One hour, in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Start of the UTC hour holding `ms`.
pub fn floor_hour(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Start of the UTC day holding `ms`.
pub fn floor_day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

fn ceil_to(ms: i64, unit: i64) -> i64 {
    let floor = ms.div_euclid(unit) * unit;
    if floor == ms { ms } else { floor + unit }
}

/// Which usage a query covers. Empty lists and `None` mean "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Inclusive lower bound, unix milliseconds.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, unix milliseconds.
    pub to_ms: Option<i64>,
    /// Any of these namespaces (the caller's RBAC decides which it may see).
    pub namespaces: Vec<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    /// `Some("")` selects requests that reached no channel.
    pub channel: Option<String>,
}

/// Filters for raw records: the usage filter plus what only raw records know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFilter {
    pub usage: UsageFilter,
    /// HTTP status sent to the client.
    pub status: Option<u16>,
    pub outcome: Option<Outcome>,
    /// The one record with this request id (the `x-request-id` the client saw).
    pub request_id: Option<String>,
}

/// One page of records, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordPage {
    pub records: Vec<UsageRecord>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The position after a record in (time, request_id) descending order.
///
/// Opaque to clients: the text form is `<time_ms>.<hex request_id>`, which keeps it
/// URL-safe whatever characters a request id holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub time_ms: i64,
    pub request_id: String,
}

impl Cursor {
    pub(crate) fn after(record: &UsageRecord) -> Cursor {
        Cursor { time_ms: record.time, request_id: record.request_id.clone() }
    }

    pub(crate) fn encode(&self) -> String {
        format!("{}.{}", self.time_ms, hex::encode(&self.request_id))
    }

    pub(crate) fn decode(text: &str) -> Result<Cursor, crate::StoreError> {
        let bad = || crate::StoreError::BadCursor;
        let (time, id) = text.split_once('.').ok_or_else(bad)?;
        let time_ms = time.parse().map_err(|_| bad())?;
        let request_id = String::from_utf8(hex::decode(id).map_err(|_| bad())?).map_err(|_| bad())?;
        Ok(Cursor { time_ms, request_id })
    }
}

/// A summary dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupBy {
    Day,
    Hour,
    /// The namespace alone; with [`GroupBy::Channel`] it names a Channel object
    /// (channel names are unique per namespace only).
    Namespace,
    Key,
    Model,
    Channel,
}

impl GroupBy {
    /// Parses `day`, `hour`, `namespace`, `key`, `model` or `channel`.
    pub fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            "namespace" => GroupBy::Namespace,
            "key" => GroupBy::Key,
            "model" => GroupBy::Model,
            "channel" => GroupBy::Channel,
            _ => return None,
        })
    }
}

/// The identity of one summary row: the dimensions asked for are `Some`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// Start of the day or hour, unix milliseconds (UTC).
    pub bucket_ms: Option<i64>,
    pub namespace: Option<String>,
    /// `(namespace, key name)`: key names are unique per namespace only.
    pub api_key: Option<(String, String)>,
    pub model: Option<String>,
    /// `Some("")` groups requests that reached no channel.
    pub channel: Option<String>,
}

/// Usage totals of one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SummaryRow {
    pub group: GroupKey,
    pub requests: u64,
    /// Requests whose outcome is an error ([`Outcome::is_error`]).
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// Nano-dollars.
    pub cost_nanos: u64,
    /// Request duration percentiles in milliseconds, from the merged latency
    /// sketches (the upper bound of the bucket, within ~19% of the truth).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Whose usage, or whose budget: one ApiKey's, or a whole namespace's (every
/// key in it together).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Key { namespace: String, name: String },
    Namespace { namespace: String },
}

impl Scope {
    pub fn key(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Scope::Key { namespace: namespace.into(), name: name.into() }
    }

    pub fn namespace(namespace: impl Into<String>) -> Self {
        Scope::Namespace { namespace: namespace.into() }
    }

    /// The namespace of the key, or the namespace itself.
    pub fn namespace_name(&self) -> &str {
        match self {
            Scope::Key { namespace, .. } | Scope::Namespace { namespace } => namespace,
        }
    }

    /// The key's name; `None` for a namespace.
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Scope::Key { name, .. } => Some(name),
            Scope::Namespace { .. } => None,
        }
    }
}

/// One key's or namespace's usage since an instant (budgets, status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeUsage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Nano-dollars.
    pub cost_nanos: u64,
}

/// Which rollup table answers which part of a time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rollup {
    Hourly,
    Daily,
}

/// A half-open range `[from_ms, to_ms)` read from one rollup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RollupRange {
    pub table: Rollup,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Splits a summary's time range into daily rollups for the whole days inside it
/// and hourly rollups for the edges, so a month costs ~30 rows per group and not
/// 720. Bounds are rounded down to the hour: summaries have hour resolution.
pub(crate) fn rollup_ranges(from_ms: Option<i64>, to_ms: Option<i64>, hourly_only: bool) -> Vec<RollupRange> {
    // Open ends become the widest representable bucket range.
    let from = from_ms.map_or(i64::MIN / 2, floor_hour);
    let to = to_ms.map_or(i64::MAX / 2, floor_hour);
    if from >= to {
        return Vec::new();
    }
    let range = |table, from_ms, to_ms| RollupRange { table, from_ms, to_ms };
    let (day_from, day_to) = (ceil_to(from, DAY_MS), floor_day(to));
    if hourly_only || day_from >= day_to {
        return vec![range(Rollup::Hourly, from, to)];
    }
    let mut out = Vec::with_capacity(3);
    if from < day_from {
        out.push(range(Rollup::Hourly, from, day_from));
    }
    out.push(range(Rollup::Daily, day_from, day_to));
    if day_to < to {
        out.push(range(Rollup::Hourly, day_to, to));
    }
    out
}

/// Where one piece of an exact range is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Events,
    Rollup(Rollup),
}

/// A half-open range `[from_ms, to_ms)` read from one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub source: Source,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Splits a range into pieces that answer it exactly for any bounds: raw events
/// for the ragged hour at either end (at most an hour each), rollups (per
/// [`rollup_ranges`]) for the whole hours between. An open end reads no raw events.
pub(crate) fn exact_pieces(from_ms: Option<i64>, to_ms: Option<i64>, hourly_only: bool) -> Vec<Piece> {
    let from = from_ms.unwrap_or(i64::MIN / 2);
    let to = to_ms.unwrap_or(i64::MAX / 2);
    if from >= to {
        return Vec::new();
    }
    let (whole_from, whole_to) = (ceil_to(from, HOUR_MS), floor_hour(to));
    let events = |from_ms, to_ms| Piece { source: Source::Events, from_ms, to_ms };
    if whole_from >= whole_to {
        return vec![events(from, to)];
    }
    let mut out = Vec::with_capacity(5);
    if from < whole_from && from_ms.is_some() {
        out.push(events(from, whole_from));
    }
    out.extend(rollup_ranges(Some(whole_from), Some(whole_to), hourly_only).into_iter().map(|r| Piece {
        source: Source::Rollup(r.table),
        from_ms: r.from_ms,
        to_ms: r.to_ms,
    }));
    if whole_to < to && to_ms.is_some() {
        out.push(events(whole_to, to));
    }
    out
}

/// The pieces that answer [`ScopeUsage`] exactly for any `since`: raw events up to
/// the next full hour (at most one hour of one key, through an index), hourly
/// rollups up to the next full day, daily rollups from there on. Rollups are
/// updated in the same transaction as the events, so the current hour and day
/// are already in them and no "partial hour" is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsagePlan {
    /// Raw events in `[since, raw_to)`.
    pub raw_to: i64,
    /// Hourly rollups in `[raw_to, daily_from)`.
    pub daily_from: i64,
}

pub(crate) fn usage_plan(since_ms: i64) -> UsagePlan {
    let raw_to = ceil_to(since_ms, HOUR_MS);
    UsagePlan { raw_to, daily_from: ceil_to(raw_to, DAY_MS) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_any_request_id() {
        for id in ["", "a.b.c", "ünïcode/?&=", "0"] {
            let c = Cursor { time_ms: -5, request_id: id.into() };
            assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        }
        for bad in ["", "x.00", "1", "1.zz", "1.ff"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_use_days_inside_and_hours_at_the_edges() {
        let d = DAY_MS;
        let h = HOUR_MS;
        let hourly = |a, b| RollupRange { table: Rollup::Hourly, from_ms: a, to_ms: b };
        let daily = |a, b| RollupRange { table: Rollup::Daily, from_ms: a, to_ms: b };
        assert_eq!(
            rollup_ranges(Some(d + 3 * h + 5), Some(4 * d + 2 * h), false),
            vec![hourly(d + 3 * h, 2 * d), daily(2 * d, 4 * d), hourly(4 * d, 4 * d + 2 * h)]
        );
        assert_eq!(rollup_ranges(Some(d), Some(3 * d), false), vec![daily(d, 3 * d)]);
        assert_eq!(rollup_ranges(Some(d), Some(3 * d), true), vec![hourly(d, 3 * d)]);
        assert_eq!(rollup_ranges(Some(d + h), Some(d + 5 * h), false), vec![hourly(d + h, d + 5 * h)]);
        assert_eq!(rollup_ranges(Some(d + h), Some(d + h + 5), false), vec![]);
    }

    #[test]
    fn exact_pieces_read_raw_events_only_at_ragged_edges() {
        let (d, h) = (DAY_MS, HOUR_MS);
        let events = |a, b| Piece { source: Source::Events, from_ms: a, to_ms: b };
        let hourly = |a, b| Piece { source: Source::Rollup(Rollup::Hourly), from_ms: a, to_ms: b };
        let daily = |a, b| Piece { source: Source::Rollup(Rollup::Daily), from_ms: a, to_ms: b };
        assert_eq!(
            exact_pieces(Some(d + 3 * h + 5), Some(4 * d + 2 * h + 7), false),
            vec![
                events(d + 3 * h + 5, d + 4 * h),
                hourly(d + 4 * h, 2 * d),
                daily(2 * d, 4 * d),
                hourly(4 * d, 4 * d + 2 * h),
                events(4 * d + 2 * h, 4 * d + 2 * h + 7)
            ]
        );
        // Aligned bounds and open ends read no raw events.
        assert_eq!(exact_pieces(Some(d), None, false)[0], daily(d, floor_day(floor_hour(i64::MAX / 2))));
        assert!(exact_pieces(Some(d), None, false).iter().all(|p| p.source != Source::Events));
        assert_eq!(exact_pieces(Some(d + 5), Some(d + 9), false), vec![events(d + 5, d + 9)]);
        assert_eq!(exact_pieces(Some(d + 5), Some(d + 5), false), vec![]);
    }

    #[test]
    fn usage_reads_raw_events_only_up_to_the_next_hour() {
        let p = usage_plan(DAY_MS + HOUR_MS + 1);
        assert_eq!(p, UsagePlan { raw_to: DAY_MS + 2 * HOUR_MS, daily_from: 2 * DAY_MS });
        let aligned = usage_plan(DAY_MS);
        assert_eq!(aligned, UsagePlan { raw_to: DAY_MS, daily_from: DAY_MS });
    }
}
