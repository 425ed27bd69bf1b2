//! The HTTPS server: for gateways the snapshot stream and reports, and (merged
//! in from `usage_api.rs` and `ui.rs`) the usage API and the UI for people.
//! Every replica serves it; reports reaching a replica that does not lead are
//! passed on to the leader, which alone accounts for usage.

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

/// Reports are cumulative per gateway instance: one that has served tens of
/// thousands of keys sends a few MiB.
const REPORT_LIMIT: usize = 64 * 1024 * 1024;

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route(SNAPSHOTS_PATH, get(snapshots))
        .route(REPORTS_PATH, post(reports))
        .layer(axum::extract::DefaultBodyLimit::max(REPORT_LIMIT))
        .with_state(ctx)
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

/// How often an open stream re-checks that its token is still accepted and
/// allowed (the decision cache makes this cheap): revoking a gateway's RBAC or
/// letting its token expire cuts it off within this long.
const REAUTHORIZE: Duration = Duration::from_secs(30);

struct Stream {
    rx: tokio::sync::watch::Receiver<Arc<crate::state::Published>>,
    first: bool,
    headers: HeaderMap,
    authorized: Instant,
    _connected: Connected,
}

async fn snapshots(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let who = match ctx.authenticator.authorize(&headers, "get", "gatewaysnapshots").await {
        Ok(who) => who,
        Err(e) => return refuse(&e),
    };
    tracing::info!(user = %who.username, "gateway subscribed");
    let mut rx = ctx.published.clone();
    // Nothing is published before the first compilation; wait for it.
    while rx.borrow().line.is_empty() {
        if rx.changed().await.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    ctx.metrics.connected_gateways.inc();
    let state = Stream { rx, first: true, headers, authorized: Instant::now(), _connected: Connected(ctx.clone()) };
    let stream = futures_util::stream::unfold(state, move |mut st| {
        let ctx = ctx.clone();
        async move {
            if st.first {
                st.first = false;
                let line = st.rx.borrow_and_update().line.clone();
                return Some((Ok::<_, Infallible>(line), st));
            }
            let next = match tokio::time::timeout(KEEPALIVE, st.rx.changed()).await {
                Err(_) => Bytes::from_static(b"\n"),
                Ok(Ok(())) => st.rx.borrow_and_update().line.clone(),
                Ok(Err(_)) => return None,
            };
            if st.authorized.elapsed() >= REAUTHORIZE {
                if let Err(e) = ctx.authenticator.authorize(&st.headers, "get", "gatewaysnapshots").await {
                    tracing::warn!(error = %e, "gateway no longer authorised; closing its stream");
                    return None;
                }
                st.authorized = Instant::now();
            }
            Some((Ok(next), st))
        }
    });
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
    let (url, client) = match ctx.forward.target(&leader) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build a client for the leader");
            return (StatusCode::BAD_GATEWAY, "leader unreachable").into_response();
        }
    };
    let mut forward = client.post(url).body(body);
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

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 4096;

/// Serves `router` over TLS on `listener` until the task is dropped. The
/// acceptor is read per connection, so a renewed certificate applies to new
/// connections at once.
pub async fn serve_tls(listener: TcpListener, acceptor: Arc<arc_swap::ArcSwap<TlsAcceptor>>, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.load_full();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
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
