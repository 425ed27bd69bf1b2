//! The usage UI on the admin listener of a standalone gateway with a usage
//! store: its files (`weaver-dashboard`) under `/ui/`, the session that
//! replaces the admin token in the browser, and the inventory (keys,
//! channels, models of the live snapshot) its pages list.
//!
//! Sessions (`weaver_dashboard::session`): `POST /ui/api/session {"token"}`
//! exchanges the admin token for a signed, expiring cookie under a key drawn
//! at start-up (a restart logs everyone out).
//!
//! With a session the UI also tests channels
//! (`POST /ui/api/channels/{namespace}/{name}/test`: the admin listener's
//! channel test, see [`super::channel_test`]) and runs the playground:
//! `/ui/api/playground/v1/...` is the client API (chat completions, models...)
//! served in-process with the API key the page sends, exactly as the client
//! listener serves it (the key's limits, budget and usage record apply).
//! Served here rather than by the browser calling the client listener, so
//! the page keeps its `connect-src 'self'` policy, the client listener needs
//! no CORS opening for the admin UI's origin, and only a signed-in admin
//! reaches it even when the client listener is on another host or behind
//! a proxy the browser cannot reach.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode, header};
use weaver_dashboard::inventory::{self, Inventory, KeyView};
use weaver_dashboard::session::{CSRF_HEADER, Mode, SessionInfo, Sessions, login_token, no_session, no_store};
use weaver_usage_api::{Access, ApiError, Authorize, Scope};

use super::usage_api::AdminToken;
use crate::state::Gateway;

/// The usage API's gate in a standalone gateway: the admin token as
/// `Authorization: Bearer`, or a UI session cookie. Either sees every namespace.
pub struct AdminAuth {
    pub token: Arc<AdminToken>,
    pub sessions: Arc<Sessions>,
}

impl Authorize for AdminAuth {
    async fn authorize(&self, headers: &HeaderMap, _access: Access<'_>) -> Result<Scope, ApiError> {
        if headers.get(header::AUTHORIZATION).is_none() && self.sessions.of_request(headers).is_some() {
            return Ok(Scope::All);
        }
        self.token.check(headers)
    }
}

struct Ui {
    auth: AdminAuth,
    gw: Arc<Gateway>,
}

/// The UI's files and its `/ui/api/` routes.
pub fn router(auth: AdminAuth, gw: Arc<Gateway>) -> Router {
    let ui = Arc::new(Ui { auth, gw });
    Router::new()
        .route("/ui/api/session", get(session).post(login).delete(logout))
        .route("/ui/api/session/refresh", post(refresh))
        .route("/ui/api/inventory", get(inventory))
        .route(CHANNEL_TEST, post(test_channel))
        .route(PLAYGROUND, any(playground))
        .with_state(ui)
        .layer(axum::middleware::map_response(no_store))
        .merge(weaver_dashboard::session::mode_router(Mode::Standalone, None))
        .merge(weaver_dashboard::router())
}

/// The channel test for a signed-in page (the same test as the admin route).
pub const CHANNEL_TEST: &str = "/ui/api/channels/{namespace}/{name}/test";
/// The client API under `/v1/` for a signed-in page (the playground).
pub const PLAYGROUND: &str = "/ui/api/playground/v1/{*rest}";

/// `POST /ui/api/channels/{namespace}/{name}/test`: the session and its CSRF
/// token, then the channel test.
async fn test_channel(
    State(ui): State<Arc<Ui>>,
    path: axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = ui.auth.sessions.mutating(&headers) {
        return e.into_response();
    }
    super::channel_test::handle(State(ui.gw.clone()), path, body).await.into_response()
}

/// `/ui/api/playground/v1/...`: the session (and its CSRF token, but for
/// reads), then the client API at `/v1/...` with the page's own key. The
/// session's cookie and CSRF token are not passed on.
async fn playground(State(ui): State<Arc<Ui>>, request: axum::extract::Request) -> Response {
    let sessions = &ui.auth.sessions;
    let checked = if request.method() == http::Method::GET {
        sessions.of_request(request.headers()).map(drop).ok_or_else(no_session)
    } else {
        sessions.mutating(request.headers()).map(drop)
    };
    if let Err(e) = checked {
        return e.into_response();
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let (mut parts, body) = request.into_parts();
    let Some(path) = parts.uri.path().strip_prefix("/ui/api/playground") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let uri = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    match uri.parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    }
    parts.headers.remove(header::COOKIE);
    parts.headers.remove(CSRF_HEADER);
    crate::api::serve_one(ui.gw.clone(), peer, http::Request::from_parts(parts, body)).await.into_response()
}

/// `GET /ui/api/session`: the current session (a reloaded page learns its CSRF token).
async fn session(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    match ui.auth.sessions.of_request(&headers) {
        Some(c) => Json(SessionInfo::admin(&c)).into_response(),
        None => no_session().into_response(),
    }
}

/// `POST /ui/api/session`: the admin token for a session.
async fn login(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let token = match login_token(&headers, &body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if !ui.auth.token.matches(&token) {
        return ApiError::unauthenticated("invalid admin token").into_response();
    }
    ui.auth.sessions.start(None, SessionInfo::admin)
}

/// `POST /ui/api/session/refresh`.
async fn refresh(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    ui.auth.sessions.refresh(&headers, SessionInfo::admin)
}

/// `DELETE /ui/api/session`.
async fn logout(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    ui.auth.sessions.logout(&headers)
}

/// `GET /ui/api/inventory`.
async fn inventory(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let access = Access { resource: weaver_usage_api::Resource::Document, namespaces: &[] };
    if let Err(e) = ui.auth.authorize(&headers, access).await {
        return e.into_response();
    }
    let live = ui.gw.live();
    let snapshot = &live.snapshot;
    let keys = snapshot
        .keys
        .iter()
        .zip(&live.keys)
        .map(|(k, rt)| {
            let last = rt.state.last_used.load(std::sync::atomic::Ordering::Relaxed);
            // Standalone keys are edited in their manifest, never here.
            KeyView::of(k, (last > 0).then_some(last), false)
        })
        .collect();
    let body = Inventory {
        gateway_version: env!("CARGO_PKG_VERSION"),
        snapshot_version: ui.gw.applied_version(),
        keys,
        channels: inventory::channels(snapshot, |_| true, true),
        playground: true,
    };
    Json(body).into_response()
}
