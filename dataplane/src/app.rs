//! The HTTP surface: one ordered layer stack, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use http::{HeaderValue, StatusCode, header};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::proxy;

/// Request ids: a per-process random prefix and a counter (cheaper than a UUID,
/// unique enough to find one request in the logs).
#[derive(Clone)]
struct Ids {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for Ids {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.prefix)).ok().map(RequestId::new)
    }
}

/// The routes. The few open ones are listed in `open`; everything under `/v1`
/// authenticates inside its handler, against the snapshot it loaded.
pub fn router(gw: Arc<Gateway>) -> Router {
    let open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let api = Router::new()
        .route("/v1/chat/completions", post(proxy::chat))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::list_models))
        .route("/v1/models/{*id}", get(proxy::get_model));
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let ids = Ids { prefix: rand::random(), next: Arc::new(AtomicU64::new(1)) };
    // Outermost first: a panic anywhere becomes an OpenAI-shaped 500; every
    // answer carries the request id (the client's, or a new one).
    open.merge(api)
        .fallback(|| async { ApiError::route_not_found() })
        .with_state(gw)
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, ids))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("The gateway failed on this request.").into_response()))
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() { "ready".into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response() }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let mut response = gw.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Serves until `shutdown` resolves, then stops accepting, lets requests and
/// streams in flight finish for up to `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = router(gw.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        // Without it, replies on kept-alive connections stall ~40 ms on delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let begun = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let begun = begun.clone();
        async move {
            shutdown.await;
            gw.start_draining();
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            begun.notify_one();
        }
    };
    let mut server = tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(signal).into_future());
    tokio::select! {
        done = &mut server => return done.map_err(std::io::Error::other)?,
        () = begun.notified() => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(done) => done.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(grace = %humantime::format_duration(grace), "grace period over; closing remaining connections");
            server.abort();
            Ok(())
        }
    }
}
