//! The usage UI (`weaver-dashboard`) on the operator's HTTPS server, beside
//! the usage API, for people in the cluster.
//!
//! Sign-in: the login page takes a Kubernetes bearer token (`kubectl create
//! token`, a kubeconfig's); a TokenReview says who it is, and the token is
//! exchanged for the same signed session cookie the standalone gateway
//! issues (`weaver_dashboard::session`), naming that identity. The token is
//! kept nowhere. Every later call is authorized by SubjectAccessReviews for
//! that identity in each namespace (cached briefly, see `crate::auth`), so
//! RBAC changes apply within seconds and a team sees only its namespaces.
//!
//! Routes (JSON, `Cache-Control: no-store`; mutating ones need the session's
//! `X-CSRF-Token`, or a bearer token instead of the cookie):
//! - `GET /ui/api/mode`: `{"mode":"cluster"}`, for the login page, with
//!   `"oidc": "<provider>"` when OIDC sign-in is configured (`crate::oidc`:
//!   `GET /ui/api/oidc/login` and its callback);
//! - `GET|POST|DELETE /ui/api/session`, `POST /ui/api/session/refresh`: the
//!   session, with the user and the namespaces whose usage it may read;
//! - `GET /ui/api/inventory`: keys and channels of those namespaces, each key
//!   saying whether the viewer may manage it (`patch` on that ApiKey);
//! - `POST /ui/api/keys/{namespace}/{name}/disabled` `{"disabled": bool}`:
//!   sets the ApiKey's `spec.disabled`;
//! - `POST /ui/api/keys/{namespace}/{name}/rotate`: writes a new key into
//!   the key's operator-generated Secret (the old one stays valid for the
//!   key's rotation grace period) and answers it, once;
//! - `POST /ui/api/channels/{namespace}/{name}/test`: the channel test
//!   (`{"model"?, "prompt"?, "max_tokens"?}`), run by a gateway behind the
//!   gateway Service's admin port (`--gateway-admin-url`), answered as the
//!   gateway answers it;
//! - `/ui/api/playground/v1/...`: the client API of the gateway Service
//!   (`--gateway-url`), streamed through, with the API key the page sends as
//!   `Authorization: Bearer`; the key authorises the request at the gateway
//!   (its models, limits and budget apply, its usage record is written),
//!   and the operator neither keeps nor logs it.
//!
//! Key actions need `patch` on the ApiKey in its namespace; the operator then
//! writes with its own identity. The channel test needs `create` on
//! `channels/test` in the channel's namespace (a subresource of its own, as
//! `pods/exec` is, so that testing is granted apart from editing Channels:
//! each test is one real, billed upstream request); the operator calls the
//! gateway with its own token (`crate::gateway`). The Playground needs a
//! session and nothing else: the key is the authority, as on the gateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http::{HeaderMap, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};
use weaver_crds::ApiKey;
use weaver_crds::compiler::keys::default_secret_ref;
use weaver_dashboard::inventory::{self, Inventory, KeyView};
use weaver_dashboard::session::{Claims, Mode, SessionInfo, Subject, login_token, no_session, no_store};
use weaver_usage_api::{ApiError, Scope};

use crate::auth::{Attributes, AuthError, Identity};
use crate::context::Context;
use crate::gateway::Gateways;
use crate::keys::{issued_for, rotate};
use crate::usage_api::{Caller, KubeAuthorizer, RESOURCE, refuse};

/// The RBAC verb that lets a viewer disable and rotate a key here.
pub const MANAGE_VERB: &str = "patch";
/// The RBAC verb that lets a viewer test a channel: `create` on
/// [`CHANNELS`]/[`TEST`], as `create` on `pods/exec` lets one run a command.
pub const TEST_VERB: &str = "create";
/// The resource whose subresource [`TEST`] the channel test needs.
pub const CHANNELS: &str = "channels";
/// The subresource of [`CHANNELS`] granting the channel test.
pub const TEST: &str = "test";

struct Ui {
    ctx: Arc<Context>,
    authorize: KubeAuthorizer,
    gateways: Arc<Gateways>,
}

