//! `GET /admin/v1/usage/summary`: totals per group, from the rollups.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use jiff::tz::TimeZone;
use serde::Serialize;
use weaver_crds::money::Usd;
use weaver_store::{GroupBy, SummaryRow, UsageFilter, UsageStore, floor_day};

use crate::UsageApi;
use crate::auth::{Authorize, Resource};
use crate::error::ApiError;
use crate::keys::KeyDirectory;
use crate::params::{FILTERS, Params, RECORD_FILTERS};

const GROUPING: &[&str] = &["group_by", "tz"];

/// The most calendar days a `group_by=day` summary in a zone other than UTC
/// reads (each is its own store query).
pub const MAX_ZONED_DAYS: i32 = 400;

#[derive(Serialize)]
struct Summary {
    data: Vec<Row>,
}

/// One group. The group's fields are present exactly when grouped by them.
#[derive(Serialize)]
struct Row {
    /// Date in the reporting zone (UTC by default), `2026-11-29`.
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    /// Start of the hour, RFC 3339 with the reporting zone's offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    hour: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// `null` groups requests that reached no channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Option<String>>,
    requests: u64,
    errors: u64,
    /// `errors / requests`, 0 without requests.
    error_rate: f64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cost_usd: String,
    latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

/// `ms` as RFC 3339 with the offset `tz` has then (`Z` for UTC).
fn rfc3339(ms: i64, tz: &TimeZone) -> Option<String> {
    let ts = jiff::Timestamp::from_millisecond(ms).ok()?;
    if tz == &TimeZone::UTC {
        return Some(ts.to_string());
    }
    Some(ts.display_with_offset(tz.to_offset(ts)).to_string())
}

/// The UTC date of a day bucket, `2026-11-29`.
fn utc_date(ms: i64) -> Option<String> {
    let ts = jiff::Timestamp::from_millisecond(floor_day(ms)).ok()?;
    Some(jiff::tz::Offset::UTC.to_datetime(ts).date().to_string())
}

fn row(r: SummaryRow, group_by: &[GroupBy], tz: &TimeZone) -> Row {
    let has = |g| group_by.contains(&g);
    let bucket = r.group.bucket_ms;
    let (namespace, api_key) = match r.group.api_key {
        Some((ns, key)) => (Some(ns), Some(key)),
        None => (None, None),
    };
    Row {
        day: bucket.filter(|_| has(GroupBy::Day)).and_then(utc_date),
        hour: bucket.filter(|_| has(GroupBy::Hour)).and_then(|ms| rfc3339(ms, tz)),
        namespace,
        api_key,
        model: r.group.model,
        channel: r.group.channel.map(|c| Some(c).filter(|c| !c.is_empty())),
        requests: r.requests,
        errors: r.errors,
        error_rate: if r.requests == 0 { 0.0 } else { r.errors as f64 / r.requests as f64 },
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cached_input_tokens: r.cached_input_tokens,
        cost_usd: Usd(r.cost_nanos).to_string(),
        latency_ms: Latency { p50: r.p50_ms, p95: r.p95_ms, p99: r.p99_ms },
    }
}

pub(crate) async fn handle<S: UsageStore + Clone + 'static, A: Authorize, K: KeyDirectory>(
    State(api): State<Arc<UsageApi<S, A, K>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let visible = api.visible(&headers, Resource::Usage, &params).await?;
    params.check(&[FILTERS, RECORD_FILTERS, GROUPING])?;
    if let Some(&name) = RECORD_FILTERS.iter().find(|&&n| params.one(n).ok().flatten().is_some()) {
        return Err(ApiError::bad_parameter(
            name,
            format!("{name} filters raw records only; summaries come from rollups that do not keep it"),
        ));
    }
    let mut filter = params.usage_filter()?;
    let group_by = params.group_by()?;
    let tz = match params.one("tz")? {
        None => TimeZone::UTC,
        Some(name) => TimeZone::get(name).map_err(|e| {
            ApiError::bad_parameter("tz", format!("tz {name:?} is not an IANA time zone such as Asia/Shanghai: {e}"))
        })?,
    };
    let zoned_days = group_by.contains(&GroupBy::Day) && tz != TimeZone::UTC;
    let days = if zoned_days { Some(local_days(&filter, &tz)?) } else { None };
    let Some(namespaces) = visible.namespaces() else { return Ok(Json(Summary { data: Vec::new() }).into_response()) };
    filter.namespaces = namespaces;
    let Some(days) = days else {
        let rows = api.store.summary(&filter, &group_by).await.map_err(ApiError::from_store)?;
        let data = rows.into_iter().map(|r| row(r, &group_by, &tz)).collect();
        return Ok(Json(Summary { data }).into_response());
    };
    // The daily rollups hold UTC days: a day elsewhere is read as its own
    // range (whole UTC days from the daily rollup, the edges from the hourly
    // one), so its latency percentiles merge that day's sketches and no other.
    let rest: Vec<GroupBy> = group_by.iter().copied().filter(|g| *g != GroupBy::Day).collect();
    let mut data = Vec::new();
    for (date, from_ms, to_ms) in days {
        let day = UsageFilter { from_ms: Some(from_ms), to_ms: Some(to_ms), ..filter.clone() };
        let rows = api.store.summary(&day, &rest).await.map_err(ApiError::from_store)?;
        data.extend(rows.into_iter().map(|r| Row { day: Some(date.clone()), ..row(r, &rest, &tz) }));
    }
    Ok(Json(Summary { data }).into_response())
}

