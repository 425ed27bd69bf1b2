//! The usage UI served by the operator (README, "The usage UI" in a
//! cluster), through the HTTP calls its pages make, against a real
//! kube-apiserver: sign-in with a Kubernetes token (TokenReview), a session
//! cookie that carries who signed in, namespaces scoped by
//! SubjectAccessReview, key disable/rotate where RBAC allows `patch`, the
//! Playground streamed through the operator to a cluster-mode gateway, and
//! the channel test where RBAC allows `create` on `channels/test`.
//! Run with `make e2e`.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_crds::ApiKey;
use weaver_e2e::bed::{Bed, Setup, WAIT, store_url};
use weaver_e2e::cluster::{Cluster, service_account_subject};
use weaver_e2e::gateway::eventually_within;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::usage_reader::{namespaces_of, role_ref, team_key, team_token, two_teams};
use weaver_store::{Store, StoreOptions, UsageStore};

/// A browser's view of one operator replica: the session cookie it was
/// given and the CSRF token it keeps in memory.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Browser {
    fn new(operator: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let ca = reqwest::Certificate::from_pem(ca_pem)?;
        let http = reqwest::Client::builder().add_root_certificate(ca).build()?;
        Ok(Self { http, base: operator.to_owned(), cookie: None, csrf: None })
    }

    async fn send(&self, request: reqwest::RequestBuilder, csrf: bool) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = request;
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", format!("weaver_session={cookie}"));
        }
        if let (true, Some(csrf)) = (csrf, &self.csrf) {
            request = request.header("x-csrf-token", csrf);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.send(self.http.get(format!("{}{path}", self.base)), false).await
    }

    /// A mutating call as the UI makes it: with the CSRF header when `csrf`.
    async fn post(&self, path: &str, body: Option<Value>, csrf: bool) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request, csrf).await
    }

    /// The login page: `token` for a session; keeps its cookie and CSRF token.
    async fn sign_in(&mut self, token: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response =
            self.http.post(format!("{}/ui/api/session", self.base)).json(&json!({ "token": token })).send().await?;
        let status = response.status();
        let set_cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK {
            let set_cookie = set_cookie.ok_or_else(|| anyhow::anyhow!("a sign-in without a cookie"))?;
            assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
            assert!(!set_cookie.contains(token), "the token is in the cookie");
            let value = set_cookie.split(';').next().and_then(|p| p.strip_prefix("weaver_session="));
            self.cookie = value.map(str::to_owned);
            self.csrf = body["csrf"].as_str().map(str::to_owned);
        }
        Ok((status, body))
    }

    /// Polls `GET path` until `want` accepts the 200 body (RBAC objects and
    /// the operator's watch take a moment), for [`WAIT`] at most.
    async fn until(&self, path: &str, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let what = format!("GET {path} to answer as wanted");
        eventually_within(&what, WAIT, Duration::from_millis(50), async || {
            let (status, body) = self.get(path).await?;
            Ok(if status == StatusCode::OK && want(&body) {
                ControlFlow::Break(body)
            } else {
                ControlFlow::Continue(format!("{status} {body}"))
            })
        })
        .await
    }
}

/// `cluster-viewer.mjs`: signed in with `token`, the UI shows namespace
/// `allowed` and nothing of `other`, and offers key actions.
async fn browser_sees_only(url: &str, token: &str, allowed: &str, other: &str) -> anyhow::Result<()> {
    let envs = [
        ("WEAVER_UI_URL", url),
        ("WEAVER_UI_TOKEN", token),
        ("WEAVER_UI_ALLOWED", allowed),
        ("WEAVER_UI_OTHER", other),
    ];
    weaver_e2e::browser::run_script("cluster-viewer.mjs", &envs).await
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), ..Default::default() }
}

