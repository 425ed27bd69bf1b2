//! The admin listener (`--admin-listen`): probes and metrics, kept off the
//! port clients use; the channel test (`channel_test.rs`), behind one layer
//! that checks the admin token (in cluster mode also the operator's token,
//! which its UI's channel test presents); and the usage API under `/admin/v1/`
//! (standalone with a store; it checks the admin token on every route).
//! The probes and metrics are the only routes of the gateway that do not
//! authenticate.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{StatusCode, header};
use weaver_usage_api::ApiError;

use super::channel_test;
use super::usage_api::AdminToken;
use crate::state::Gateway;

/// The open routes, all on the admin listener. Everything else on it (the
/// usage API, `/admin/v1/...`) authenticates.
pub(crate) const ADMIN_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Whether this gateway serves the usage API.
pub enum UsageApi {
    /// Its routes (built by `weaver_usage_api::router`).
    Served(Router),
    /// Not here; `/admin/v1/...` answers 404 with this reason.
    Off(&'static str),
}

/// Who may call the admin routes.
#[derive(Clone)]
pub(crate) struct AdminGate {
    /// The admin token, when the gateway was given one (or made one).
    pub token: Option<AdminToken>,
    /// In cluster mode: the operator too, with the token whose SHA-256 the
    /// live snapshot names (`operator_token_sha256`), read per call so a
    /// new operator key applies with the next snapshot.
    pub operator: Option<Arc<Gateway>>,
}

impl AdminGate {
    fn is_open(&self) -> bool {
        self.token.is_some() || self.operator.is_some()
    }

    fn check(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        let by_token = self.token.as_ref().map(|t| t.check(headers));
        if let Some(Ok(_)) = by_token {
            return Ok(());
        }
        if let Some(gw) = &self.operator
            && let Some(digest) = gw.live().snapshot.operator_token_sha256.as_deref().and_then(AdminToken::from_hex)
            && digest.check(headers).is_ok()
        {
            return Ok(());
        }
        match by_token {
            Some(Err(e)) => Err(e),
            _ => Err(ApiError::unauthenticated("missing or invalid token: these routes take the operator's")),
        }
    }
}

pub(super) fn router(gw: Arc<Gateway>, usage_api: UsageApi, gate: AdminGate) -> Router {
    let [healthz, readyz, metrics] = ADMIN_ROUTES;
    let open = Router::new()
        .route(healthz, get(|| async { "ok" }))
        .route(readyz, get(ready))
        .route(metrics, get(encode))
        .with_state(gw.clone());
    let admin = if gate.is_open() {
        // Every route added above this layer is authenticated by it.
        Router::new()
            .route(channel_test::PATH, post(channel_test::handle))
            .with_state(gw)
            .route_layer(middleware::from_fn_with_state(gate, authenticate))
    } else {
        Router::new().route(
            channel_test::PATH,
            any(|| async {
                ApiError::not_found(
                    "channel_test_off",
                    "this gateway has no admin token: give it WEAVER_ADMIN_TOKEN or --admin-token-file to test channels",
                )
            }),
        )
    };
    let open = open.merge(admin);
    match usage_api {
        UsageApi::Served(api) => open.merge(api),
        UsageApi::Off(reason) => open.merge(weaver_usage_api::off(reason)),
    }
}

/// The admin routes' authentication: the bearer admin token (or, in
/// cluster mode, the operator's), or 401.
async fn authenticate(State(gate): State<AdminGate>, request: Request, next: Next) -> Response {
    match gate.check(request.headers()) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() { "ready".into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response() }
}

async fn encode(State(gw): State<Arc<Gateway>>) -> Response {
    if let Some(sink) = &gw.usage {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        gw.metrics.usage_queue_depth.set(gauge(sink.writer.queue_depth() as u64));
        gw.metrics.usage_spool_bytes.set(gauge(sink.writer.spool_bytes()));
        // fetch_max: two scrapes at once cannot count twice.
        let m = &gw.metrics;
        m.usage_records_stored.inner().fetch_max(sink.writer.stored(), std::sync::atomic::Ordering::Relaxed);
        m.usage_records_spooled.inner().fetch_max(sink.writer.spooled(), std::sync::atomic::Ordering::Relaxed);
    }
    gw.metrics.routing.observe(&gw.registry, gw.nanos(tokio::time::Instant::now()));
    let body = weaver_telemetry::encode_metrics(gw.metrics.registry());
    ([(header::CONTENT_TYPE, weaver_telemetry::OPENMETRICS_CONTENT_TYPE)], body).into_response()
}