/// The calendar days of `tz` that `[from, to)` touches (to: now when open),
/// each as (date, start, end) clipped to the range, unix milliseconds.
fn local_days(filter: &UsageFilter, tz: &TimeZone) -> Result<Vec<(String, i64, i64)>, ApiError> {
    let from_ms = filter.from_ms.ok_or_else(|| {
        ApiError::bad_parameter("from", "group_by=day in a time zone other than UTC needs from (the first day's start)")
    })?;
    // An open end reads through today there (to its end: usage now is in it).
    let to_ms = filter.to_ms.unwrap_or_else(|| jiff::Timestamp::now().as_millisecond());
    let bad_time = |param: &'static str| ApiError::bad_parameter(param, format!("{param} is out of range"));
    let zoned = |ms: i64, param| {
        jiff::Timestamp::from_millisecond(ms).map(|t| t.to_zoned(tz.clone())).map_err(|_| bad_time(param))
    };
    let mut date = zoned(from_ms, "from")?.date();
    let last = zoned(to_ms.saturating_sub(1), "to")?.date();
    if (last - date).get_days() >= MAX_ZONED_DAYS {
        return Err(ApiError::bad_parameter(
            "from",
            format!("group_by=day in a time zone other than UTC covers at most {MAX_ZONED_DAYS} days"),
        ));
    }
    let start = |d: jiff::civil::Date| {
        d.to_zoned(tz.clone()).map(|z| z.timestamp().as_millisecond()).map_err(|_| bad_time("from"))
    };
    let mut out = Vec::new();
    while date <= last {
        let next = date.tomorrow().map_err(|_| bad_time("to"))?;
        let (lo, hi) = (start(date)?.max(from_ms), start(next)?.min(filter.to_ms.unwrap_or(i64::MAX)));
        if lo < hi {
            out.push((date.to_string(), lo, hi));
        }
        date = next;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn local_days_are_cut_at_the_zones_midnight() {
        let shanghai = TimeZone::get("Asia/Shanghai").unwrap();
        // Two Shanghai days: 29 Nov 00:00 +08 is 28 Nov 16:00 UTC.
        let f = UsageFilter {
            from_ms: Some(ms("2026-11-28T16:00:00Z")),
            to_ms: Some(ms("2026-11-30T16:00:00Z")),
            ..UsageFilter::default()
        };
        let days = local_days(&f, &shanghai).unwrap();
        assert_eq!(
            days,
            [
                ("2026-11-29".into(), ms("2026-11-28T16:00:00Z"), ms("2026-11-29T16:00:00Z")),
                ("2026-11-30".into(), ms("2026-11-29T16:00:00Z"), ms("2026-11-30T16:00:00Z")),
            ]
        );
        // A range starting mid-day is clipped to it.
        let f = UsageFilter { from_ms: Some(ms("2026-11-29T01:00:00Z")), ..f };
        assert_eq!(local_days(&f, &shanghai).unwrap()[0].1, ms("2026-11-29T01:00:00Z"));
        assert_eq!(local_days(&UsageFilter::default(), &shanghai).unwrap_err().param, Some("from"));
        let long = UsageFilter { from_ms: Some(0), to_ms: Some(ms("2026-01-01T00:00:00Z")), ..f };
        assert_eq!(local_days(&long, &shanghai).unwrap_err().param, Some("from"));
        let hour = rfc3339(ms("2026-11-29T01:00:00Z"), &shanghai).unwrap();
        assert_eq!(hour, "2026-11-29T09:00:00+08:00");
    }
}
