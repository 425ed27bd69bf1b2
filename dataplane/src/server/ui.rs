//! The usage UI on the admin listener of a standalone gateway with a usage
//! store: its files (`weaver-dashboard`) under `/ui/`, the session that
//! replaces the admin token in the browser, and the inventory (keys,
//! channels, models of the live snapshot) its pages list.
//!
//! Sessions: `POST /ui/api/session {"token"}` exchanges the admin token for a
//! signed, expiring cookie (`HttpOnly`, `SameSite=Strict`) and a CSRF token;
//! the browser keeps the CSRF token in memory only and sends it as
//! `X-CSRF-Token` on the mutating calls (refresh, logout). The cookie is an
//! HMAC-SHA256-signed claim (session id, expiry, login time, CSRF token) under
//! a key drawn at start-up: a restart logs everyone out, and no session state
//! is kept but the ids of sessions logged out before they expired.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use weaver_usage_api::{Access, ApiError, Authorize, Scope};

use super::usage_api::AdminToken;
use crate::state::Gateway;

/// The session cookie's name.
pub const COOKIE: &str = "weaver_session";
/// How long a session lasts without a refresh, in seconds (the UI refreshes
/// it while open, a few minutes before it ends).
pub const SESSION_TTL_S: i64 = 30 * 60;
/// How long refreshes may extend a session after its login, in seconds.
pub const SESSION_MAX_S: i64 = 12 * 60 * 60;
/// The header that carries the CSRF token on mutating calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

type HmacSha256 = Hmac<Sha256>;

/// What a session cookie claims, signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    /// Random id, to log out one session.
    sid: String,
    /// Unix seconds the session ends.
    exp: i64,
    /// Unix seconds of the login (refreshes keep it).
    iat: i64,
    csrf: String,
}

/// Signs and checks session cookies; remembers logged-out sessions until
/// they would have expired.
pub struct Sessions {
    key: [u8; 32],
    /// Session id -> its expiry (unix seconds). Admin logins only: tiny.
    revoked: Mutex<HashMap<String, i64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

fn random_text(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::rng().random()).collect();
    B64.encode(raw)
}

fn now_s() -> i64 {
    crate::clock::unix_seconds()
}

impl Sessions {
    /// A signing key of 256 random bits.
    pub fn new() -> Self {
        Sessions { key: rand::rng().random(), revoked: Mutex::new(HashMap::new()) }
    }

    fn mac(&self) -> HmacSha256 {
        #[expect(clippy::expect_used, reason = "HMAC takes a key of any length")]
        HmacSha256::new_from_slice(&self.key).expect("any key length")
    }

    fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// The claims of a cookie value this key signed, unexpired and not logged out.
    fn check(&self, value: &str, now: i64) -> Option<Claims> {
        let (payload, sig) = value.split_once('.')?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&B64.decode(sig).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        if claims.exp <= now || self.lock().contains_key(&claims.sid) {
            return None;
        }
        Some(claims)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.revoked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn revoke(&self, claims: &Claims, now: i64) {
        let mut revoked = self.lock();
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(claims.sid.clone(), claims.exp);
    }

    /// The session a request's cookie carries.
    fn of_request(&self, headers: &HeaderMap, now: i64) -> Option<Claims> {
        cookie(headers, COOKIE).and_then(|v| self.check(v, now))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// The usage API's gate in a standalone gateway: the admin token as
/// `Authorization: Bearer`, or a UI session cookie. Either sees every namespace.
pub struct AdminAuth {
    pub token: Arc<AdminToken>,
    pub sessions: Arc<Sessions>,
}

impl Authorize for AdminAuth {
    async fn authorize(&self, headers: &HeaderMap, _access: Access<'_>) -> Result<Scope, ApiError> {
        if headers.get(header::AUTHORIZATION).is_none() && self.sessions.of_request(headers, now_s()).is_some() {
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
    if let Err(e) = mutating(&ui.auth.sessions, &headers, now_s()) {
        return e.into_response();
    }
    super::channel_test::handle(State(ui.gw.clone()), path, body).await.into_response()
}

/// `/ui/api/playground/v1/...`: the session (and its CSRF token, but for
/// reads), then the client API at `/v1/...` with the page's own key. The
/// session's cookie and CSRF token are not passed on.
async fn playground(State(ui): State<Arc<Ui>>, request: axum::extract::Request) -> Response {
    let now = now_s();
    let sessions = &ui.auth.sessions;
    let checked = if request.method() == http::Method::GET {
        sessions.of_request(request.headers(), now).map(drop).ok_or_else(no_session)
    } else {
        mutating(sessions, request.headers(), now).map(drop)
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

async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What the browser learns of its session.
#[derive(Serialize)]
struct SessionInfo {
    /// Unix seconds the session ends unless refreshed.
    expires_at: i64,
    /// Send back as `X-CSRF-Token` on refresh and logout.
    csrf: String,
}

fn issue(sessions: &Sessions, claims: &Claims) -> Response {
    let max_age = (claims.exp - now_s()).max(0);
    let cookie = format!("{COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict", sessions.sign(claims));
    let info = SessionInfo { expires_at: claims.exp, csrf: claims.csrf.clone() };
    let mut response = Json(info).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn no_session() -> ApiError {
    ApiError::unauthenticated("no session: log in with the admin token")
}

/// `GET /ui/api/session`: the current session (a reloaded page learns its CSRF token).
async fn session(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    match ui.auth.sessions.of_request(&headers, now_s()) {
        Some(c) => Json(SessionInfo { expires_at: c.exp, csrf: c.csrf }).into_response(),
        None => no_session().into_response(),
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// `POST /ui/api/session`: the admin token for a session.
async fn login(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // A page on another site cannot log the browser in (login CSRF): browsers
    // say where a request comes from; a JSON body also needs a CORS preflight
    // that this listener never grants.
    if headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return ApiError::forbidden("cross-site login refused").into_response();
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Some(Login { token }) = json.then(|| serde_json::from_slice::<Login>(&body).ok()).flatten() else {
        return ApiError::bad_parameter("token", "send {\"token\": \"<admin token>\"} as application/json")
            .into_response();
    };
    if !ui.auth.token.matches(token.trim()) {
        return ApiError::unauthenticated("invalid admin token").into_response();
    }
    let now = now_s();
    let claims = Claims { sid: random_text(16), exp: now + SESSION_TTL_S, iat: now, csrf: random_text(16) };
    issue(&ui.auth.sessions, &claims)
}

/// The session of a mutating call: its cookie, and its CSRF token in the header.
fn mutating(sessions: &Sessions, headers: &HeaderMap, now: i64) -> Result<Claims, ApiError> {
    let claims = sessions.of_request(headers, now).ok_or_else(no_session)?;
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    // Equal lengths and content, compared without an early exit.
    let same = sent.is_some_and(|s| {
        s.len() == claims.csrf.len() && s.bytes().zip(claims.csrf.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    });
    if !same {
        return Err(ApiError::forbidden("missing or wrong X-CSRF-Token"));
    }
    Ok(claims)
}

/// `POST /ui/api/session/refresh`: the same session, ending `SESSION_TTL_S`
/// from now (at most `SESSION_MAX_S` after the login).
async fn refresh(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let now = now_s();
    let sessions = &ui.auth.sessions;
    match mutating(sessions, &headers, now) {
        Ok(claims) => {
            let exp = (now + SESSION_TTL_S).min(claims.iat + SESSION_MAX_S);
            if exp <= now {
                return no_session().into_response();
            }
            issue(sessions, &Claims { exp, ..claims })
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /ui/api/session`: logs out; the cookie stops working at once.
async fn logout(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let now = now_s();
    match mutating(&ui.auth.sessions, &headers, now) {
        Ok(claims) => {
            ui.auth.sessions.revoke(&claims, now);
            let clear = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&clear) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// What the UI lists: the live snapshot's keys, channels and models, without
/// key digests, credentials or headers.
#[derive(Serialize)]
struct Inventory {
    gateway_version: &'static str,
    /// The snapshot in use (`null` before the first).
    snapshot_version: Option<u64>,
    keys: Vec<KeyView>,
    channels: Vec<ChannelView>,
}

#[derive(Serialize)]
struct KeyView {
    namespace: String,
    name: String,
    disabled: bool,
    /// Unix seconds.
    expires_at: Option<i64>,
    allowed_models: Vec<String>,
    budget: Option<BudgetView>,
    rate_limit: Option<weaver_crds::api_key::RateLimit>,
    /// Unix seconds of this gateway's last request with the key; `null` before one.
    last_used: Option<i64>,
}

#[derive(Serialize)]
struct BudgetView {
    amount_usd: String,
    period: weaver_crds::api_key::BudgetPeriod,
}

#[derive(Serialize)]
struct ChannelView {
    namespace: String,
    name: String,
    provider: weaver_crds::channel::Provider,
    models: Vec<ModelView>,
}

#[derive(Serialize)]
struct ModelView {
    name: String,
    upstream: String,
    /// USD per million tokens.
    input_per_million: String,
    output_per_million: String,
    cached_input_per_million: String,
}

/// `GET /ui/api/inventory`.
async fn inventory(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let access = Access { resource: weaver_usage_api::Resource::Document, namespaces: &[] };
    if let Err(e) = ui.auth.authorize(&headers, access).await {
        return e.into_response();
    }
    let live = ui.gw.live();
    let snapshot = &live.snapshot;
    let usd = |nanos| weaver_crds::money::Usd(nanos).to_string();
    let keys = snapshot
        .keys
        .iter()
        .zip(&live.keys)
        .map(|(k, rt)| {
            let last = rt.state.last_used.load(std::sync::atomic::Ordering::Relaxed);
            KeyView {
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                disabled: k.disabled,
                expires_at: k.expires_at,
                allowed_models: k.allowed_models.clone(),
                budget: k.budget.map(|b| BudgetView { amount_usd: b.amount.to_string(), period: b.period }),
                rate_limit: k.rate_limit.clone(),
                last_used: (last > 0).then_some(last),
            }
        })
        .collect();
    let channels = snapshot
        .channels
        .iter()
        .map(|c| ChannelView {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            provider: c.provider,
            models: c
                .models
                .iter()
                .map(|m| ModelView {
                    name: m.name.clone(),
                    upstream: m.upstream.clone(),
                    input_per_million: usd(m.prices.input),
                    output_per_million: usd(m.prices.output),
                    cached_input_per_million: usd(m.prices.cached_input),
                })
                .collect(),
        })
        .collect();
    let body = Inventory {
        gateway_version: env!("CARGO_PKG_VERSION"),
        snapshot_version: ui.gw.applied_version(),
        keys,
        channels,
    };
    Json(body).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_signed_expire_and_can_be_logged_out() {
        let sessions = Sessions::new();
        let claims = Claims { sid: "s".into(), exp: 1_000, iat: 0, csrf: "c".into() };
        let value = sessions.sign(&claims);
        assert_eq!(sessions.check(&value, 999), Some(claims.clone()));
        assert_eq!(sessions.check(&value, 1_000), None, "expired");
        assert_eq!(Sessions::new().check(&value, 0), None, "another key");
        let (payload, sig) = value.split_once('.').unwrap();
        let forged = Claims { exp: 9_999, ..claims.clone() };
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&forged).unwrap()));
        assert_ne!(payload, forged.split_once('.').unwrap().0);
        assert_eq!(sessions.check(&forged, 0), None, "a changed claim breaks the signature");
        sessions.revoke(&claims, 0);
        assert_eq!(sessions.check(&value, 0), None, "logged out");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; weaver_session=x.y; b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("x.y"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
