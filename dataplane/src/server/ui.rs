//! The usage UI on the admin listener of a standalone gateway with a usage
//! store: its files (`weaver-dashboard`) under `/ui/`, the session that
//! replaces the admin token in the browser, and the inventory (keys,
//! channels, models of the live snapshot) its pages list.
//!
//! Sessions (`weaver_dashboard::session`): `POST /ui/api/session {"token"}`
//! exchanges the admin token for a signed, expiring cookie under a key drawn
//! at start-up (a restart logs everyone out).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, header};
use weaver_dashboard::inventory::{self, Inventory, KeyView};
use weaver_dashboard::session::{Mode, SessionInfo, Sessions, login_token, no_session, no_store};
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
        .with_state(ui)
        .layer(axum::middleware::map_response(no_store))
        .merge(weaver_dashboard::session::mode_router(Mode::Standalone))
        .merge(weaver_dashboard::router())
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
        channels: inventory::channels(snapshot, |_| true),
    };
    Json(body).into_response()
}
