//! A small OpenID Connect issuer for tests, standing in for a team's
//! identity provider (which this machine cannot reach): discovery
//! (`/.well-known/openid-configuration`), its signing keys as a JWKS
//! (`/keys`, ES256), an authorization endpoint that consents at once for the
//! user the test names, and a token endpoint that redeems a code once, for
//! its client, redirect URI and PKCE verifier (RFC 7636, `S256`), and
//! answers an ID token. Plain HTTP on a free loopback port.
//!
//! A test may make it misbehave, as a broken or hostile issuer would: a
//! wrong nonce, an expired token, a signature by a key it does not list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// One signing key: its id, the private half and the JWK of the public half.
struct Key {
    kid: String,
    signing: EncodingKey,
    jwk: Value,
}

impl Key {
    /// A new ES256 key named `kid`.
    fn generate(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate()?;
        let raw = pair.public_key_raw();
        anyhow::ensure!(raw.len() == 65, "not an uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]),
        });
        Ok(Key { kid: kid.to_owned(), signing: EncodingKey::from_ec_der(&pair.serialize_der()), jwk })
    }
}

/// Who the authorization endpoint signs in.
#[derive(Clone, Debug)]
pub struct User {
    pub sub: String,
    pub email: String,
    /// In the `groups` claim, when the client asks for the `groups` scope
    /// (as Dex does).
    pub groups: Vec<String>,
}

/// How the issuer behaves; the default is by the book.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// The user the authorization endpoint consents for; `None`: it
    /// answers `access_denied`.
    pub user: Option<User>,
    /// Put another nonce in the ID token than the one asked for.
    pub wrong_nonce: bool,
    /// Issue ID tokens that expired ten minutes ago.
    pub expired: bool,
    /// Sign with a key the JWKS does not hold, under the listed key id.
    pub foreign_key: bool,
    /// Lifetime of the ID tokens, in seconds (default 300).
    pub lifetime_s: Option<i64>,
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
    scope: String,
    user: User,
}

struct Shared {
    url: String,
    client_id: String,
    client_secret: Option<String>,
    /// Listed in the JWKS; the last one signs.
    keys: Mutex<Vec<Key>>,
    /// Listed nowhere.
    foreign: EncodingKey,
    behaviour: Mutex<Behaviour>,
    codes: Mutex<HashMap<String, Grant>>,
    /// Codes redeemed, for tests to count sign-ins.
    redeemed: Mutex<u32>,
}

/// A running test issuer; stops when dropped.
pub struct Issuer {
    /// `http://127.0.0.1:PORT`: the issuer identifier.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random() -> String {
    B64.encode(rand::random::<[u8; 24]>())
}

fn now_s() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs())
        .unwrap_or(i64::MAX)
}

impl Issuer {
    /// An issuer with one registered client: `client_id`, confidential when
    /// `client_secret` is given (HTTP Basic at the token endpoint), else public.
    pub async fn start(client_id: &str, client_secret: Option<&str>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            url: url.clone(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.map(str::to_owned),
            keys: Mutex::new(vec![Key::generate("test-key-1")?]),
            foreign: Key::generate("foreign")?.signing,
            behaviour: Mutex::default(),
            codes: Mutex::default(),
            redeemed: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Issuer { url, shared, task })
    }

    /// Changes how the issuer behaves from the next request on.
    pub fn behave(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Rotates the signing key, as identity providers do: a new key signs
    /// from now on, and the JWKS lists it beside the old ones.
    pub fn rotate_key(&self) -> anyhow::Result<()> {
        let mut keys = lock(&self.shared.keys);
        let next = Key::generate(&format!("test-key-{}", keys.len() + 1))?;
        keys.push(next);
        Ok(())
    }

    /// How many codes were redeemed so far.
    pub fn redeemed(&self) -> u32 {
        *lock(&self.shared.redeemed)
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Json<Value> {
    let url = &s.url;
    Json(json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "jwks_uri": format!("{url}/keys"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile", "groups"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
    }))
}

async fn keys(State(s): State<Arc<Shared>>) -> Json<Value> {
    let keys: Vec<Value> = lock(&s.keys).iter().map(|k| k.jwk.clone()).collect();
    Json(json!({ "keys": keys }))
}

/// RFC 6749 4.1.2.1: errors about the client or redirect URI are shown
/// here; the rest go back to the client.
fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_owned()).into_response()
}

