//! Who may connect: TokenReview + SubjectAccessReview.
//!
//! Gateways present a projected ServiceAccount token bound to our audience. The API
//! server says who it belongs to (TokenReview) and whether RBAC lets that identity
//! use the resource (SubjectAccessReview), so access is granted with ordinary Roles.
//! Decisions are cached briefly, keyed by a digest of the token, never the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// The API group whose resources the RBAC check names.
pub const API_GROUP: &str = "llmweaver.io";
const ALLOW_TTL: Duration = Duration::from_secs(30);
const DENY_TTL: Duration = Duration::from_secs(5);
const MAX_CACHE_ENTRIES: usize = 10_000;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    #[error("{user} may not {verb} {resource}")]
    Forbidden { user: String, verb: String, resource: String },
    #[error("cannot reach the API server: {0}")]
    Api(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Api(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::Api(_) => "api_unavailable",
        }
    }
}

/// Checks bearer tokens against the API server; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    audience: Arc<str>,
    cache: Arc<DecisionCache>,
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self { client, audience: Arc::from(audience.into()), cache: Arc::new(DecisionCache::default()) }
    }

    /// Extracts the bearer token from headers, runs a TokenReview (with the
    /// audience), then a SubjectAccessReview for the returned user: `verb` on
    /// `resource` in API group `llmweaver.io`, cluster-wide.
    pub async fn authorize(&self, headers: &HeaderMap, verb: &str, resource: &str) -> Result<Identity, AuthError> {
        let token = bearer_token(headers)?;
        let key = CacheKey::new(token, verb, resource);
        if let Some(decision) = self.cache.get(&key, Instant::now()) {
            return decision;
        }
        let decision = self.review(token, verb, resource).await;
        match &decision {
            Ok(_) => self.cache.put(key, decision.clone(), Instant::now() + ALLOW_TTL),
            Err(AuthError::Unauthenticated(_) | AuthError::Forbidden { .. }) => {
                self.cache.put(key, decision.clone(), Instant::now() + DENY_TTL)
            }
            // Outages are not decisions; the next request asks again.
            Err(_) => {}
        }
        decision
    }

    async fn review(&self, token: &str, verb: &str, resource: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![self.audience.to_string()]) },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Api(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::Unauthenticated(reason));
        }
        // An API server that ignores audiences would otherwise accept tokens meant for others.
        if !status.audiences.unwrap_or_default().iter().any(|a| **a == *self.audience) {
            return Err(AuthError::Unauthenticated(format!("token is not for audience {}", self.audience)));
        }
        let user = status.user.unwrap_or_default();
        let identity =
            Identity { username: user.username.unwrap_or_default(), groups: user.groups.unwrap_or_default() };
        if identity.username.is_empty() {
            return Err(AuthError::Unauthenticated("token review named no user".to_owned()));
        }

        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.username.clone()),
                groups: Some(identity.groups.clone()),
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some(API_GROUP.to_owned()),
                    resource: Some(resource.to_owned()),
                    verb: Some(verb.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(|e| AuthError::Api(format!("SubjectAccessReview: {e}")))?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed && s.denied != Some(true));
        if !allowed {
            return Err(AuthError::Forbidden {
                user: identity.username,
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            });
        }
        Ok(identity)
    }
}

/// The token from `Authorization: Bearer <token>`; the scheme is case-insensitive.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(AUTHORIZATION).ok_or(AuthError::MissingToken)?;
    let value = value.to_str().map_err(|_| AuthError::MissingToken)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// Identifies a decision without holding the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    token_sha256: [u8; 32],
    verb: String,
    resource: String,
}

impl CacheKey {
    fn new(token: &str, verb: &str, resource: &str) -> Self {
        Self {
            token_sha256: Sha256::digest(token.as_bytes()).into(),
            verb: verb.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

type Decision = Result<Identity, AuthError>;

#[derive(Default)]
struct DecisionCache {
    /// Each decision with the instant it stops counting.
    entries: Mutex<HashMap<CacheKey, (Instant, Decision)>>,
}

impl DecisionCache {
    fn get(&self, key: &CacheKey, now: Instant) -> Option<Decision> {
        // The map holds no invariant a panicking holder could have broken.
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(expires, _)| now < *expires).map(|(_, decision)| decision.clone())
    }

    fn put(&self, key: CacheKey, decision: Decision, expires: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHE_ENTRIES && !entries.contains_key(&key) {
            // Entries live seconds, so dropping them all costs a burst of reviews at worst.
            entries.clear();
        }
        entries.insert(key, (expires, decision));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn bearer_token_is_extracted() {
        assert_eq!(bearer_token(&headers("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(&headers("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("BEARER   abc  ")), Ok("abc"));
    }

    #[test]
    fn missing_or_malformed_authorization_is_missing_token() -> TestResult {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::MissingToken));
        for value in ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "abc"] {
            assert_eq!(bearer_token(&headers(value)), Err(AuthError::MissingToken), "{value:?}");
        }
        let mut opaque = HeaderMap::new();
        opaque.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff\xfe")?);
        assert_eq!(bearer_token(&opaque), Err(AuthError::MissingToken));
        Ok(())
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(AuthError::MissingToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthError::Unauthenticated("x".into()).status(), StatusCode::UNAUTHORIZED);
        let forbidden = AuthError::Forbidden {
            user: "system:serviceaccount:ns:gw".into(),
            verb: "get".into(),
            resource: "gatewaysnapshots".into(),
        };
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(forbidden.to_string(), "system:serviceaccount:ns:gw may not get gatewaysnapshots");
        assert_eq!(AuthError::Api("down".into()).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn cache_key_holds_a_digest_not_the_token() {
        let key = CacheKey::new("secret-token", "get", "gatewaysnapshots");
        let expected: [u8; 32] = Sha256::digest(b"secret-token").into();
        assert_eq!(key.token_sha256, expected);
        assert!(!format!("{key:?}").contains("secret-token"));
        assert_eq!(key, CacheKey::new("secret-token", "get", "gatewaysnapshots"));
        assert_ne!(key, CacheKey::new("other-token", "get", "gatewaysnapshots"));
        assert_ne!(key, CacheKey::new("secret-token", "create", "gatewaysnapshots"));
        assert_ne!(key, CacheKey::new("secret-token", "get", "gatewayreports"));
    }

    #[test]
    fn cached_decisions_expire() {
        let cache = DecisionCache::default();
        let key = CacheKey::new("t", "get", "gatewaysnapshots");
        let now = Instant::now();
        let identity = Identity { username: "u".into(), groups: vec!["g".into()] };
        cache.put(key.clone(), Ok(identity.clone()), now + ALLOW_TTL);
        assert_eq!(cache.get(&key, now), Some(Ok(identity)));
        assert_eq!(cache.get(&key, now + ALLOW_TTL), None);
        assert_eq!(cache.get(&CacheKey::new("t", "create", "gatewayreports"), now), None);
    }

    #[test]
    fn cache_is_bounded() {
        let cache = DecisionCache::default();
        let expires = Instant::now() + ALLOW_TTL;
        for i in 0..MAX_CACHE_ENTRIES {
            cache.put(CacheKey::new(&i.to_string(), "get", "r"), Err(AuthError::MissingToken), expires);
        }
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        // Overwriting a present key does not flush.
        cache.put(CacheKey::new("0", "get", "r"), Err(AuthError::MissingToken), expires);
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        cache.put(CacheKey::new("new", "get", "r"), Err(AuthError::MissingToken), expires);
        assert_eq!(cache.len(), 1);
    }
}
