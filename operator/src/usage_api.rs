//! The usage API (`weaver-usage-api`, the same routes as the standalone
//! gateway's) on the operator's HTTPS server, for people and dashboards in the
//! cluster. Served when the operator has a usage store (`--store`), by every
//! replica: it only reads.
//!
//! Callers present a Kubernetes token for the API server's own audiences
//! (`kubectl create token`, a kubeconfig's token). A TokenReview says who they
//! are; SubjectAccessReviews in each namespace say what they may read, so a
//! team sees the namespaces its RBAC allows and ordinary Roles grant it:
//! - usage (records, summary, export): `get` on `apikeys/usage`. A
//!   subresource of its own, read like `pods/log`, so that reading the
//!   requests a namespace made is granted apart from reading its ApiKeys;
//! - a key's budget and period spend: `get` on that `apikeys` object, what
//!   `kubectl get apikey NAME` needs, since the answer tells no more than the
//!   ApiKey's status does.
//!
//! The UI's session cookie (`crate::ui`) stands in for the token: it names
//! who signed in, and each call is authorized by the same reviews.
//!
//! A request naming no namespace reads every namespace when the caller may
//! read usage at the cluster scope (a ClusterRoleBinding), else the
//! namespaces holding ApiKeys in which it may (one review per namespace,
//! cached with the others).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use futures_util::StreamExt as _;
use http::HeaderMap;
use kube::ResourceExt as _;
use kube::runtime::reflector::{ObjectRef, Store};
use weaver_crds::ApiKey;
use weaver_crds::compiler::keys::budget_snapshot;
use weaver_dashboard::session::{Sessions, Subject};
use weaver_store::ledger::BudgetId;
use weaver_usage_api::{Access, ApiError, Authorize, KeyDirectory, KeyInfo, LedgerAmounts, Resource, Scope};

use crate::auth::{Attributes, Audience, AuthError, Authenticator, Identity, bearer_token};
use crate::context::Context;
use crate::gateway::Gateways;

/// The RBAC verb of every usage API route.
pub const VERB: &str = "get";
/// The resource whose objects the key route reads, and whose subresource
/// [`USAGE`] the usage routes read.
pub const RESOURCE: &str = "apikeys";
/// The subresource of [`RESOURCE`] granting a namespace's usage records.
pub const USAGE: &str = "usage";

/// Reviews in flight at once for one request that names no namespace.
const CONCURRENT_REVIEWS: usize = 16;

/// Why `/admin/v1/...` answers 404 on an operator without a store.
const NO_STORE: &str =
    "this operator has no usage store, so it serves no usage API: start it with --store postgres://... (WEAVER_STORE)";

/// The usage API's routes for the HTTPS server: with a store, the router of
/// `weaver-usage-api` authorized by RBAC; without one, every `/admin/v1/...`
/// URL answers 404 `usage_api_off` saying so (as a gateway with
/// `--store off` does: the API is absent here, not failing, so clients
/// should not retry). `only` is `--watch-namespace`. With a store, the UI
/// (`crate::ui`) is served beside it, its sessions signed by `sessions`, its
/// Playground and channel tests run through `gateways`, with OIDC sign-in
/// when `oidc` is configured.
pub fn router(
    ctx: &Arc<Context>,
    only: Option<String>,
    sessions: Arc<Sessions>,
    gateways: Arc<Gateways>,
    oidc: Option<Arc<crate::oidc::Oidc>>,
) -> Router {
    let Some(reader) = &ctx.store else {
        return weaver_usage_api::off(NO_STORE);
    };
    let store = reader.store().clone();
    let authorize =
        KubeAuthorizer { auth: ctx.authenticator.clone(), api_keys: ctx.stores.api_keys.clone(), only, sessions };
    let keys = WatchedKeys { api_keys: ctx.stores.api_keys.clone(), store: store.clone() };
    weaver_usage_api::router(store, authorize.clone(), keys).merge(crate::ui::router(
        ctx.clone(),
        authorize,
        gateways,
        oidc,
    ))
}

fn usage_in(namespace: &str) -> Attributes {
    Attributes { verb: VERB, resource: RESOURCE, subresource: USAGE, name: String::new(), namespace: namespace.into() }
}

fn key_in(namespace: &str, name: &str) -> Attributes {
    Attributes { verb: VERB, resource: RESOURCE, subresource: "", name: name.into(), namespace: namespace.into() }
}

/// Who may read what, by TokenReview and SubjectAccessReview.
#[derive(Clone)]
pub struct KubeAuthorizer {
    pub(crate) auth: Authenticator,
    /// Where ApiKeys are: the namespaces a request naming none may come to.
    api_keys: Store<ApiKey>,
    /// `--watch-namespace`: the one namespace this operator serves.
    pub(crate) only: Option<String>,
    /// The UI's sessions, which name their caller.
    pub(crate) sessions: Arc<Sessions>,
}

/// One authenticated caller.
pub(crate) struct Caller<'a> {
    auth: &'a Authenticator,
    /// The bearer token it came with; `None` for a UI session.
    token: Option<&'a str>,
    pub(crate) who: Identity,
}

impl Caller<'_> {
    pub(crate) async fn may(&self, attributes: &Attributes) -> Result<(), AuthError> {
        match self.token {
            Some(token) => self.auth.check(token, Audience::ApiServer, &self.who, attributes).await,
            None => self.auth.check_as(&self.who, attributes).await,
        }
    }
}

/// The identity a UI session names.
pub(crate) fn identity_of(sub: Subject) -> Identity {
    Identity { username: sub.username, groups: sub.groups, uid: sub.uid, extra: sub.extra }
}

