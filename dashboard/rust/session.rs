//! The UI's sign-in session, shared by the standalone gateway (admin token)
//! and the operator (Kubernetes token): each checks the credential its own
//! way, then both hand out the same cookie.
//!
//! `POST /ui/api/session {"token"}` exchanges the credential for a signed,
//! expiring cookie (`HttpOnly`, `SameSite=Strict`) and a CSRF token; the
//! browser keeps the CSRF token in memory only and sends it as
//! `X-CSRF-Token` on mutating calls (refresh, logout, key actions). The
//! cookie is an HMAC-SHA256-signed claim (session id, expiry, login time,
//! CSRF token and, in a cluster, who signed in) under a key the binary
//! supplies; no session state is kept but the ids of sessions logged out
//! before they expired.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rand::Rng as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use weaver_usage_api::ApiError;

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

/// Who signed in with a Kubernetes token, as its TokenReview named them:
/// everything a SubjectAccessReview may match on, so later calls are
/// authorized without the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub username: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// What a session cookie claims, signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Random id, to log out one session.
    pub sid: String,
    /// Unix seconds the session ends.
    pub exp: i64,
    /// Unix seconds of the login (refreshes keep it).
    pub iat: i64,
    pub csrf: String,
    /// Who signed in (cluster); `None` for the standalone admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<Subject>,
    /// Unix seconds past which no refresh extends the session: the expiry
    /// of the OIDC ID token it was started with (then the user signs in
    /// again at the issuer); `None` for a token sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// Unix seconds now (0 for a clock set before 1970).
pub fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn random_text(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::rng().random()).collect();
    B64.encode(raw)
}

/// Signs and checks session cookies; remembers logged-out sessions until
/// they would have expired.
pub struct Sessions {
    key: [u8; 32],
    /// Session id -> its expiry (unix seconds). Logouts only: tiny.
    revoked: Mutex<HashMap<String, i64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    /// A signing key of 256 random bits: a restart logs everyone out.
    pub fn new() -> Self {
        Self::with_key(rand::rng().random())
    }

    /// A signing key the caller shares with its peers, so that replicas
    /// behind one Service accept each other's cookies.
    pub fn with_key(key: [u8; 32]) -> Self {
        Sessions { key, revoked: Mutex::new(HashMap::new()) }
    }