/// The UI's files and its `/ui/api/` routes; OIDC sign-in's with `oidc`.
pub fn router(
    ctx: Arc<Context>,
    authorize: KubeAuthorizer,
    gateways: Arc<Gateways>,
    oidc: Option<Arc<crate::oidc::Oidc>>,
) -> Router {
    let ui = Arc::new(Ui { ctx, authorize, gateways });
    let provider = oidc.as_ref().map(|o| o.provider_name.clone());
    let sign_in = oidc.map(crate::oidc::router).unwrap_or_default();
    Router::new()
        .route("/ui/api/session", get(session).post(login).delete(logout))
        .route("/ui/api/session/refresh", post(refresh))
        .route("/ui/api/inventory", get(inventory))
        .route("/ui/api/keys/{namespace}/{name}/disabled", post(set_disabled))
        .route("/ui/api/keys/{namespace}/{name}/rotate", post(rotate_key))
        .route("/ui/api/channels/{namespace}/{name}/test", post(test_channel))
        .route("/ui/api/playground/v1/{*rest}", any(playground))
        .with_state(ui)
        .layer(axum::middleware::map_response(no_store))
        .merge(sign_in)
        .merge(weaver_dashboard::session::mode_router(Mode::Cluster, provider))
        .merge(weaver_dashboard::router())
}

fn manage(namespace: &str, name: &str) -> Attributes {
    Attributes {
        verb: MANAGE_VERB,
        resource: RESOURCE,
        subresource: "",
        name: name.into(),
        namespace: namespace.into(),
    }
}

fn testing(namespace: &str, name: &str) -> Attributes {
    Attributes {
        verb: TEST_VERB,
        resource: CHANNELS,
        subresource: TEST,
        name: name.into(),
        namespace: namespace.into(),
    }
}

fn subject_of(who: Identity) -> Subject {
    Subject { username: who.username, groups: who.groups, uid: who.uid, extra: who.extra }
}

impl Ui {
    /// The namespaces whose usage `caller` may read (`None`: all).
    async fn namespaces(&self, caller: &Caller<'_>) -> Result<Option<Vec<String>>, ApiError> {
        match self.authorize.all_visible(caller).await {
            Ok(Scope::All) => Ok(None),
            Ok(Scope::Namespaces(list)) => Ok(Some(list)),
            // Signed in, but no namespace to show: the UI says so.
            Err(e) if e.status == StatusCode::FORBIDDEN => Ok(Some(Vec::new())),
            Err(e) => Err(e),
        }
    }

    /// The session answer for `claims`, with what its user may see now.
    async fn info(&self, claims: &Claims) -> Result<SessionInfo, ApiError> {
        let sub = claims.sub.clone().ok_or_else(no_session)?;
        let user = sub.username.clone();
        let namespaces = self.namespaces(&self.authorize.session_caller(sub)).await?;
        Ok(SessionInfo {
            mode: Mode::Cluster,
            expires_at: claims.exp,
            csrf: claims.csrf.clone(),
            user: Some(user),
            namespaces,
        })
    }

    /// The caller of a key action: a bearer token, or a session with its CSRF token.
    async fn actor<'a>(&'a self, headers: &'a HeaderMap) -> Result<Caller<'a>, ApiError> {
        if headers.get(http::header::AUTHORIZATION).is_some() {
            return self.authorize.caller(headers).await;
        }
        let sub = self.authorize.sessions.mutating(headers)?.sub.ok_or_else(no_session)?;
        Ok(self.authorize.session_caller(sub))
    }
}

