//! Who may connect: TokenReview + SubjectAccessReview.
//!
//! Gateways present a projected ServiceAccount token bound to our audience;
//! people reading the usage API present a token for the API server's own
//! audiences (`kubectl create token`, a kubeconfig's token). The API server
//! says who it belongs to (TokenReview) and whether RBAC lets that identity do
//! what is asked (SubjectAccessReview), so access is granted with ordinary
//! Roles. Both answers are cached briefly, keyed by a digest of the token,
//! never the token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
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

/// The authenticated caller, as the TokenReview named it; asked about again in
/// SubjectAccessReviews, so it keeps everything RBAC may match on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// The audiences a token must be for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// The operator's own (`llm-weaver`): gateways' projected tokens, which
    /// the API server itself would refuse.
    Operator,
    /// The API server's defaults (its `--api-audiences`): what
    /// `kubectl create token` issues and kubeconfigs hold.
    ApiServer,
}

/// What a SubjectAccessReview asks: may the caller `verb` this, in API group
/// [`API_GROUP`]? Empty strings mean "none": no subresource, any name, at the
/// cluster scope (which RBAC grants only through ClusterRoleBindings).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub name: String,
    pub namespace: String,
}

impl Attributes {
    /// `verb` on `resource`, at the cluster scope.
    pub fn cluster(verb: &'static str, resource: &'static str) -> Self {
        Self { verb, resource, subresource: "", name: String::new(), namespace: String::new() }
    }
}

/// Reads like the API server's own refusals, so the missing rule is plain.
impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resource \"{}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        f.write_str("\"")?;
        if !self.name.is_empty() {
            write!(f, " named \"{}\"", self.name)?;
        }
        write!(f, " in API group \"{API_GROUP}\"")?;
        if self.namespace.is_empty() {
            f.write_str(" at the cluster scope")
        } else {
            write!(f, " in the namespace \"{}\"", self.namespace)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    #[error("User \"{user}\" cannot {attributes}")]
    Forbidden { user: String, attributes: Attributes },
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

/// Checks bearer tokens against the API server; cheap to clone (clones share
/// one decision cache).
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    audience: Arc<str>,
    cache: Arc<DecisionCache>,
}

impl Authenticator {
    /// `audience` is what [`Audience::Operator`] stands for.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self { client, audience: Arc::from(audience.into()), cache: Arc::new(DecisionCache::default()) }
    }

    /// For gateways: the bearer token of `headers`, for the operator's
    /// audience, and `verb` on `resource` at the cluster scope.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        verb: &'static str,
        resource: &'static str,
    ) -> Result<Identity, AuthError> {
        let token = bearer_token(headers)?;
        let who = self.authenticate(token, Audience::Operator).await?;
        self.check(token, Audience::Operator, &who, &Attributes::cluster(verb, resource)).await?;
        Ok(who)
    }

    /// Who `token` (for `audience`) belongs to: a TokenReview, cached.
    pub async fn authenticate(&self, token: &str, audience: Audience) -> Result<Identity, AuthError> {
        let key = CacheKey::new(token, audience, None);
        self.cached(key, self.review_token(token, audience)).await
    }

    /// Whether `who`, authenticated by `token`, may do `attributes`: a
    /// SubjectAccessReview, cached. `Err(Forbidden)` when not.
    pub async fn check(
        &self,
        token: &str,
        audience: Audience,
        who: &Identity,
        attributes: &Attributes,
    ) -> Result<(), AuthError> {
        let key = CacheKey::new(token, audience, Some(attributes.clone()));
        self.cached(key, self.review_access(who, attributes)).await.map(drop)
    }

    /// Whether `who` may do `attributes`, for a caller known by a signed UI
    /// session rather than a token: a SubjectAccessReview, cached by who
    /// (the only input of the review) rather than by a token.
    pub async fn check_as(&self, who: &Identity, attributes: &Attributes) -> Result<(), AuthError> {
        let key = CacheKey::of_identity(who, Some(attributes.clone()));
        self.cached(key, self.review_access(who, attributes)).await.map(drop)
    }

    /// The cached decision for `key`, else `review`'s, cached for next time.
    async fn cached(&self, key: CacheKey, review: impl Future<Output = Decision>) -> Decision {
        if let Some(decision) = self.cache.get(&key, Instant::now()) {
            return decision;
        }
        let decision = review.await;
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

    async fn review_token(&self, token: &str, audience: Audience) -> Result<Identity, AuthError> {
        // No audiences: the API server checks the token against its own.
        let audiences = match audience {
            Audience::Operator => Some(vec![self.audience.to_string()]),
            Audience::ApiServer => None,
        };
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences },
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
        if audience == Audience::Operator && !status.audiences.unwrap_or_default().iter().any(|a| **a == *self.audience)
        {
            return Err(AuthError::Unauthenticated(format!("token is not for audience {}", self.audience)));
        }
        let user = status.user.unwrap_or_default();
        let identity = Identity {
            username: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            uid: user.uid,
            extra: user.extra,
        };
        if identity.username.is_empty() {
            return Err(AuthError::Unauthenticated("token review named no user".to_owned()));
        }
        Ok(identity)
    }

    async fn review_access(&self, who: &Identity, attributes: &Attributes) -> Result<Identity, AuthError> {
        let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.username.clone()),
                groups: Some(who.groups.clone()),
                uid: who.uid.clone(),
                extra: who.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(API_GROUP.to_owned()),
                    resource: Some(attributes.resource.to_owned()),
                    subresource: given(attributes.subresource),
                    name: given(&attributes.name),
                    namespace: given(&attributes.namespace),
                    verb: Some(attributes.verb.to_owned()),
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
            return Err(AuthError::Forbidden { user: who.username.clone(), attributes: attributes.clone() });
        }
        Ok(who.clone())
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

