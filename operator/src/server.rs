//! The gateway-facing HTTPS server: the snapshot stream and reports. Every
//! replica serves it; reports reaching a replica that does not lead are passed
//! on to the leader, which alone accounts for usage.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weaver_crds::protocol::{GatewayReport, REPORTS_PATH, SNAPSHOTS_PATH};

use crate::context::Context;
use crate::metrics::ErrorCategory;

/// Sent when nothing changed for this long, so gateways can tell a quiet
/// stream from a dead one.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new().route(SNAPSHOTS_PATH, get(snapshots)).route(REPORTS_PATH, post(reports)).with_state(ctx)
}

fn refuse(e: &crate::auth::AuthError) -> Response {
    tracing::warn!(error = %e, "gateway refused");
    (e.status(), e.to_string()).into_response()
}

/// Counts an open stream for as long as it lives.
struct Connected(Arc<Context>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.metrics.connected_gateways.dec();
    }
}

async fn snapshots(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let who = match ctx.authenticator.authorize(&headers, "get", "gatewaysnapshots").await {
        Ok(who) => who,
        Err(e) => return refuse(&e),
    };
    tracing::info!(user = %who.username, "gateway subscribed");
    ctx.metrics.connected_gateways.inc();
    let mut rx = ctx.published.clone();
    let guard = Connected(ctx.clone());
    let stream = futures_util::stream::unfold((rx.clone(), true, guard), |(mut rx, first, guard)| async move {
        if first {
            let line = rx.borrow_and_update().line.clone();
            return Some((Ok::<_, Infallible>(line), (rx, false, guard)));
        }
        match tokio::time::timeout(KEEPALIVE, rx.changed()).await {
            Err(_) => Some((Ok(Bytes::from_static(b"\n")), (rx, false, guard))),
            Ok(Ok(())) => {
                let line = rx.borrow_and_update().line.clone();
                Some((Ok(line), (rx, false, guard)))
            }
            Ok(Err(_)) => None,
        }
    });
    // Nothing is published before the first compilation; wait for it.
    while rx.borrow().line.is_empty() {
        if rx.changed().await.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    response
}

async fn reports(State(ctx): State<Arc<Context>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = ctx.authenticator.authorize(&headers, "create", "gatewayreports").await {
        return refuse(&e);
    }
    let report: GatewayReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed report: {e}")).into_response(),
    };
    let state = ctx.leadership.state();
    if state.is_leader {
        ctx.usage().ingest(&report, Instant::now());
        return StatusCode::NO_CONTENT.into_response();
    }
    let Some(leader) = state.leader_url else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no leader yet").into_response();
    };
    // Pass the gateway's own credentials along: the leader checks them itself.
    let mut forward = ctx.forward.post(format!("{}{REPORTS_PATH}", leader.trim_end_matches('/'))).body(body);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        forward = forward.header(header::AUTHORIZATION, auth);
    }
    match forward.send().await {
        Ok(r) => StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY).into_response(),
        Err(e) => {
            ctx.metrics.error(ErrorCategory::report);
            tracing::warn!(error = %e, "cannot forward a report to the leader");
            (StatusCode::BAD_GATEWAY, "leader unreachable").into_response()
        }
    }
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}
