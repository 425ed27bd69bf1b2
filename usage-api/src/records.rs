//! `GET /admin/v1/usage/records`: one page of raw records, newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Serialize;
use weaver_store::{ApiRecord, UsageStore};

use crate::UsageApi;
use crate::auth::{Authorize, Resource};
use crate::error::ApiError;
use crate::keys::KeyDirectory;
use crate::params::{FILTERS, Params, RECORD_FILTERS};

const PAGING: &[&str] = &["cursor", "limit"];

/// `{"data":[record...],"next_cursor":"..."|null}`.
#[derive(Serialize)]
struct Page<'a> {
    data: Vec<ApiRecord<'a>>,
    next_cursor: Option<String>,
}

pub(crate) async fn handle<S: UsageStore + Clone + 'static, A: Authorize, K: KeyDirectory>(
    State(api): State<Arc<UsageApi<S, A, K>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let visible = api.visible(&headers, Resource::Usage, &params).await?;
    params.check(&[FILTERS, RECORD_FILTERS, PAGING])?;
    let mut filter = params.record_filter()?;
    let limit = params.limit()?;
    let cursor = params.one("cursor")?;
    let Some(namespaces) = visible.namespaces() else {
        return Ok(Json(Page { data: Vec::new(), next_cursor: None }).into_response());
    };
    filter.usage.namespaces = namespaces;
    let page = api.store.records(&filter, cursor, limit).await.map_err(ApiError::from_store)?;
    let body = Page { data: page.records.iter().map(|r| r.api()).collect(), next_cursor: page.next_cursor.clone() };
    Ok(Json(body).into_response())
}
