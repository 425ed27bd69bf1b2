//! OIDC sign-in for the usage UI: the authorization-code flow with PKCE
//! (RFC 7636, `S256`) against one configured issuer, so a team signs in
//! through its identity provider and sees what its RBAC allows.
//!
//! The flow's state lives with the browser, signed, not in this process
//! (any replica behind the Service may take the callback): `GET
//! /ui/api/oidc/login` sets a short-lived `HttpOnly` cookie holding a random
//! `state` (sealed by the session key, `SameSite=Lax` so that it comes back
//! on the issuer's redirect) and sends the browser to the issuer. The PKCE
//! verifier and the nonce are derived from that state with the session key
//! ([`Sessions::derive`]), so neither is ever sent to the browser. `GET
//! /ui/api/oidc/callback` checks the state, redeems the code with the
//! verifier, verifies the ID token against the issuer's JWKS (signature by an
//! asymmetric key, `iss`, `aud`, `azp`, `exp`, `nonce`), maps its claims to
//! a Kubernetes user and groups as the API server's `--oidc-*` flags do, and
//! starts the same session cookie a token sign-in gets, ending no later than
//! the ID token. Every namespace is then authorized by SubjectAccessReviews
//! for that user and groups (`crate::usage_api`), so the RoleBindings that
//! serve `kubectl` through the API server's OIDC serve the UI too.
//!
//! Neither codes, tokens nor the client secret are logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng as _;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use weaver_dashboard::session::{Sessions, Subject, cookie, no_store, now_s};

use crate::cli::OidcArgs;

/// Where the login page sends the browser to sign in with the issuer.
pub const LOGIN_PATH: &str = "/ui/api/oidc/login";
/// Where the issuer sends the browser back (the path of `--oidc-redirect-url`).
pub const CALLBACK_PATH: &str = "/ui/api/oidc/callback";
/// The flow cookie's name.
const FLOW_COOKIE: &str = "weaver_oidc";
/// How long a sign-in at the issuer may take, in seconds.
const FLOW_TTL_S: i64 = 10 * 60;
/// Seal and derivation labels: a value made for one use serves no other.
const FLOW_PURPOSE: &str = "oidc flow";
const VERIFIER_PURPOSE: &str = "oidc pkce verifier";
const NONCE_PURPOSE: &str = "oidc nonce";
/// The group every signed-in user has, as the API server adds it.
const AUTHENTICATED: &str = "system:authenticated";
/// The least time between two JWKS fetches for an unknown key id, so that
/// tokens naming made-up keys cannot make us hammer the issuer.
const JWKS_REFETCH: Duration = Duration::from_secs(10);
/// Timeout of each call to the issuer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sign-in failed. Each has a short code the login page shows; none
/// carries a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("OIDC configuration: {0}")]
    Config(String),
    #[error("cannot reach the OIDC issuer: {0}")]
    Unavailable(String),
    #[error("the sign-in's state does not match this browser's (expired, or started elsewhere)")]
    State,
    #[error("the issuer refused the sign-in: {0}")]
    Denied(String),
    #[error("the issuer did not redeem the code: {0}")]
    Exchange(String),
    #[error("ID token refused: {0}")]
    Token(String),
    #[error("ID token claims refused: {0}")]
    Claims(String),
}

impl OidcError {
    /// What the login page is told (`?oidc_error=...`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Unavailable(_) => "unavailable",
            Self::State => "state",
            Self::Denied(_) => "denied",
            Self::Exchange(_) => "exchange",
            Self::Token(_) => "token",
            Self::Claims(_) => "claims",
        }
    }
}

/// How ID token claims become a Kubernetes user, as the API server's
/// `--oidc-username-claim`, `--oidc-username-prefix`, `--oidc-groups-claim`
/// and `--oidc-groups-prefix` do it.
#[derive(Clone, Debug)]
pub struct ClaimMapping {
    pub username_claim: String,
    /// Put before every username: `issuer#` unless the claim is `email`.
    pub username_prefix: String,
    pub groups_claim: Option<String>,
    pub groups_prefix: String,
}