/// Identifies a decision without holding the token itself: who the token
/// is (`check: None`), or whether it may do `check`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    token_sha256: [u8; 32],
    audience: Audience,
    check: Option<Attributes>,
}

impl CacheKey {
    fn new(token: &str, audience: Audience, check: Option<Attributes>) -> Self {
        Self { token_sha256: Sha256::digest(token.as_bytes()).into(), audience, check }
    }

    /// A key for decisions about `who` itself; the prefix keeps it apart
    /// from any token's digest.
    fn of_identity(who: &Identity, check: Option<Attributes>) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"identity\0");
        // Debug of these fields is deterministic: strings, lists and a BTreeMap.
        digest.update(format!("{who:?}").as_bytes());
        Self { token_sha256: digest.finalize().into(), audience: Audience::ApiServer, check }
    }
}

/// The identity, for a TokenReview; the same identity when allowed, for a
/// SubjectAccessReview.
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

    /// A gateway's check and a usage reader's, as the usage API asks it.
    fn snapshots() -> Option<Attributes> {
        Some(Attributes::cluster("get", "gatewaysnapshots"))
    }

    fn usage_in(namespace: &str) -> Attributes {
        Attributes {
            verb: "get",
            resource: "apikeys",
            subresource: "usage",
            name: String::new(),
            namespace: namespace.into(),
        }
    }

    #[test]
    fn statuses_and_messages_name_what_rbac_lacks() {
        assert_eq!(AuthError::MissingToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthError::Unauthenticated("x".into()).status(), StatusCode::UNAUTHORIZED);
        let forbidden = |attributes| AuthError::Forbidden { user: "system:serviceaccount:ns:gw".into(), attributes };
        let gateway = forbidden(Attributes::cluster("get", "gatewaysnapshots"));
        assert_eq!(gateway.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            gateway.to_string(),
            "User \"system:serviceaccount:ns:gw\" cannot get resource \"gatewaysnapshots\" in API group \"llmweaver.io\" at the cluster scope"
        );
        assert_eq!(
            forbidden(usage_in("team-b")).to_string(),
            "User \"system:serviceaccount:ns:gw\" cannot get resource \"apikeys/usage\" in API group \"llmweaver.io\" in the namespace \"team-b\""
        );
        let key = Attributes { subresource: "", name: "app".into(), ..usage_in("team-b") };
        assert!(forbidden(key).to_string().contains("cannot get resource \"apikeys\" named \"app\" in API group"));
        assert_eq!(AuthError::Api("down".into()).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn cache_key_holds_a_digest_not_the_token() {
        let key = CacheKey::new("secret-token", Audience::Operator, snapshots());
        let expected: [u8; 32] = Sha256::digest(b"secret-token").into();
        assert_eq!(key.token_sha256, expected);
        assert!(!format!("{key:?}").contains("secret-token"));
        assert_eq!(key, CacheKey::new("secret-token", Audience::Operator, snapshots()));
        assert_ne!(key, CacheKey::new("other-token", Audience::Operator, snapshots()));
        assert_ne!(key, CacheKey::new("secret-token", Audience::ApiServer, snapshots()));
        assert_ne!(key, CacheKey::new("secret-token", Audience::Operator, None));
        assert_ne!(
            key,
            CacheKey::new("secret-token", Audience::Operator, Some(Attributes::cluster("create", "gatewaysnapshots")))
        );
        assert_ne!(
            key,
            CacheKey::new("secret-token", Audience::Operator, Some(Attributes::cluster("get", "gatewayreports")))
        );
        // Each namespace is a decision of its own.
        let in_a = CacheKey::new("t", Audience::ApiServer, Some(usage_in("a")));
        assert_ne!(in_a, CacheKey::new("t", Audience::ApiServer, Some(usage_in("b"))));
        assert_ne!(in_a, CacheKey::new("t", Audience::ApiServer, Some(usage_in(""))));
    }

    #[test]
    fn identity_keys_tell_identities_apart() {
        let who = |groups: &[&str]| Identity {
            username: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            uid: None,
            extra: None,
        };
        let key = CacheKey::of_identity(&who(&["a"]), Some(usage_in("a")));
        assert_eq!(key, CacheKey::of_identity(&who(&["a"]), Some(usage_in("a"))));
        assert_ne!(key, CacheKey::of_identity(&who(&["a", "b"]), Some(usage_in("a"))));
        assert_ne!(key, CacheKey::of_identity(&who(&["a"]), Some(usage_in("b"))));
    }

    #[test]
    fn cached_decisions_expire() {
        let cache = DecisionCache::default();
        let key = CacheKey::new("t", Audience::Operator, snapshots());
        let now = Instant::now();
        let identity = Identity { username: "u".into(), groups: vec!["g".into()], uid: None, extra: None };
        cache.put(key.clone(), Ok(identity.clone()), now + ALLOW_TTL);
        assert_eq!(cache.get(&key, now), Some(Ok(identity)));
        assert_eq!(cache.get(&key, now + ALLOW_TTL), None);
        assert_eq!(cache.get(&CacheKey::new("t", Audience::Operator, None), now), None);
    }

    #[test]
    fn cache_is_bounded() {
        let cache = DecisionCache::default();
        let expires = Instant::now() + ALLOW_TTL;
        let key = |token: &str| CacheKey::new(token, Audience::Operator, None);
        for i in 0..MAX_CACHE_ENTRIES {
            cache.put(key(&i.to_string()), Err(AuthError::MissingToken), expires);
        }
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        // Overwriting a present key does not flush.
        cache.put(key("0"), Err(AuthError::MissingToken), expires);
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        cache.put(key("new"), Err(AuthError::MissingToken), expires);
        assert_eq!(cache.len(), 1);
    }
}