    /// A key derived from `secret` (HMAC-SHA256 under a fixed label), for
    /// [`Self::with_key`]: the cookie key is then not the secret itself.
    pub fn derive_key(secret: &[u8]) -> [u8; 32] {
        #[expect(clippy::expect_used, reason = "HMAC takes a key of any length")]
        let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
        mac.update(b"llm-weaver ui session cookie v1");
        mac.finalize().into_bytes().into()
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn revoke(&self, claims: &Claims, now: i64) {
        let mut revoked = self.lock();
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(claims.sid.clone(), claims.exp);
    }

    /// The session a request's cookie carries, if valid now.
    pub fn of_request(&self, headers: &HeaderMap) -> Option<Claims> {
        cookie(headers, COOKIE).and_then(|v| self.check(v, now_s()))
    }

    /// The session of a mutating call: its cookie, and its CSRF token in the header.
    pub fn mutating(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let claims = self.of_request(headers).ok_or_else(no_session)?;
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

    /// A new session for `sub` (`None`: the standalone admin), as the login's
    /// answer: the cookie, and `info` with the CSRF token in the body.
    pub fn start(&self, sub: Option<Subject>, info: impl FnOnce(&Claims) -> SessionInfo) -> Response {
        let claims = self.claims(sub, None);
        self.issue(&claims, Json(info(&claims)).into_response())
    }

    /// Claims of a new session for `sub` that no refresh extends past
    /// `until` (unix seconds; see [`Claims::until`]).
    pub fn claims(&self, sub: Option<Subject>, until: Option<i64>) -> Claims {
        let now = now_s();
        let exp = until.map_or(now + SESSION_TTL_S, |u| u.min(now + SESSION_TTL_S));
        Claims { sid: random_text(16), exp, iat: now, csrf: random_text(16), sub, until }
    }

    /// `response` carrying the session cookie of `claims` (a sign-in that
    /// ends in a redirect rather than JSON: OIDC's callback).
    pub fn issue(&self, claims: &Claims, mut response: Response) -> Response {
        let max_age = (claims.exp - now_s()).max(0);
        let cookie = format!("{COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict", self.sign(claims));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        response
    }

    /// `value` signed for `purpose`, for browser state that must come back
    /// unchanged and is not a session (OIDC's flow cookie). The purpose is
    /// under the MAC, so a value sealed for one purpose opens for no other
    /// and never passes for a session cookie.
    pub fn seal(&self, purpose: &str, value: &impl Serialize) -> String {
        let payload = B64.encode(serde_json::to_vec(value).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        format!("{payload}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// What [`Self::seal`] sealed for `purpose`, if this key sealed it.
    pub fn open<T: DeserializeOwned>(&self, purpose: &str, sealed: &str) -> Option<T> {
        let (payload, sig) = sealed.split_once('.')?;
        let mut mac = self.mac();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        mac.verify_slice(&B64.decode(sig).ok()?).ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }

    /// A secret derived from this key for `purpose` and `input` (32 bytes,
    /// base64url): what a server may recompute from a sealed value instead
    /// of sending it to the browser (OIDC's PKCE verifier and nonce).
    pub fn derive(&self, purpose: &str, input: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"derive\0");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(input.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// `POST /ui/api/session/refresh`: the same session, ending
    /// [`SESSION_TTL_S`] from now (at most [`SESSION_MAX_S`] after the login).
    pub fn refresh(&self, headers: &HeaderMap, info: impl FnOnce(&Claims) -> SessionInfo) -> Response {
        let now = now_s();
        match self.mutating(headers) {
            Ok(claims) => {
                let exp = (now + SESSION_TTL_S).min(claims.iat + SESSION_MAX_S).min(claims.until.unwrap_or(i64::MAX));
                if exp <= now {
                    return no_session().into_response();
                }
                let claims = Claims { exp, ..claims };
                let info = info(&claims);
                self.issue(&claims, Json(info).into_response())
            }
            Err(e) => e.into_response(),
        }
    }

    /// `DELETE /ui/api/session`: logs out; the cookie stops working at once
    /// (on this process: other replicas forget it when it expires).
    pub fn logout(&self, headers: &HeaderMap) -> Response {
        match self.mutating(headers) {
            Ok(claims) => {
                self.revoke(&claims, now_s());
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
}

/// Which server the UI talks to: what it may offer (sign-in hint, key actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A standalone gateway: one admin sees everything; keys are read-only.
    Standalone,
    /// The operator: Kubernetes identities, namespaces by RBAC.
    Cluster,
}

/// `GET /ui/api/mode`, open to all: which sign-in the login page asks for;
/// `oidc` names the OIDC provider the page offers a button for (cluster).
pub fn mode_router(mode: Mode, oidc: Option<String>) -> axum::Router {
    #[derive(Clone, Serialize)]
    struct ModeInfo {
        mode: Mode,
        #[serde(skip_serializing_if = "Option::is_none")]
        oidc: Option<String>,
    }
    let info = ModeInfo { mode, oidc };
    axum::Router::new()
        .route("/ui/api/mode", axum::routing::get(move || async move { Json(info) }))
        .layer(axum::middleware::map_response(no_store))
}

/// What the browser learns of its session (`GET`/`POST /ui/api/session`).
#[derive(Clone, Debug, Serialize)]
pub struct SessionInfo {
    pub mode: Mode,
    /// Unix seconds the session ends unless refreshed.
    pub expires_at: i64,
    /// Send back as `X-CSRF-Token` on mutating calls.
    pub csrf: String,
    /// Who signed in (cluster); `null` for the standalone admin.
    pub user: Option<String>,
    /// The namespaces whose usage the viewer may read; `null`: every namespace.
    pub namespaces: Option<Vec<String>>,
}

impl SessionInfo {
    /// The standalone admin's view of `claims`.
    pub fn admin(claims: &Claims) -> Self {
        SessionInfo {
            mode: Mode::Standalone,
            expires_at: claims.exp,
            csrf: claims.csrf.clone(),
            user: None,
            namespaces: None,
        }
    }
}

/// The 401 for a call without a valid session.
pub fn no_session() -> ApiError {
    ApiError::unauthenticated("no session: sign in first")
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// The credential of a login request (`{"token": ...}` as JSON), trimmed.
/// A page on another site cannot log the browser in (login CSRF): browsers
/// say where a request comes from, and a JSON body also needs a CORS
/// preflight that these servers never grant.
pub fn login_token(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    if headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return Err(ApiError::forbidden("cross-site login refused"));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match json.then(|| serde_json::from_slice::<Login>(body).ok()).flatten() {
        Some(Login { token }) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => Err(ApiError::bad_parameter("token", "send {\"token\": \"<token>\"} as application/json")),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// Marks every answer of the UI's API `Cache-Control: no-store`.
pub async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn claims(sub: Option<Subject>) -> Claims {
        Claims { sid: "s".into(), exp: 1_000, iat: 0, csrf: "c".into(), sub, until: None }
    }

    #[test]
    fn sealed_values_open_for_their_purpose_only() {
        let sessions = Sessions::new();
        let sealed = sessions.seal("flow", &("state", 7));
        assert_eq!(sessions.open::<(String, i32)>("flow", &sealed), Some(("state".into(), 7)));
        assert_eq!(sessions.open::<(String, i32)>("other", &sealed), None);
        assert_eq!(Sessions::new().open::<(String, i32)>("flow", &sealed), None, "another key");
        assert_eq!(sessions.check(&sealed, 0), None, "not a session");
        assert_eq!(sessions.derive("a", "x"), sessions.derive("a", "x"));
        assert_ne!(sessions.derive("a", "x"), sessions.derive("b", "x"));
        assert_eq!(sessions.derive("a", "x").len(), 43);
    }

    #[test]
    fn a_session_ends_by_its_limit() {
        let sessions = Sessions::new();
        let now = now_s();
        assert_eq!(sessions.claims(None, Some(now + 60)).exp, now + 60);
        assert!(sessions.claims(None, Some(now + 2 * SESSION_TTL_S)).exp <= now + SESSION_TTL_S + 1);
    }

    #[test]
    fn cookies_are_signed_expire_and_can_be_logged_out() {
        let sessions = Sessions::new();
        let claims = claims(None);
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
    fn a_subject_is_signed_with_the_session_and_replicas_share_a_derived_key() {
        let key = Sessions::derive_key(b"shared secret");
        assert_ne!(key, Sessions::derive_key(b"other secret"));
        let (a, b) = (Sessions::with_key(key), Sessions::with_key(key));
        let sub = Subject { username: "alice".into(), groups: vec!["team-a".into()], uid: None, extra: None };
        let value = a.sign(&claims(Some(sub.clone())));
        assert_eq!(b.check(&value, 0).and_then(|c| c.sub), Some(sub));
        // Swapping the subject breaks the signature.
        let mallory = Subject { username: "admin".into(), groups: vec!["system:masters".into()], ..claims_sub() };
        let (_, sig) = value.split_once('.').unwrap();
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&claims(Some(mallory))).unwrap()));
        assert_eq!(b.check(&forged, 0), None);
    }

    fn claims_sub() -> Subject {
        Subject { username: String::new(), groups: Vec::new(), uid: None, extra: None }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; weaver_session=x.y; b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("x.y"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn a_login_needs_json_from_this_site() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(login_token(&headers, br#"{"token":" t "}"#).unwrap(), "t");
        assert!(login_token(&headers, br#"{"token":"  "}"#).is_err());
        assert!(login_token(&HeaderMap::new(), br#"{"token":"t"}"#).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(login_token(&headers, br#"{"token":"t"}"#).unwrap_err().status, StatusCode::FORBIDDEN);
    }
}