/// `GET /ui/api/session`.
async fn session(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let Some(claims) = ui.authorize.sessions.of_request(&headers) else {
        return no_session().into_response();
    };
    match ui.info(&claims).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/api/session`: a Kubernetes token for a session.
async fn login(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let result = async {
        let token = login_token(&headers, &body)?;
        let who = ui.authorize.auth.authenticate(&token, crate::auth::Audience::ApiServer).await.map_err(refuse)?;
        tracing::info!(user = %who.username, "UI sign-in");
        let sub = subject_of(who);
        let namespaces = ui.namespaces(&ui.authorize.session_caller(sub.clone())).await?;
        let user = sub.username.clone();
        Ok::<_, ApiError>(ui.authorize.sessions.start(Some(sub), move |c| SessionInfo {
            mode: Mode::Cluster,
            expires_at: c.exp,
            csrf: c.csrf.clone(),
            user: Some(user),
            namespaces,
        }))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /ui/api/session/refresh`: also re-reads what the user may see.
async fn refresh(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let Some(claims) = ui.authorize.sessions.of_request(&headers) else {
        return no_session().into_response();
    };
    let info = match ui.info(&claims).await {
        Ok(info) => info,
        Err(e) => return e.into_response(),
    };
    ui.authorize.sessions.refresh(&headers, move |c| SessionInfo { expires_at: c.exp, ..info })
}

/// `DELETE /ui/api/session`.
async fn logout(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    ui.authorize.sessions.logout(&headers)
}

/// `GET /ui/api/inventory`: the published snapshot's keys and channels in
/// the namespaces whose usage the viewer may read.
async fn inventory(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let result = async {
        let caller = ui.authorize.caller(&headers).await?;
        let namespaces = ui.namespaces(&caller).await?;
        let visible = |ns: &str| namespaces.as_ref().is_none_or(|list| list.iter().any(|n| n == ns));
        let published = ui.ctx.published.borrow().clone();
        let snapshot = &published.snapshot;
        let mut manage_in = Granted::default();
        let mut keys = Vec::new();
        for k in snapshot.keys.iter().filter(|k| visible(&k.namespace)) {
            let can_manage = manage_in.may(&caller, manage, &k.namespace, &k.name).await?;
            let status = ui.ctx.stores.api_keys.get(&ObjectRef::new(&k.name).within(&k.namespace));
            let last_used = status
                .as_ref()
                .and_then(|a| a.status.as_ref()?.usage.as_ref()?.last_used.as_ref())
                .map(|t| t.0.as_second());
            keys.push(KeyView::of(k, last_used, can_manage));
        }
        let mut channels = inventory::channels(snapshot, visible, false);
        if ui.gateways.admin_url.is_some() {
            let mut test_in = Granted::default();
            for c in &mut channels {
                c.can_test = test_in.may(&caller, testing, &c.namespace, &c.name).await?;
            }
        }
        Ok::<_, ApiError>(Json(Inventory {
            gateway_version: env!("CARGO_PKG_VERSION"),
            snapshot_version: (snapshot.version > 0).then_some(snapshot.version),
            keys,
            channels,
            playground: ui.gateways.url.is_some(),
        }))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Decisions of one kind for one listing: one review per namespace (a
/// namespace-wide grant answers for every object in it); objects granted
/// by name alone are asked one by one.
#[derive(Default)]
struct Granted(BTreeMap<String, bool>);

impl Granted {
    async fn may(
        &mut self,
        caller: &Caller<'_>,
        what: fn(&str, &str) -> Attributes,
        namespace: &str,
        name: &str,
    ) -> Result<bool, ApiError> {
        let any = match self.0.get(namespace) {
            Some(any) => *any,
            None => {
                let any = allowed(caller.may(&what(namespace, "")).await)?;
                self.0.insert(namespace.to_owned(), any);
                any
            }
        };
        Ok(any || allowed(caller.may(&what(namespace, name)).await)?)
    }
}

/// A review's answer as a yes or no; outages stay errors.
fn allowed(decision: Result<(), AuthError>) -> Result<bool, ApiError> {
    match decision {
        Ok(()) => Ok(true),
        Err(AuthError::Forbidden { .. }) => Ok(false),
        Err(e) => Err(refuse(e)),
    }
}

/// The ApiKey a key action names, once `caller` may manage it.
async fn managed(ui: &Ui, caller: &Caller<'_>, namespace: &str, name: &str) -> Result<Arc<ApiKey>, ApiError> {
    served_here(ui, namespace)?;
    caller.may(&manage(namespace, name)).await.map_err(refuse)?;
    ui.ctx
        .stores
        .api_keys
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or_else(|| ApiError::not_found("unknown_key", format!("no ApiKey {namespace}/{name}")))
}

/// Refuses namespaces outside `--watch-namespace`.
fn served_here(ui: &Ui, namespace: &str) -> Result<(), ApiError> {
    match &ui.authorize.only {
        Some(only) if only != namespace => {
            Err(ApiError::forbidden(format!("this operator serves namespace {only:?} only (--watch-namespace)")))
        }
        _ => Ok(()),
    }
}

fn kube_failed(what: &str, e: &kube::Error) -> ApiError {
    if let kube::Error::Api(status) = e
        && status.is_conflict()
    {
        return conflict(format!("{what}: it changed meanwhile; try again"));
    }
    tracing::warn!(error = %e, "UI: {what}");
    ApiError::unavailable(
        "kubernetes_unavailable",
        format!("{what}: the Kubernetes API server did not do it; try again later"),
    )
}

fn conflict(message: String) -> ApiError {
    ApiError { status: StatusCode::CONFLICT, ..ApiError::bad_request("conflict", message) }
}

#[derive(Deserialize, Serialize)]
struct Disabled {
    disabled: bool,
}

/// `POST /ui/api/keys/{namespace}/{name}/disabled` `{"disabled": bool}`.
async fn set_disabled(
    State(ui): State<Arc<Ui>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let caller = ui.actor(&headers).await?;
        let Ok(Disabled { disabled }) = serde_json::from_slice(&body) else {
            return Err(ApiError::bad_request("invalid_body", "send {\"disabled\": true|false} as JSON"));
        };
        managed(&ui, &caller, &namespace, &name).await?;
        let api: Api<ApiKey> = Api::namespaced(ui.ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "spec": { "disabled": disabled } });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_failed("cannot patch the ApiKey", &e))?;
        tracing::info!(%namespace, apikey = %name, disabled, user = %caller.who.username, "UI: key disabled flag set");
        Ok(Json(Disabled { disabled }))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct RotatedView {
    /// The new key: shown once.
    key: String,
    /// The Secret now holding it.
    secret: String,
    /// Unix seconds the replaced key stops working.
    previous_valid_until: i64,
}

/// `POST /ui/api/keys/{namespace}/{name}/rotate`.
async fn rotate_key(
    State(ui): State<Arc<Ui>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = ui.actor(&headers).await?;
        let key = managed(&ui, &caller, &namespace, &name).await?;
        let r = key.spec.secret_ref.clone().unwrap_or_else(|| default_secret_ref(&key.name_any()));
        let secret = ui.ctx.stores.secrets.get(&ObjectRef::<Secret>::new(&r.name).within(&namespace));
        // A Secret someone else wrote is theirs to change: the operator
        // never rewrites it (as with `rotationTrigger`).
        let Some(secret) = secret.filter(|s| issued_for(s, &key)) else {
            return Err(conflict(format!(
                "the key of ApiKey {namespace}/{name} is in Secret {:?}, which the operator did not generate: \
                 write a new key into it yourself",
                r.name
            )));
        };
        let api: Api<Secret> = Api::namespaced(ui.ctx.client.clone(), &namespace);
        let rotated =
            rotate(&api, &key, &secret, &r.key).await.map_err(|e| kube_failed("cannot rotate the key", &e))?;
        tracing::info!(%namespace, apikey = %name, user = %caller.who.username, "UI: key rotated");
        Ok(Json(RotatedView { key: rotated.key, secret: r.name, previous_valid_until: rotated.previous_valid_until }))
    }
    .await;
    match result {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Whether `name` can be a Kubernetes object name (a DNS subdomain): it goes
/// into a URL path as it is.
fn object_name(name: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.as_bytes().first().is_some_and(alphanumeric)
        && name.as_bytes().last().is_some_and(alphanumeric)
        && name.bytes().all(|b| alphanumeric(&b) || b == b'-' || b == b'.')
}

fn gateway_unreachable(what: &str, e: &reqwest::Error) -> ApiError {
    tracing::warn!(error = %e, "UI: {what}: the gateway did not answer");
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        ..ApiError::unavailable("gateway_unreachable", format!("{what}: the gateway did not answer; try again later"))
    }
}

/// `POST /ui/api/channels/{namespace}/{name}/test`: `create` on
/// `channels/test` there, then the gateway's channel test.
async fn test_channel(
    State(ui): State<Arc<Ui>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let caller = ui.actor(&headers).await?;
        served_here(&ui, &namespace)?;
        if !object_name(&namespace) || !object_name(&name) {
            return Err(ApiError::not_found("channel_not_found", format!("no channel {namespace}/{name}")));
        }
        caller.may(&testing(&namespace, &name)).await.map_err(refuse)?;
        let Some(base) = &ui.gateways.admin_url else {
            return Err(ApiError::not_found(
                "channel_test_off",
                "this operator does not know the gateways' admin port: start it with --gateway-admin-url \
                 (WEAVER_GATEWAY_ADMIN_URL; the Helm chart sets it)",
            ));
        };
        let answer = ui
            .gateways
            .admin
            .post(format!("{base}/admin/v1/channels/{namespace}/{name}/test"))
            .header(http::header::AUTHORIZATION, ui.gateways.token.bearer())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| gateway_unreachable("cannot test the channel", &e))?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| gateway_unreachable("cannot test the channel", &e))?;
        tracing::info!(%namespace, channel = %name, user = %caller.who.username, status = status.as_u16(), "UI: channel test");
        Ok((status, [(http::header::CONTENT_TYPE, "application/json")], bytes))
    }
    .await;
    result.map_or_else(IntoResponse::into_response, IntoResponse::into_response)
}

