//! `GET /admin/v1/usage/summary`: totals per group, from the rollups.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Serialize;
use weaver_crds::money::Usd;
use weaver_store::{GroupBy, SummaryRow, UsageStore, floor_day};

use crate::UsageApi;
use crate::auth::{Authorize, Resource};
use crate::error::ApiError;
use crate::keys::KeyDirectory;
use crate::params::{FILTERS, Params, RECORD_FILTERS};

const GROUPING: &[&str] = &["group_by"];

#[derive(Serialize)]
struct Summary {
    data: Vec<Row>,
}

/// One group. The group's fields are present exactly when grouped by them.
#[derive(Serialize)]
struct Row {
    /// UTC date, `2026-11-29`.
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    /// Start of the UTC hour, RFC 3339.
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

fn rfc3339(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms).ok().map(|t| t.to_string())
}

/// The UTC date of a day bucket, `2026-11-29`.
fn utc_date(ms: i64) -> Option<String> {
    let ts = jiff::Timestamp::from_millisecond(floor_day(ms)).ok()?;
    Some(jiff::tz::Offset::UTC.to_datetime(ts).date().to_string())
}

fn row(r: SummaryRow, group_by: &[GroupBy]) -> Row {
    let has = |g| group_by.contains(&g);
    let bucket = r.group.bucket_ms;
    let (namespace, api_key) = match r.group.api_key {
        Some((ns, key)) => (Some(ns), Some(key)),
        None => (None, None),
    };
    Row {
        day: bucket.filter(|_| has(GroupBy::Day)).and_then(utc_date),
        hour: bucket.filter(|_| has(GroupBy::Hour)).and_then(rfc3339),
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
    let Some(namespaces) = visible.namespaces() else { return Ok(Json(Summary { data: Vec::new() }).into_response()) };
    filter.namespaces = namespaces;
    let rows = api.store.summary(&filter, &group_by).await.map_err(ApiError::from_store)?;
    let data = rows.into_iter().map(|r| row(r, &group_by)).collect();
    Ok(Json(Summary { data }).into_response())
}