/// Lets ServiceAccount `sa` of `namespace` `verb` the `resource` of
/// llmweaver.io there, through Role `role`.
async fn grant(
    cluster: &Cluster,
    namespace: &str,
    sa: &str,
    role: &str,
    resource: &str,
    verb: &str,
) -> anyhow::Result<()> {
    let rules = vec![PolicyRule {
        api_groups: Some(vec!["llmweaver.io".into()]),
        resources: Some(vec![resource.into()]),
        verbs: vec![verb.into()],
        ..Default::default()
    }];
    cluster.apply(namespace, &Role { metadata: meta(role), rules: Some(rules) }).await?;
    let binding = RoleBinding {
        metadata: meta(&format!("{sa}-{role}")),
        role_ref: role_ref("Role", role),
        subjects: Some(vec![service_account_subject(namespace, sa)]),
    };
    cluster.apply(namespace, &binding).await
}

/// Lets ServiceAccount `sa` of `namespace` disable and rotate keys there.
async fn grant_patch(cluster: &Cluster, namespace: &str, sa: &str) -> anyhow::Result<()> {
    grant(cluster, namespace, sa, "key-manager", "apikeys", "patch").await
}

fn keys_of(inventory: &Value) -> Vec<(String, String, bool)> {
    inventory["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap_or_default().to_owned();
            (s("namespace"), s("name"), k["can_manage"].as_bool().unwrap_or(false))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn a_viewer_signed_in_with_a_kubernetes_token_sees_only_its_namespace_and_acts_where_rbac_allows()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    // User-provided key Secrets, so the keys compile without a leader
    // issuing them (this replica never leads: see the Lease below).
    let (a, b, home) = two_teams(&cluster, "ui").await?;

    // In A: `viewer` reads usage and keys; `manager` may also patch ApiKeys.
    let viewer = team_token(&cluster, &a, "viewer").await?;
    let manager = team_token(&cluster, &a, "manager").await?;
    grant_patch(&cluster, &a, "manager").await?;

    // This replica never leads: it writes nothing into other tests' namespaces.
    cluster.lease_held_elsewhere(&home).await?;
    let dir = tempfile::tempdir()?;
    let args = ["--listen".to_owned(), "127.0.0.1:0".to_owned(), "--store".to_owned(), store_url()?];
    let operator = cluster.operator(&home, "ui", &args, dir.path().join("operator.log")).await?;
    let url = format!("https://{}", operator.addr("addr"));
    let ca = cluster.operator_ca(&home).await?;

    // The login page learns it is in a cluster; the UI's files are served.
    let mut browser = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(browser.get("/ui/api/mode").await?, (StatusCode::OK, json!({"mode": "cluster"})));
    // Without a session: 401 everywhere, and a bad token is refused.
    assert_eq!(browser.get("/ui/api/session").await?.0, StatusCode::UNAUTHORIZED);
    assert_eq!(browser.get("/ui/api/inventory").await?.0, StatusCode::UNAUTHORIZED);
    assert_eq!(browser.sign_in("not-a-token").await?.0, StatusCode::UNAUTHORIZED);

    // The viewer signs in; the session names it and its one namespace.
    let (status, session) = browser.sign_in(&viewer).await?;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["mode"], "cluster");
    assert_eq!(session["user"], format!("system:serviceaccount:{a}:viewer"));
    browser.until("/ui/api/session", |s| s["namespaces"] == json!([a])).await?;
    // Its usage calls carry only the cookie: A's records, and B is refused.
    let records =
        browser.until("/admin/v1/usage/records", |p| p["data"].as_array().is_some_and(|d| d.len() == 2)).await?;
    assert_eq!(namespaces_of(&records), BTreeSet::from([a.clone()]));
    let (status, body) = browser.get(&format!("/admin/v1/usage/records?namespace={b}")).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The Keys page lists A's key only, not manageable by a viewer, and
    // the server refuses the viewer's disable.
    let inventory = browser.until("/ui/api/inventory", |i| !keys_of(i).is_empty()).await?;
    assert_eq!(keys_of(&inventory), vec![(a.clone(), "app".to_owned(), false)]);
    let (status, body) =
        browser.post(&format!("/ui/api/keys/{a}/app/disabled"), Some(json!({"disabled": true})), true).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("cannot patch resource \"apikeys\"")),
        "{body}"
    );

    // The manager may disable A's key: with the CSRF header only.
    let mut manager_browser = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(manager_browser.sign_in(&manager).await?.0, StatusCode::OK);
    let inventory = manager_browser.until("/ui/api/inventory", |i| keys_of(i).iter().any(|k| k.2)).await?;
    assert_eq!(keys_of(&inventory), vec![(a.clone(), "app".to_owned(), true)]);
    browser_sees_only(&url, &manager, &a, &b).await?;
    let disable = format!("/ui/api/keys/{a}/app/disabled");
    let (status, body) = manager_browser.post(&disable, Some(json!({"disabled": true})), false).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF header: {body}");
    let keys: Api<ApiKey> = Api::namespaced(cluster.client.clone(), &a);
    assert!(!keys.get("app").await?.spec.disabled);
    let (status, body) = manager_browser.post(&disable, Some(json!({"disabled": true})), true).await?;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"disabled": true})));
    assert!(keys.get("app").await?.spec.disabled, "the ApiKey was not patched");
    manager_browser.until("/ui/api/inventory", |i| i["keys"][0]["disabled"] == true).await?;
    // B's key is out of its reach, whatever the UI sends.
    let (status, body) =
        manager_browser.post(&format!("/ui/api/keys/{b}/app/disabled"), Some(json!({"disabled": true})), true).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!Api::<ApiKey>::namespaced(cluster.client.clone(), &b).get("app").await?.spec.disabled);
    // A Secret the user wrote is theirs: the operator does not rotate it.
    let (status, body) = manager_browser.post(&format!("/ui/api/keys/{a}/app/rotate"), None, true).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let secret = Api::<Secret>::namespaced(cluster.client.clone(), &a).get("app-key").await?;
    assert!(secret.data.unwrap_or_default().values().all(|v| v.0 == team_key(&a).as_bytes()));

    // Logging out ends the session at once.
    let (status, _) = manager_browser.send(manager_browser.http.delete(format!("{url}/ui/api/session")), true).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(manager_browser.get("/ui/api/inventory").await?.0, StatusCode::UNAUTHORIZED);
    drop(operator);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn a_key_rotated_in_the_ui_works_at_once_and_the_old_one_for_its_grace_period() -> anyhow::Result<()> {
    let store = Store::connect(&store_url()?, StoreOptions::default())?;
    store.migrate().await?;
    let bed = Bed::with_store(Some(store_url()?)).await?;
    bed.patch::<ApiKey>("app", json!({"spec": {"rotationGracePeriod": "1h"}})).await?;
    let old = bed.issued_key("app").await?;
    bed.until_all(&old, "gpt-4o-mini", StatusCode::OK).await?;
    let manager = team_token(&bed.cluster, &bed.ns, "manager").await?;
    grant_patch(&bed.cluster, &bed.ns, "manager").await?;
    let viewer = team_token(&bed.cluster, &bed.ns, "viewer").await?;
    let ca = bed.cluster.operator_ca(&bed.ns).await?;

    // A viewer without `patch` cannot rotate.
    let mut viewer_browser = Browser::new(&bed.operator_url(), ca.as_bytes())?;
    assert_eq!(viewer_browser.sign_in(&viewer).await?.0, StatusCode::OK);
    let rotate = format!("/ui/api/keys/{}/app/rotate", bed.ns);
    let (status, body) = viewer_browser.post(&rotate, None, true).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(bed.issued_key("app").await?, old);

    let mut browser = Browser::new(&bed.operator_url(), ca.as_bytes())?;
    assert_eq!(browser.sign_in(&manager).await?.0, StatusCode::OK);
    browser.until("/ui/api/inventory", |i| i["keys"][0]["can_manage"] == true).await?;
    let (status, body) = browser.post(&rotate, None, false).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF header: {body}");
    let (status, rotated) = browser.post(&rotate, None, true).await?;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().unwrap_or_default().to_owned();
    assert!(new.starts_with("lw-") && new != old, "{rotated}");
    // Shown once: the Secret holds it, and the gateways take it.
    assert_eq!(bed.issued_key("app").await?, new);
    let took = bed.until_all(&new, "gpt-4o-mini", StatusCode::OK).await?;
    println!("rotated key served by every gateway after {took:?}");
    assert_eq!(bed.chat(0, &old, "gpt-4o-mini").await, StatusCode::OK, "the old key must work during the grace period");
    let grace =
        rotated["previous_valid_until"].as_i64().unwrap_or_default() - k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((3_500..=3_600).contains(&grace), "grace {grace}s");
    Ok(())
}