/// Request headers the Playground passes to the gateway: the key, and what
/// the body is. Never the session's cookie or CSRF token.
const PLAYGROUND_REQUEST_HEADERS: [http::HeaderName; 3] =
    [http::header::AUTHORIZATION, http::header::CONTENT_TYPE, http::header::ACCEPT];

/// `/ui/api/playground/v1/...`: a session (and its CSRF token, but for
/// reads), then the gateway Service's `/v1/...` with the page's key, the
/// answer streamed back as it comes.
async fn playground(State(ui): State<Arc<Ui>>, request: axum::extract::Request) -> Response {
    let sessions = &ui.authorize.sessions;
    let checked = if request.method() == http::Method::GET {
        sessions.of_request(request.headers()).and_then(|c| c.sub).ok_or_else(no_session)
    } else {
        sessions.mutating(request.headers()).and_then(|c| c.sub.ok_or_else(no_session))
    };
    let user = match checked {
        Ok(sub) => sub.username,
        Err(e) => return e.into_response(),
    };
    let Some(base) = &ui.gateways.url else {
        return ApiError::not_found(
            "playground_off",
            "this operator does not know the gateway Service: start it with --gateway-url \
             (WEAVER_GATEWAY_URL; the Helm chart sets it)",
        )
        .into_response();
    };
    let (parts, body) = request.into_parts();
    // Only the client API below `/v1/`: no dot segments or escapes that
    // the URL parser would resolve elsewhere.
    let path = parts
        .uri
        .path()
        .strip_prefix("/ui/api/playground")
        .filter(|p| !p.contains('%') && p.split('/').all(|segment| segment != "." && segment != ".."));
    let Some(path) = path else {
        return ApiError::not_found("not_found", "no such route of the client API").into_response();
    };
    let url = match parts.uri.query() {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    let mut forward = ui.gateways.streaming.request(parts.method.clone(), url);
    for name in PLAYGROUND_REQUEST_HEADERS {
        if let Some(value) = parts.headers.get(&name) {
            forward = forward.header(name, value);
        }
    }
    // Streamed both ways: nothing is buffered here.
    let forward = forward.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let answer = match forward.send().await {
        Ok(a) => a,
        Err(e) => return gateway_unreachable("the Playground", &e).into_response(),
    };
    tracing::debug!(%user, path, status = answer.status().as_u16(), "UI: Playground request");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        // Hop-by-hop and framing headers are this connection's own.
        let hop = [http::header::CONNECTION, http::header::TRANSFER_ENCODING, http::header::CONTENT_LENGTH];
        if !hop.contains(name) && name != "keep-alive" {
            response = response.header(name, value);
        }
    }
    response
        .body(axum::body::Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_names_go_into_the_gateways_url() {
        assert!(object_name("team-a") && object_name("primary.v1"));
        for bad in ["", "a/b", "a?x=1", "..", ".hidden", "a-", "%2F", "A", "a b", &"x".repeat(254)] {
            assert!(!object_name(bad), "{bad:?}");
        }
    }
}