impl KubeAuthorizer {
    /// Who calls: the bearer token's owner (a TokenReview), else the signed
    /// UI session's.
    pub(crate) async fn caller<'a>(&'a self, headers: &'a HeaderMap) -> Result<Caller<'a>, ApiError> {
        if headers.get(http::header::AUTHORIZATION).is_none()
            && let Some(sub) = self.sessions.of_request(headers).and_then(|c| c.sub)
        {
            return Ok(self.session_caller(sub));
        }
        let token = bearer_token(headers).map_err(refuse)?;
        let who = self.auth.authenticate(token, Audience::ApiServer).await.map_err(refuse)?;
        Ok(Caller { auth: &self.auth, token: Some(token), who })
    }

    /// The caller a session names.
    pub(crate) fn session_caller(&self, sub: Subject) -> Caller<'_> {
        Caller { auth: &self.auth, token: None, who: identity_of(sub) }
    }
}

impl Authorize for KubeAuthorizer {
    async fn authorize(&self, headers: &HeaderMap, access: Access<'_>) -> Result<Scope, ApiError> {
        let caller = self.caller(headers).await?;
        if let Some(only) = &self.only
            && let Some(other) = access.namespaces.iter().find(|ns| *ns != only)
        {
            return Err(ApiError::forbidden(format!(
                "this operator serves namespace {only:?} only (--watch-namespace), not {other:?}"
            )));
        }
        match access.resource {
            // The document holds no namespaced data: being someone is enough.
            Resource::Document => Ok(Scope::Namespaces(Vec::new())),
            Resource::Key { name } => {
                for ns in access.namespaces {
                    caller.may(&key_in(ns, name)).await.map_err(refuse)?;
                }
                Ok(Scope::Namespaces(access.namespaces.to_vec()))
            }
            Resource::Usage if !access.namespaces.is_empty() => {
                // One at a time, so the 403 names the first namespace refused;
                // a request names a few, and their decisions are cached.
                for ns in access.namespaces {
                    caller.may(&usage_in(ns)).await.map_err(refuse)?;
                }
                Ok(Scope::Namespaces(access.namespaces.to_vec()))
            }
            Resource::Usage => self.all_visible(&caller).await,
        }
    }
}

impl KubeAuthorizer {
    /// What a request naming no namespace comes to: the namespaces whose
    /// usage `caller` may read.
    pub(crate) async fn all_visible(&self, caller: &Caller<'_>) -> Result<Scope, ApiError> {
        let denied = match (&self.only, caller.may(&usage_in(self.only.as_deref().unwrap_or(""))).await) {
            (None, Ok(())) => return Ok(Scope::All),
            (Some(only), Ok(())) => return Ok(Scope::Namespaces(vec![only.clone()])),
            (None, Err(denied @ AuthError::Forbidden { .. })) => denied,
            (_, Err(e)) => return Err(refuse(e)),
        };
        // Usage is recorded per ApiKey, so namespaces without ApiKeys have
        // none worth asking about (usage of deleted keys is read by naming
        // the namespace). The watch cache answers without a request.
        let candidates: BTreeSet<String> = self.api_keys.state().iter().filter_map(|k| k.namespace()).collect();
        let decisions: Vec<(String, Result<(), AuthError>)> = futures_util::stream::iter(candidates)
            .map(|ns| async move {
                let decision = caller.may(&usage_in(&ns)).await;
                (ns, decision)
            })
            .buffered(CONCURRENT_REVIEWS)
            .collect()
            .await;
        let mut allowed = Vec::new();
        for (ns, decision) in decisions {
            match decision {
                Ok(()) => allowed.push(ns),
                Err(AuthError::Forbidden { .. }) => {}
                Err(e) => return Err(refuse(e)),
            }
        }
        if allowed.is_empty() {
            return Err(ApiError::forbidden(format!("{denied}, nor in any namespace that has ApiKeys")));
        }
        Ok(Scope::Namespaces(allowed))
    }
}

/// The usage API's answer to a refusal; the token is in none of them.
pub(crate) fn refuse(e: AuthError) -> ApiError {
    match e {
        AuthError::MissingToken => ApiError::unauthenticated(
            "missing bearer token: send `Authorization: Bearer <token>` with a Kubernetes token, such as \
             `kubectl create token <serviceaccount>` prints",
        ),
        AuthError::Unauthenticated(_) => ApiError::unauthenticated(e.to_string()),
        AuthError::Forbidden { .. } => ApiError::forbidden(e.to_string()),
        AuthError::Api(_) => {
            tracing::warn!(error = %e, "usage API: cannot check a caller with the API server");
            ApiError::unavailable(
                "kubernetes_unavailable",
                "the Kubernetes API server, which checks the token, did not answer; try again later",
            )
        }
    }
}

/// ApiKeys as the operator watches them, and their budget ledger in the store.
pub struct WatchedKeys {
    api_keys: Store<ApiKey>,
    store: weaver_store::Store,
}

impl KeyDirectory for WatchedKeys {
    async fn key(&self, namespace: &str, name: &str) -> Result<Option<KeyInfo>, ApiError> {
        let Some(key) = self.api_keys.get(&ObjectRef::new(name).within(namespace)) else {
            return Ok(None);
        };
        // A budget the compiler refuses is not enforced, so none is shown
        // (the ApiKey's Ready condition says why).
        let budget = key.spec.budget.as_ref().and_then(|b| budget_snapshot(b).ok());
        let ledger = match &budget {
            Some(b) => {
                let id = BudgetId::key(namespace, name, b.period, weaver_store::now_ms());
                let totals = self.store.budget_totals(&id).await.map_err(ApiError::from_store)?;
                // In-flight reservations live in the gateways, inside their leases.
                Some(LedgerAmounts::new(&totals.unwrap_or_default(), 0))
            }
            None => None,
        };
        Ok(Some(KeyInfo { budget, ledger }))
    }
}