/// Lets ServiceAccount `sa` of `namespace` test channels there (`create`
/// on `channels/test`).
async fn grant_test(cluster: &Cluster, namespace: &str, sa: &str) -> anyhow::Result<()> {
    grant(cluster, namespace, sa, "channel-tester", "channels/test", "create").await
}

/// Reads `stream` into `text` until `done` accepts it or the stream ends
/// (within [`WAIT`]).
async fn read_until(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    text: &mut String,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    tokio::time::timeout(WAIT, async {
        while !done(text) {
            let Some(piece) = stream.next().await else { return Ok(()) };
            text.push_str(std::str::from_utf8(&piece?)?);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("the stream stalled; so far: {text}"))?
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn the_playground_streams_through_the_operator_and_channel_tests_need_rbac() -> anyhow::Result<()> {
    // The upstream sends the role chunk and one token, then holds the
    // stream until the test releases it: what reached the page meanwhile
    // shows that nothing on the way buffers the answer.
    let upstream =
        MockUpstream::start(Behaviour { tokens: Some(4), hold_after: Some(2), ..Behaviour::default() }).await?;
    let store_at = store_url()?;
    let mut setup = Setup::new(upstream);
    (setup.gateways, setup.operator_store, setup.gateway_store) = (1, Some(store_at.clone()), Some(store_at.clone()));
    let bed = Bed::start(setup).await?;
    let key = bed.issued_key("app").await?;
    bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
    let upstream_before = bed.upstream.requests().len();
    let ns = bed.ns.clone();
    let viewer = team_token(&bed.cluster, &ns, "viewer").await?;
    let tester = team_token(&bed.cluster, &ns, "tester").await?;
    grant_test(&bed.cluster, &ns, "tester").await?;

    // A replica that does not lead (operator-0 does) serves the UI, with the
    // gateway Service's two ports (here: the one gateway's).
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--watch-namespace",
        &ns,
        "--store",
        &store_at,
        "--gateway-url",
        &bed.gateway(0),
        "--gateway-admin-url",
        &bed.gateway_admin(0),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let operator = bed.cluster.operator(&ns, "ui", &args, bed.path("ui-operator.log")).await?;
    let url = format!("https://{}", operator.addr("addr"));
    let ca = bed.cluster.operator_ca(&ns).await?;

    let mut browser = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(browser.sign_in(&viewer).await?.0, StatusCode::OK);
    let inventory =
        browser.until("/ui/api/inventory", |i| i["channels"].as_array().is_some_and(|c| !c.is_empty())).await?;
    assert_eq!(inventory["playground"], true, "{inventory}");
    assert_eq!(inventory["channels"][0]["can_test"], false, "a viewer without the grant: {inventory}");

    // The Playground lists the key's models through the operator...
    let models = "/ui/api/playground/v1/models";
    let (status, body) = browser.send(browser.http.get(format!("{url}{models}")).bearer_auth(&key), false).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["id"], "gpt-4o-mini", "{body}");
    // ...refuses a chat without the session's CSRF token, and a key the
    // gateways do not know is the gateway's own 401.
    let chat = "/ui/api/playground/v1/chat/completions";
    let ask = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                     "messages": [{"role": "user", "content": "hi"}]});
    let post = |key: &str| browser.http.post(format!("{url}{chat}")).bearer_auth(key).json(&ask);
    assert_eq!(browser.send(post(&key), false).await?.0, StatusCode::FORBIDDEN);
    let (status, body) = browser.send(post("lw-not-a-key"), true).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(bed.upstream.requests().len(), upstream_before, "the refused calls reached the upstream");

    // The answer streams: the first events arrive while the upstream holds the rest.
    let mut request = post(&key).header("x-csrf-token", browser.csrf.clone().unwrap_or_default());
    request = request.header("cookie", format!("weaver_session={}", browser.cookie.clone().unwrap_or_default()));
    let response = request.send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let request_id = response.headers()["x-request-id"].to_str()?.to_owned();
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    read_until(&mut stream, &mut text, |t| t.matches("data: ").count() >= 2).await?;
    assert!(text.contains(r#""content":" the""#) && !text.contains("[DONE]"), "{text}");
    bed.upstream.release();
    read_until(&mut stream, &mut text, |_| false).await?;
    assert!(text.contains(r#""completion_tokens":4"#) && text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The upstream was called with the channel's credential, never the key.
    let seen = bed.upstream.requests();
    assert_eq!(seen.len(), upstream_before + 1);
    assert!(!format!("{:?}", seen[upstream_before]).contains(&key), "the key reached the upstream");
    // The usage record is the key's, as for any request.
    let path = format!("/admin/v1/usage/records?namespace={ns}&api_key=app");
    let records = browser
        .until(&path, |p| p["data"].as_array().into_iter().flatten().any(|r| r["request_id"] == request_id.as_str()))
        .await?;
    let record = records["data"].as_array().into_iter().flatten().find(|r| r["request_id"] == request_id.as_str());
    let record = record.cloned().unwrap_or_default();
    assert_eq!((record["status"].as_u64(), record["output_tokens"].as_u64()), (Some(200), Some(4)), "{record}");
    // The operator logged neither the key nor its prefix.
    let log = std::fs::read_to_string(&operator.log)?;
    assert!(!log.contains(&key) && !log.contains(&key[..12]), "the key is in the operator's log");

    // The channel test: the viewer may not; the tester may, with the CSRF token.
    bed.upstream.set(Behaviour::default());
    let test = format!("/ui/api/channels/{ns}/primary/test");
    let (status, body) = browser.post(&test, Some(json!({})), true).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("channels/test")), "{body}");
    let mut tester_browser = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(tester_browser.sign_in(&tester).await?.0, StatusCode::OK);
    tester_browser.until("/ui/api/inventory", |i| i["channels"][0]["can_test"] == true).await?;
    assert_eq!(tester_browser.post(&test, Some(json!({})), false).await?.0, StatusCode::FORBIDDEN, "no CSRF header");
    let (status, report) = tester_browser.post(&test, Some(json!({"prompt": "ping"})), true).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["ok"].as_bool(), report["channel"].as_str()), (Some(true), Some("primary")), "{report}");
    assert!(report["first_tokens"].as_str().is_some_and(|t| !t.is_empty()), "{report}");
    // Another namespace's channel is refused whatever the page sends.
    let (status, body) = tester_browser.post("/ui/api/channels/elsewhere/primary/test", None, true).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The same in Chromium: the Playground streams an answer into the page,
    // and the Channels page offers the test.
    let channel = format!("{ns}/primary");
    let envs = [
        ("WEAVER_UI_URL", url.as_str()),
        ("WEAVER_UI_TOKEN", &tester),
        ("WEAVER_UI_KEY", &key),
        ("WEAVER_UI_CHANNEL", &channel),
    ];
    weaver_e2e::browser::run_script("cluster-playground.mjs", &envs).await?;
    // The gateway's admin route takes the operator's token only: not the
    // tester's, not the key's.
    let direct = format!("{}/admin/v1/channels/{ns}/primary/test", bed.gateway_admin(0));
    for token in [tester.as_str(), key.as_str()] {
        let status = bed.http.post(&direct).bearer_auth(token).json(&json!({})).send().await?.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    drop(operator);
    Ok(())
}