impl ClaimMapping {
    /// The API server's defaults: a prefix of `"<issuer>#"` for any claim but
    /// `email`; `-` for none.
    pub fn new(issuer: &str, username_claim: &str, username_prefix: Option<&str>) -> Self {
        let username_prefix = match username_prefix {
            Some("-") => String::new(),
            Some(p) => p.to_owned(),
            None if username_claim == "email" => String::new(),
            None => format!("{issuer}#"),
        };
        ClaimMapping {
            username_claim: username_claim.to_owned(),
            username_prefix,
            groups_claim: None,
            groups_prefix: String::new(),
        }
    }

    /// The user that verified claims name. Names under `system:` are the
    /// cluster's own: a username there is refused, such groups are dropped.
    pub fn subject(&self, claims: &Map<String, Value>) -> Result<Subject, OidcError> {
        let name = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::Claims(format!("no {:?} claim", self.username_claim)))?;
        if self.username_claim == "email" && claims.get("email_verified").is_some_and(|v| v != &Value::Bool(true)) {
            return Err(OidcError::Claims("email_verified is not true".into()));
        }
        let username = format!("{}{name}", self.username_prefix);
        if username.starts_with("system:") {
            return Err(OidcError::Claims(format!("username {username:?} is in the reserved system: namespace")));
        }
        let listed: Vec<&str> = match self.groups_claim.as_ref().and_then(|c| claims.get(c)) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            Some(_) => return Err(OidcError::Claims("the groups claim is neither a string nor a list".into())),
        };
        let mut groups: Vec<String> = listed
            .into_iter()
            .map(|g| format!("{}{g}", self.groups_prefix))
            .filter(|g| !g.starts_with("system:"))
            .collect();
        groups.push(AUTHENTICATED.to_owned());
        Ok(Subject { username, groups, uid: None, extra: None })
    }
}

/// What an ID token must say to be accepted.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
}

/// Leeway for `exp`, `nbf` and `iat` against clock skew, in seconds (the
/// API server allows none beyond its own; identity providers commonly 60).
const LEEWAY_S: u64 = 60;

/// Whether the key `kid` names may be among `keys`, needing a fresh JWKS if not.
fn key_for<'k>(keys: &'k JwkSet, header: &jsonwebtoken::Header) -> Option<&'k Jwk> {
    match &header.kid {
        Some(kid) => keys.find(kid),
        // No key id: only an issuer with one signing key may omit it.
        None => match keys.keys.as_slice() {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// The claims of `token` once verified against `keys` and `expected`.
pub fn verify(keys: &JwkSet, token: &str, expected: &Expected<'_>) -> Result<Map<String, Value>, OidcError> {
    let bad = |e: jsonwebtoken::errors::Error| OidcError::Token(e.to_string());
    let header = jsonwebtoken::decode_header(token).map_err(bad)?;
    // Asymmetric signatures only: a shared secret (HS*) would be the client
    // secret, which a public client does not even have.
    if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(OidcError::Token(format!("{:?} is not an issuer's signature", header.alg)));
    }
    let jwk =
        key_for(keys, &header).ok_or_else(|| OidcError::Token("signed by a key the issuer does not list".into()))?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err(OidcError::Token("the issuer lists a symmetric key".into()));
    }
    // A key listed for one algorithm signs with no other (RFC 7517 4.4).
    if let Some(listed) = jwk.common.key_algorithm
        && listed.to_string().parse::<Algorithm>().ok() != Some(header.alg)
    {
        return Err(OidcError::Token(format!("signed with {:?} by a key listed for {listed}", header.alg)));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(bad)?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_S;
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(bad)?.claims;
    if claims.get("nonce").and_then(Value::as_str) != Some(expected.nonce) {
        return Err(OidcError::Token("the nonce is not this sign-in's".into()));
    }
    // OIDC Core 3.1.3.7: with several audiences, the token names its party.
    if let Some(Value::Array(aud)) = claims.get("aud")
        && aud.len() > 1
        && claims.get("azp").and_then(Value::as_str) != Some(expected.client_id)
    {
        return Err(OidcError::Token("several audiences and no azp naming this client".into()));
    }
    Ok(claims)
}

/// The issuer's `/.well-known/openid-configuration`, the fields we use.
#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// What the issuer told us: its endpoints and its keys.
struct Known {
    discovery: Discovery,
    keys: JwkSet,
    keys_fetched: Instant,
}

/// The configured issuer and this operator's client registration there.
pub struct Oidc {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_url: String,
    scopes: String,
    mapping: ClaimMapping,
    /// What the login page's button says.
    pub provider_name: String,
    http: reqwest::Client,
    sessions: Arc<Sessions>,
    /// Discovered on first use and kept (an issuer down at start-up does
    /// not stop the operator); keys re-read when a token names a new one.
    known: tokio::sync::Mutex<Option<Known>>,
}

/// The sealed content of the flow cookie.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    /// Unix seconds.
    exp: i64,
    /// The UI route to land on afterwards.
    next: String,
}