async fn authorize(State(s): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let p = |k: &str| q.get(k).cloned().unwrap_or_default();
    if p("client_id") != s.client_id {
        return bad_request("unknown client_id");
    }
    let redirect_uri = p("redirect_uri");
    let Ok(mut back) = reqwest::Url::parse(&redirect_uri) else {
        return bad_request("bad redirect_uri");
    };
    let mut reply = |pairs: &[(&str, &str)]| {
        back.query_pairs_mut().extend_pairs(pairs).append_pair("state", &p("state"));
        Redirect::to(back.as_str()).into_response()
    };
    if p("response_type") != "code" {
        return reply(&[("error", "unsupported_response_type")]);
    }
    if !p("scope").split(' ').any(|s| s == "openid") {
        return reply(&[("error", "invalid_scope")]);
    }
    // This issuer requires PKCE with S256 of every client.
    if p("code_challenge_method") != "S256" || p("code_challenge").len() != 43 {
        return reply(&[("error", "invalid_request"), ("error_description", "PKCE S256 required")]);
    }
    let Some(user) = lock(&s.behaviour).user.clone() else {
        return reply(&[("error", "access_denied")]);
    };
    let code = random();
    let grant = Grant {
        client_id: p("client_id"),
        redirect_uri: redirect_uri.clone(),
        challenge: p("code_challenge"),
        nonce: p("nonce"),
        scope: p("scope"),
        user,
    };
    lock(&s.codes).insert(code.clone(), grant);
    reply(&[("code", &code)])
}

fn token_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    code: String,
    redirect_uri: String,
    code_verifier: Option<String>,
    client_id: Option<String>,
}

/// The client a token request authenticates as (HTTP Basic, or its id in
/// the form for a public client).
fn client_of(s: &Shared, headers: &HeaderMap, form: &TokenRequest) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match (basic, &s.client_secret) {
        (Some(pair), Some(secret)) => {
            let (id, given) = pair.split_once(':')?;
            (given == secret).then(|| id.to_owned())
        }
        (None, None) => form.client_id.clone(),
        _ => None,
    }
}

async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<TokenRequest>(&body) else {
        return token_error("invalid_request", "a form with grant_type, code and redirect_uri");
    };
    if form.grant_type != "authorization_code" {
        return token_error("unsupported_grant_type", "");
    }
    let Some(client) = client_of(&s, &headers, &form) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    };
    // A code is redeemed once, whatever happens next.
    let Some(grant) = lock(&s.codes).remove(&form.code) else {
        return token_error("invalid_grant", "unknown or used code");
    };
    if grant.client_id != client || grant.redirect_uri != form.redirect_uri {
        return token_error("invalid_grant", "code issued to another client or redirect URI");
    }
    let verifier = form.code_verifier.unwrap_or_default();
    if B64.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return token_error("invalid_grant", "PKCE verifier does not match the challenge");
    }
    *lock(&s.redeemed) += 1;
    let b = lock(&s.behaviour).clone();
    let now = now_s();
    let exp = if b.expired { now - 600 } else { now + b.lifetime_s.unwrap_or(300) };
    let mut claims = json!({
        "iss": s.url, "sub": grant.user.sub, "aud": grant.client_id, "exp": exp, "iat": now.min(exp),
        "nonce": if b.wrong_nonce { "not-the-nonce".to_owned() } else { grant.nonce },
        "email": grant.user.email, "email_verified": true,
    });
    if grant.scope.split(' ').any(|s| s == "groups") {
        claims["groups"] = json!(grant.user.groups);
    }
    let keys = lock(&s.keys);
    let Some(current) = keys.last() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no signing key").into_response();
    };
    // A foreign signature names the current key id: only the signature is wrong.
    let key = if b.foreign_key { &s.foreign } else { &current.signing };
    let header = Header { kid: Some(current.kid.clone()), ..Header::new(Algorithm::ES256) };
    match jsonwebtoken::encode(&header, &claims, key) {
        Ok(id_token) => Json(json!({
            "access_token": random(), "token_type": "Bearer", "expires_in": 300, "id_token": id_token,
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
