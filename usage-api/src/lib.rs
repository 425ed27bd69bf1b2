//! The usage API of LLM Weaver: request records, summaries, streamed exports
//! and per-key budget status, read from the usage store (`weaver-store`) and
//! served as an axum [`Router`] by the standalone gateway (on its admin
//! listener) and by the operator (on its HTTPS port, behind Kubernetes RBAC).
//!
//! The embedding binary supplies two small things: [`Authorize`] (who the
//! caller is and which namespaces it may read) and [`KeyDirectory`] (which
//! keys exist and their budgets). The router knows no Kubernetes and no
//! gateway internals.
//!
//! Routes (every answer carries `Cache-Control: no-store`; errors are
//! OpenAI-shaped, see [`ApiError`]; the full contract is [`OPENAPI_YAML`]):
//! - `GET /admin/v1/usage/records`: one page of records, newest first.
//! - `GET /admin/v1/usage/summary`: totals per group, from the rollups.
//! - `GET /admin/v1/usage/export?format=csv|jsonl`: every record, streamed.
//! - `GET /admin/v1/keys/{namespace}/{name}`: a key's budget and period usage.
//! - `GET /admin/v1/openapi.yaml`: the OpenAPI 3.1 document.
//!
//! Money is a decimal USD string (`"0.000123"`) computed from integer
//! nano-dollars; times are RFC 3339 in UTC; durations are milliseconds.

mod auth;
mod error;
mod export;
mod keys;
mod params;
mod records;
mod summary;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, header};
use weaver_store::UsageStore;

pub use auth::{Access, Authorize, Resource, Scope};
pub use error::ApiError;
pub use export::{CSV_COLUMNS, PAGE as EXPORT_PAGE};
pub use keys::{KeyDirectory, KeyInfo, LedgerAmounts};
pub use params::{DEFAULT_LIMIT, MAX_LIMIT};

use auth::Visible;
use params::Params;

/// The OpenAPI 3.1 document of these routes (checked in as `usage-api/openapi.yaml`).
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// The routed paths, in axum's (and OpenAPI's) template syntax.
pub mod paths {
    pub const RECORDS: &str = "/admin/v1/usage/records";
    pub const SUMMARY: &str = "/admin/v1/usage/summary";
    pub const EXPORT: &str = "/admin/v1/usage/export";
    pub const KEY: &str = "/admin/v1/keys/{namespace}/{name}";
    pub const OPENAPI: &str = "/admin/v1/openapi.yaml";
}

/// Every routed path (all `GET`).
pub const ROUTES: [&str; 5] = [paths::RECORDS, paths::SUMMARY, paths::EXPORT, paths::KEY, paths::OPENAPI];

/// What the handlers share.
pub(crate) struct UsageApi<S, A, K> {
    store: S,
    authorize: A,
    keys: K,
}

impl<S, A: Authorize, K> UsageApi<S, A, K> {
    /// Authorizes reading `resource` in `requested` (empty: whatever the caller
    /// may see), and says which namespaces that comes to.
    async fn authorized(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        requested: &[String],
    ) -> Result<Visible, ApiError> {
        let scope = self.authorize.authorize(headers, Access { resource, namespaces: requested }).await?;
        Visible::resolve(scope, requested)
    }

    /// [`Self::authorized`] for the namespaces a query string names.
    async fn visible(&self, headers: &HeaderMap, resource: Resource<'_>, params: &Params) -> Result<Visible, ApiError> {
        self.authorized(headers, resource, &params.namespaces()).await
    }
}

/// The usage API's routes over `store`, authorized by `authorize`, with keys
/// from `keys`. Paths under `/admin/v1/` that are not routed answer a JSON 404.
pub fn router<S, A, K>(store: S, authorize: A, keys: K) -> Router
where
    S: UsageStore + Clone + 'static,
    A: Authorize,
    K: KeyDirectory,
{
    let api = Arc::new(UsageApi { store, authorize, keys });
    Router::new()
        .route(paths::RECORDS, get(records::handle::<S, A, K>))
        .route(paths::SUMMARY, get(summary::handle::<S, A, K>))
        .route(paths::EXPORT, get(export::handle::<S, A, K>))
        .route(paths::KEY, get(keys::handle::<S, A, K>))
        .route(paths::OPENAPI, get(openapi::<S, A, K>))
        .route("/admin/v1/{*rest}", axum::routing::any(not_routed))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(api)
        // Usage data is per caller and changes by the second: no cache keeps it.
        .layer(axum::middleware::map_response(no_store))
}

/// Where the usage API is not served (no store, say): every `/admin/v1/...`
/// URL answers 404 `usage_api_off` with `reason`, which should say how to
/// turn it on.
pub fn off(reason: &'static str) -> Router {
    Router::new().route(
        "/admin/v1/{*rest}",
        axum::routing::any(move || async move { ApiError::not_found("usage_api_off", reason) }),
    )
}

async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn not_routed() -> ApiError {
    ApiError::not_found("unknown_url", "unknown URL; GET /admin/v1/openapi.yaml lists the usage API's routes")
}

async fn openapi<S, A: Authorize, K>(
    State(api): State<Arc<UsageApi<S, A, K>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.authorized(&headers, Resource::Document, &[]).await?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response())
}