impl Oidc {
    /// The issuer `args` configure, if any; sessions are signed by `sessions`.
    pub fn from_args(args: &OidcArgs, sessions: Arc<Sessions>) -> Result<Option<Self>, OidcError> {
        let Some(issuer) = args.oidc_issuer_url.clone() else {
            return Ok(None);
        };
        let need = |v: &Option<String>, flag: &str| {
            v.clone().ok_or_else(|| OidcError::Config(format!("--oidc-issuer-url needs {flag}")))
        };
        let client_id = need(&args.oidc_client_id, "--oidc-client-id")?;
        let redirect_url = need(&args.oidc_redirect_url, "--oidc-redirect-url")?;
        let redirect = Url::parse(&redirect_url).map_err(|e| OidcError::Config(format!("--oidc-redirect-url: {e}")))?;
        if redirect.path() != CALLBACK_PATH {
            return Err(OidcError::Config(format!("--oidc-redirect-url must end in {CALLBACK_PATH}")));
        }
        let issuer_url = Url::parse(&issuer).map_err(|e| OidcError::Config(format!("--oidc-issuer-url: {e}")))?;
        if issuer_url.scheme() != "https" {
            tracing::warn!(issuer = %issuer, "the OIDC issuer is not on https: fine for a test, not for people");
        }
        let client_secret = match &args.oidc_client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| OidcError::Config(format!("--oidc-client-secret-file {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let mut scopes: Vec<&str> = args.oidc_scopes.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        if !scopes.contains(&"openid") {
            scopes.insert(0, "openid");
        }
        let mut http = reqwest::Client::builder().timeout(HTTP_TIMEOUT);
        if let Some(path) = &args.oidc_ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| OidcError::Config(format!("--oidc-ca-file {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| OidcError::Config(format!("--oidc-ca-file {}: {e}", path.display())))?;
            http = http.add_root_certificate(ca);
        }
        let http = http.build().map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        let mut mapping = ClaimMapping::new(&issuer, &args.oidc_username_claim, args.oidc_username_prefix.as_deref());
        mapping.groups_claim.clone_from(&args.oidc_groups_claim);
        mapping.groups_prefix = args.oidc_groups_prefix.clone().unwrap_or_default();
        let provider_name = args
            .oidc_provider_name
            .clone()
            .unwrap_or_else(|| issuer_url.host_str().unwrap_or(issuer.as_str()).to_owned());
        Ok(Some(Oidc {
            issuer,
            client_id,
            client_secret,
            redirect_url,
            scopes: scopes.join(" "),
            mapping,
            provider_name,
            http,
            sessions,
            known: tokio::sync::Mutex::new(None),
        }))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let unavailable = |e: reqwest::Error| OidcError::Unavailable(e.without_url().to_string());
        let response = self.http.get(url).send().await.map_err(unavailable)?;
        let response = response.error_for_status().map_err(unavailable)?;
        response.json().await.map_err(unavailable)
    }

    /// The discovery document and keys, fetched once.
    async fn known(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Known>, OidcError> {
        let mut known = self.known.lock().await;
        if known.is_none() {
            let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
            let discovery: Discovery = self.get_json(&url).await?;
            // OpenID Connect Discovery 1.0, 4.3: the document names the
            // issuer it was asked for, exactly.
            if discovery.issuer != self.issuer {
                return Err(OidcError::Config(format!(
                    "the discovery document names issuer {:?}, not {:?}",
                    discovery.issuer, self.issuer
                )));
            }
            let keys = self.get_json(&discovery.jwks_uri).await?;
            *known = Some(Known { discovery, keys, keys_fetched: Instant::now() });
        }
        tokio::sync::MutexGuard::try_map(known, Option::as_mut)
            .map_err(|_| OidcError::Unavailable("no discovery document".into()))
    }

    /// `GET /ui/api/oidc/login?next=/route`: off to the issuer.
    async fn login(&self, next: Option<String>) -> Result<Response, OidcError> {
        let authorize = self.known().await?.discovery.authorization_endpoint.clone();
        let state = B64.encode(rand::rng().random::<[u8; 32]>());
        let verifier = self.sessions.derive(VERIFIER_PURPOSE, &state);
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        let mut url = Url::parse(&authorize).map_err(|e| OidcError::Config(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_url)
            .append_pair("scope", &self.scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &self.sessions.derive(NONCE_PURPOSE, &state))
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let next = next.filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or_else(|| "/".into());
        let flow = Flow { state, exp: now_s() + FLOW_TTL_S, next };
        let sealed = self.sessions.seal(FLOW_PURPOSE, &flow);
        let mut response = Redirect::to(url.as_str()).into_response();
        set_flow_cookie(&mut response, &sealed, FLOW_TTL_S);
        Ok(response)
    }

    /// `GET /ui/api/oidc/callback?code=...&state=...`: the session, or why not.
    async fn callback(&self, headers: &HeaderMap, q: Callback) -> Result<(Subject, i64, String), OidcError> {
        let flow: Flow = cookie(headers, FLOW_COOKIE)
            .and_then(|v| self.sessions.open(FLOW_PURPOSE, v))
            .filter(|f: &Flow| f.exp > now_s())
            .ok_or(OidcError::State)?;
        if q.state.as_deref() != Some(flow.state.as_str()) {
            return Err(OidcError::State);
        }
        if let Some(error) = q.error {
            // The issuer's error code (RFC 6749 4.1.2.1), as the browser
            // brought it: short, in case someone else wrote it.
            return Err(OidcError::Denied(error.chars().take(64).collect()));
        }
        let code = q.code.ok_or_else(|| OidcError::Denied("no code".into()))?;
        let id_token = self.redeem(&code, &self.sessions.derive(VERIFIER_PURPOSE, &flow.state)).await?;
        let nonce = self.sessions.derive(NONCE_PURPOSE, &flow.state);
        let claims = self.verified(&id_token, &nonce).await?;
        let subject = self.mapping.subject(&claims)?;
        let exp = claims.get("exp").and_then(Value::as_i64).ok_or_else(|| OidcError::Token("no exp".into()))?;
        Ok((subject, exp, flow.next))
    }

    /// The ID token the token endpoint gives for `code` and its PKCE verifier.
    async fn redeem(&self, code: &str, verifier: &str) -> Result<String, OidcError> {
        let (endpoint, post_secret) = {
            let known = self.known().await?;
            let methods = &known.discovery.token_endpoint_auth_methods_supported;
            // client_secret_basic is the default (OIDC Core 9); use the
            // form only where the issuer says it takes nothing else.
            let post = methods.iter().any(|m| m == "client_secret_post")
                && !methods.iter().any(|m| m == "client_secret_basic");
            (known.discovery.token_endpoint.clone(), post)
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_url),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&endpoint);
        match &self.client_secret {
            Some(secret) if !post_secret => {
                // RFC 6749 2.3.1: both form-encoded before the Basic encoding.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request = request.basic_auth(enc(&self.client_id), Some(enc(secret)));
            }
            Some(secret) => form.extend([("client_id", self.client_id.as_str()), ("client_secret", secret.as_str())]),
            None => form.push(("client_id", &self.client_id)),
        }
        let response =
            request.form(&form).send().await.map_err(|e| OidcError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // The error code and description are the issuer's words about
            // the request: no secret in them.
            let error = body["error"].as_str().unwrap_or("no error code");
            let description = body["error_description"].as_str().unwrap_or_default();
            return Err(OidcError::Exchange(format!("{status}: {error} {description}").trim().to_owned()));
        }
        body["id_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| OidcError::Exchange("the answer has no id_token (is `openid` among the scopes?)".into()))
    }

    /// [`verify`] with the issuer's keys, read again once when the token
    /// names a key we have not seen (the issuer rotated its keys).
    async fn verified(&self, token: &str, nonce: &str) -> Result<Map<String, Value>, OidcError> {
        let expected = Expected { issuer: &self.issuer, client_id: &self.client_id, nonce };
        let header = jsonwebtoken::decode_header(token).map_err(|e| OidcError::Token(e.to_string()))?;
        let mut known = self.known().await?;
        if key_for(&known.keys, &header).is_none() && known.keys_fetched.elapsed() >= JWKS_REFETCH {
            let uri = known.discovery.jwks_uri.clone();
            known.keys = self.get_json(&uri).await?;
            known.keys_fetched = Instant::now();
        }
        verify(&known.keys, token, &expected)
    }
}

fn set_flow_cookie(response: &mut Response, value: &str, max_age: i64) {
    // Lax, not Strict: it must come back on the issuer's cross-site redirect.
    // Secure: the operator serves only HTTPS.
    let cookie =
        format!("{FLOW_COOKIE}={value}; Path=/ui/api/oidc/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// The issuer's redirect back: a code, or an error (RFC 6749 4.1.2).
#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Where a failed sign-in lands: the login page, told why in a word.
fn back_to_login(e: &OidcError) -> Response {
    tracing::warn!(error = %e, "UI sign-in with OIDC failed");
    let mut response = Redirect::to(&format!("/ui/login?oidc_error={}", e.code())).into_response();
    set_flow_cookie(&mut response, "", 0);
    response
}

/// The sign-in routes, for the UI's router.
pub fn router(oidc: Arc<Oidc>) -> Router {
    Router::new()
        .route(
            LOGIN_PATH,
            get(|State(oidc): State<Arc<Oidc>>, Query(q): Query<Next>| async move {
                oidc.login(q.next).await.unwrap_or_else(|e| back_to_login(&e))
            }),
        )
        .route(
            CALLBACK_PATH,
            get(|State(oidc): State<Arc<Oidc>>, headers: HeaderMap, Query(q): Query<Callback>| async move {
                match oidc.callback(&headers, q).await {
                    Ok((subject, until, next)) => {
                        tracing::info!(user = %subject.username, "UI sign-in (OIDC)");
                        let claims = oidc.sessions.claims(Some(subject), Some(until));
                        let mut response = Redirect::to(&format!("/ui{next}")).into_response();
                        set_flow_cookie(&mut response, "", 0);
                        oidc.sessions.issue(&claims, response)
                    }
                    Err(e) => back_to_login(&e),
                }
            }),
        )
        .with_state(oidc)
        .layer(axum::middleware::map_response(no_store))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// An ES256 key pair: the signing key and its JWK, named `kid`.
    fn key(kid: &str) -> (EncodingKey, Jwk) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65]),
        });
        (EncodingKey::from_ec_der(&pair.serialize_der()), serde_json::from_value(jwk).unwrap())
    }

    fn token(key: &EncodingKey, kid: &str, claims: &Value) -> String {
        let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::ES256) };
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({
            "iss": "https://idp.example", "aud": "weaver", "sub": "u1", "nonce": "n",
            "exp": now_s() + 300, "iat": now_s(),
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    const EXPECTED: Expected<'static> = Expected { issuer: "https://idp.example", client_id: "weaver", nonce: "n" };

    #[test]
    fn an_id_token_is_verified_by_key_issuer_audience_expiry_and_nonce() {
        let (signing, jwk) = key("k1");
        let keys = JwkSet { keys: vec![jwk] };
        let good = token(&signing, "k1", &claims(json!({})));
        assert_eq!(verify(&keys, &good, &EXPECTED).unwrap()["sub"], "u1");
        let refused = |c: Value| verify(&keys, &token(&signing, "k1", &claims(c)), &EXPECTED).unwrap_err();
        assert!(matches!(refused(json!({"nonce": "other"})), OidcError::Token(_)));
        assert!(matches!(refused(json!({"iss": "https://evil.example"})), OidcError::Token(_)));
        assert!(matches!(refused(json!({"aud": "someone-else"})), OidcError::Token(_)));
        assert!(matches!(refused(json!({"exp": now_s() - 120})), OidcError::Token(_)));
        assert!(matches!(refused(json!({"aud": ["weaver", "other"]})), OidcError::Token(_)));
        verify(&keys, &token(&signing, "k1", &claims(json!({"aud": ["weaver", "other"], "azp": "weaver"}))), &EXPECTED)
            .unwrap();
        // A key listed for another algorithm.
        let mut es384 = keys.keys[0].clone();
        es384.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::ES384);
        assert!(verify(&JwkSet { keys: vec![es384] }, &good, &EXPECTED).is_err());
        // A key the issuer does not list, even under a listed key id.
        let (foreign, _) = key("k1");
        assert!(verify(&keys, &token(&foreign, "k1", &claims(json!({}))), &EXPECTED).is_err());
        assert!(verify(&keys, &token(&foreign, "k2", &claims(json!({}))), &EXPECTED).is_err());
        // A MAC under anything (say, the client id) is no issuer's signature.
        let hs = jsonwebtoken::encode(
            &Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) },
            &claims(json!({})),
            &EncodingKey::from_secret(b"weaver"),
        )
        .unwrap();
        assert!(verify(&keys, &hs, &EXPECTED).is_err());
    }

    #[test]
    fn claims_map_to_a_user_as_the_api_server_maps_them() {
        let issuer = "https://idp.example";
        let c = |v: Value| v.as_object().unwrap().clone();
        // By default: sub, prefixed with the issuer; no groups but the authenticated one.
        let sub = ClaimMapping::new(issuer, "sub", None).subject(&c(json!({"sub": "u1"}))).unwrap();
        assert_eq!(sub.username, "https://idp.example#u1");
        assert_eq!(sub.groups, vec![AUTHENTICATED]);
        // email: no prefix, and it must be verified when the token says.
        let email = ClaimMapping::new(issuer, "email", None);
        assert_eq!(email.subject(&c(json!({"email": "a@x.io"}))).unwrap().username, "a@x.io");
        assert!(email.subject(&c(json!({"email": "a@x.io", "email_verified": false}))).is_err());
        // Prefixes; `-` for none; groups as a list or one string; system: names refused or dropped.
        let mut m = ClaimMapping::new(issuer, "preferred_username", Some("oidc:"));
        m.groups_claim = Some("groups".into());
        m.groups_prefix = "oidc:".into();
        let s = m.subject(&c(json!({"preferred_username": "ann", "groups": ["team-a", "b"]}))).unwrap();
        assert_eq!(
            (s.username.as_str(), s.groups),
            ("oidc:ann", vec!["oidc:team-a".into(), "oidc:b".into(), AUTHENTICATED.into()])
        );
        let s = m.subject(&c(json!({"preferred_username": "ann", "groups": "team-a"}))).unwrap();
        assert_eq!(s.groups, vec!["oidc:team-a", AUTHENTICATED]);
        let mut raw = ClaimMapping::new(issuer, "sub", Some("-"));
        raw.groups_claim = Some("groups".into());
        assert!(raw.subject(&c(json!({"sub": "system:admin"}))).is_err());
        let s = raw.subject(&c(json!({"sub": "ann", "groups": ["system:masters", "dev"]}))).unwrap();
        assert_eq!(s.groups, vec!["dev", AUTHENTICATED]);
        assert!(raw.subject(&c(json!({"email": "x"}))).is_err(), "no username claim");
    }
}
