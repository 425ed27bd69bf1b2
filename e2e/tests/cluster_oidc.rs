//! OIDC sign-in to the operator's usage UI (README, "Sign-in with OIDC"),
//! through the browser's HTTP exchanges, against a real kube-apiserver and
//! the test issuer of `weaver_e2e::oidc_issuer` (a team's identity provider
//! cannot be reached from here): the authorization-code flow with PKCE signs
//! a user in, its groups claim meets a RoleBinding for an OIDC group, every
//! namespace is authorized by SubjectAccessReview, and a stolen code, a
//! wrong nonce, an expired or a foreign-signed ID token are refused.
//! Run with `make e2e`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_e2e::bed::{WAIT, store_url};
use weaver_e2e::cluster::Cluster;
use weaver_e2e::gateway::eventually_within;
use weaver_e2e::oidc_issuer::{Behaviour, Issuer, User};
use weaver_e2e::usage_reader::{ROLE, namespaces_of, role_ref, rules, two_teams};

const CLIENT_ID: &str = "weaver-ui";

/// One browser: its cookies (by name) and the CSRF token it keeps in memory.
/// Redirects are followed by hand, so each hop can be looked at.
struct Browser {
    http: reqwest::Client,
    operator: String,
    cookies: BTreeMap<String, String>,
    csrf: Option<String>,
}

/// One HTTP answer: status, where it redirects, the cookies it sets.
struct Hop {
    status: StatusCode,
    location: String,
    set_cookies: Vec<String>,
    body: Value,
}

impl Browser {
    fn new(operator: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, operator: operator.to_owned(), cookies: BTreeMap::new(), csrf: None })
    }

    /// `method url`, with this browser's cookies for the operator (the issuer
    /// needs none); keeps the cookies the answer sets.
    async fn go(&mut self, method: reqwest::Method, url: &str, csrf: bool) -> anyhow::Result<Hop> {
        let mut request = self.http.request(method, url);
        if url.starts_with(&self.operator) && !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", jar.join("; "));
        }
        if let (true, Some(csrf)) = (csrf, &self.csrf) {
            request = request.header("x-csrf-token", csrf);
        }
        let response = request.send().await?;
        let status = response.status();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Hop { status, location, set_cookies, body })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Hop> {
        let url = format!("{}{path}", self.operator);
        self.go(reqwest::Method::GET, &url, false).await
    }

    /// The login page's button: to the operator, which sends the browser to
    /// the issuer. Answers the issuer's authorization URL.
    async fn start_sign_in(&mut self) -> anyhow::Result<String> {
        let hop = self.get("/ui/api/oidc/login?next=/logs").await?;
        anyhow::ensure!(hop.status == StatusCode::SEE_OTHER, "login answered {} {}", hop.status, hop.body);
        let flow = hop.set_cookies.iter().find(|c| c.starts_with("weaver_oidc=")).cloned().unwrap_or_default();
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/ui/api/oidc/"] {
            anyhow::ensure!(flow.contains(attribute), "flow cookie without {attribute}: {flow}");
        }
        Ok(hop.location)
    }

    /// At the issuer (which consents at once): the callback URL it sends the
    /// browser back to.
    async fn at_issuer(&mut self, authorize: &str) -> anyhow::Result<String> {
        let hop = self.go(reqwest::Method::GET, authorize, false).await?;
        anyhow::ensure!(hop.status == StatusCode::SEE_OTHER, "issuer answered {} {}", hop.status, hop.body);
        Ok(hop.location)
    }

    /// Back at the operator: where the callback sends the browser.
    async fn finish(&mut self, callback: &str) -> anyhow::Result<Hop> {
        anyhow::ensure!(callback.starts_with(&self.operator), "the issuer sent the browser to {callback}");
        self.go(reqwest::Method::GET, callback, false).await
    }

    /// The whole round trip; then the page reads its session. Answers where
    /// the callback sent the browser.
    async fn sign_in(&mut self) -> anyhow::Result<String> {
        let authorize = self.start_sign_in().await?;
        let callback = self.at_issuer(&authorize).await?;
        let hop = self.finish(&callback).await?;
        if self.cookies.contains_key("weaver_session") {
            let session = self.get("/ui/api/session").await?;
            self.csrf = session.body["csrf"].as_str().map(str::to_owned);
        }
        Ok(hop.location)
    }

    /// Polls `GET path` until `want` accepts the 200 body (RBAC objects take
    /// a moment to reach the authorizer), for [`WAIT`] at most.
    async fn until(&mut self, path: &str, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let what = format!("GET {path} to answer as wanted");
        eventually_within(&what, WAIT, Duration::from_millis(50), async || {
            let hop = self.get(path).await?;
            Ok(if hop.status == StatusCode::OK && want(&hop.body) {
                ControlFlow::Break(hop.body)
            } else {
                ControlFlow::Continue(format!("{} {}", hop.status, hop.body))
            })
        })
        .await
    }
}

/// A query parameter of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// `url` with query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url)?;
    let others: Vec<(String, String)> =
        parsed.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    parsed.query_pairs_mut().clear().extend_pairs(others).append_pair(name, value);
    Ok(parsed.to_string())
}

/// A free loopback port for the operator, whose address goes into its own
/// `--oidc-redirect-url`.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Lets the OIDC `kind` (`User` or `Group`) `name` read usage and keys in
/// `namespace` (Role [`ROLE`]), as a RoleBinding for `kubectl` users would.
async fn grant_usage(cluster: &Cluster, namespace: &str, kind: &str, name: &str) -> anyhow::Result<()> {
    let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
    cluster.apply(namespace, &Role { metadata: meta(ROLE), rules: Some(rules()) }).await?;
    let subject = Subject {
        kind: kind.into(),
        name: name.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Default::default()
    };
    let binding = RoleBinding {
        metadata: meta("oidc-reads-usage"),
        role_ref: role_ref("Role", ROLE),
        subjects: Some(vec![subject]),
    };
    cluster.apply(namespace, &binding).await
}

fn flag(name: &str, value: &str) -> [String; 2] {
    [format!("--{name}"), value.to_owned()]
}

/// An operator replica that never leads, with a usage store and sign-in at
/// `issuer` as client [`CLIENT_ID`], and `flags` besides; and its URL.
async fn operator_for(
    cluster: &Cluster,
    home: &str,
    issuer: &Issuer,
    flags: &[String],
    log: &std::path::Path,
) -> anyhow::Result<(weaver_e2e::cluster::Process, String)> {
    cluster.lease_held_elsewhere(home).await?;
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    let mut args = [
        flag("listen", &format!("127.0.0.1:{port}")),
        flag("store", &store_url()?),
        flag("oidc-issuer-url", &issuer.url),
        flag("oidc-client-id", CLIENT_ID),
        flag("oidc-redirect-url", &format!("{url}/ui/api/oidc/callback")),
    ]
    .concat();
    args.extend_from_slice(flags);
    Ok((cluster.operator(home, "oidc", &args, log.to_owned()).await?, url))
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn a_team_signs_in_with_oidc_and_pkce_and_sees_only_the_namespace_its_group_is_bound_in() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (a, b, home) = two_teams(&cluster, "oidc").await?;

    // The identity provider's group `team-<A>` (named after the namespace:
    // a plane outlives one run), as the API server's
    // --oidc-groups-prefix=oidc: would name it, may read A's usage.
    let team = format!("team-{a}");
    grant_usage(&cluster, &a, "Group", &format!("oidc:{team}")).await?;

    // A confidential client: the secret in a file, as a mounted Secret gives it.
    let issuer = Issuer::start(CLIENT_ID, Some("client-secret-0123")).await?;
    let ann = User { sub: "u-ann".into(), email: "ann@example.com".into(), groups: vec![team.clone()] };
    issuer.behave(Behaviour { user: Some(ann.clone()), ..Behaviour::default() });
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, "client-secret-0123\n")?;
    let flags = [
        flag("oidc-client-secret-file", &secret_file.to_string_lossy()),
        flag("oidc-scopes", "openid,email,groups"),
        flag("oidc-username-claim", "email"),
        flag("oidc-username-prefix", "oidc:"),
        flag("oidc-groups-claim", "groups"),
        flag("oidc-groups-prefix", "oidc:"),
        flag("oidc-provider-name", "Example SSO"),
    ]
    .concat();
    let log = dir.path().join("operator.log");
    let (operator, url) = operator_for(&cluster, &home, &issuer, &flags, &log).await?;
    let ca = cluster.operator_ca(&home).await?;

    // The login page offers the provider's button.
    let mut browser = Browser::new(&url, ca.as_bytes())?;
    let mode = browser.get("/ui/api/mode").await?;
    assert_eq!(mode.body, json!({"mode": "cluster", "oidc": "Example SSO"}));

    // The button's trip: to the issuer with a PKCE S256 challenge and a nonce,
    // neither the verifier nor the client secret in sight.
    let authorize = browser.start_sign_in().await?;
    assert!(authorize.starts_with(&format!("{}/authorize?", issuer.url)), "{authorize}");
    assert_eq!(param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(&authorize, "code_challenge").map(|c| c.len()), Some(43));
    assert!(param(&authorize, "nonce").is_some_and(|n| n.len() >= 32));
    assert_eq!(param(&authorize, "scope").as_deref(), Some("openid email groups"));
    assert!(!authorize.contains("client-secret"), "{authorize}");
    let callback = browser.at_issuer(&authorize).await?;
    let landed = browser.finish(&callback).await?;
    assert_eq!((landed.status, landed.location.as_str()), (StatusCode::SEE_OTHER, "/ui/logs"));
    let session_cookie = landed.set_cookies.iter().find(|c| c.starts_with("weaver_session=")).cloned();
    let session_cookie =
        session_cookie.ok_or_else(|| anyhow::anyhow!("no session cookie: {:?}", landed.set_cookies))?;
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"), "{session_cookie}");
    assert!(!browser.cookies.contains_key("weaver_oidc"), "the flow cookie outlived the sign-in");
    assert_eq!(issuer.redeemed(), 1);

    // The session names the mapped user; its group's binding shows A only.
    let session = browser.until("/ui/api/session", |s| s["namespaces"] == json!([a])).await?;
    assert_eq!(session["user"], "oidc:ann@example.com");
    browser.csrf = session["csrf"].as_str().map(str::to_owned);
    let records =
        browser.until("/admin/v1/usage/records", |p| p["data"].as_array().is_some_and(|d| d.len() == 2)).await?;
    assert_eq!(namespaces_of(&records), BTreeSet::from([a.clone()]));
    let refused = browser.get(&format!("/admin/v1/usage/records?namespace={b}")).await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let inventory = browser.until("/ui/api/inventory", |i| i["keys"].as_array().is_some_and(|k| !k.is_empty())).await?;
    assert_eq!(inventory["keys"].as_array().map(Vec::len), Some(1), "{inventory}");
    assert_eq!(inventory["keys"][0]["namespace"], json!(a));

    // The same in Chromium: the login page's button, to the issuer and back.
    weaver_e2e::browser::run_script(
        "cluster-oidc.mjs",
        &[
            ("WEAVER_UI_URL", &url),
            ("WEAVER_UI_PROVIDER", "Example SSO"),
            ("WEAVER_UI_USER", "oidc:ann@example.com"),
            ("WEAVER_UI_ALLOWED", &a),
            ("WEAVER_UI_OTHER", &b),
        ],
    )
    .await?;

    // A refresh keeps the session, never past the ID token's expiry.
    let refreshed = browser.go(reqwest::Method::POST, &format!("{url}/ui/api/session/refresh"), true).await?;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let id_token_end = k8s_openapi::jiff::Timestamp::now().as_second() + 300;
    assert!(refreshed.body["expires_at"].as_i64().is_some_and(|e| e <= id_token_end), "{}", refreshed.body);

    // Logging out ends the session at once, for the usage API too.
    let out = browser.go(reqwest::Method::DELETE, &format!("{url}/ui/api/session"), true).await?;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(browser.get("/ui/api/session").await?.status, StatusCode::UNAUTHORIZED);
    assert_eq!(browser.get("/admin/v1/usage/records").await?.status, StatusCode::UNAUTHORIZED);

    // Someone whose groups are bound nowhere signs in and sees no namespace.
    let bob = User { sub: "u-bob".into(), email: "bob@example.com".into(), groups: vec!["team-z".into()] };
    issuer.behave(Behaviour { user: Some(bob), ..Behaviour::default() });
    let mut other = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(other.sign_in().await?, "/ui/logs");
    let session = other.get("/ui/api/session").await?;
    assert_eq!(
        (session.body["user"].clone(), session.body["namespaces"].clone()),
        (json!("oidc:bob@example.com"), json!([]))
    );
    assert_eq!(other.get(&format!("/admin/v1/usage/records?namespace={a}")).await?.status, StatusCode::FORBIDDEN);

    // A code taken from another sign-in is worthless: with that sign-in's
    // state the browser's flow cookie does not match; with this one's, the
    // operator sends this flow's PKCE verifier, which the issuer refuses.
    issuer.behave(Behaviour { user: Some(ann.clone()), ..Behaviour::default() });
    let mut victim = Browser::new(&url, ca.as_bytes())?;
    let authorize = victim.start_sign_in().await?;
    let stolen = victim.at_issuer(&authorize).await?;
    let stolen_code = param(&stolen, "code").unwrap_or_default();
    let mut attacker = Browser::new(&url, ca.as_bytes())?;
    attacker.start_sign_in().await?;
    let refused = attacker.finish(&stolen).await?;
    assert_eq!(refused.location, "/ui/login?oidc_error=state");
    let mut attacker = Browser::new(&url, ca.as_bytes())?;
    let authorize = attacker.start_sign_in().await?;
    let own = attacker.at_issuer(&authorize).await?;
    let refused = attacker.finish(&with_param(&own, "code", &stolen_code)?).await?;
    assert_eq!(refused.location, "/ui/login?oidc_error=exchange");
    assert!(!attacker.cookies.contains_key("weaver_session"));

    // ID tokens that are not this sign-in's, are stale or are signed by a
    // key the issuer does not list: refused, no session.
    for (what, behaviour) in [
        ("a wrong nonce", Behaviour { wrong_nonce: true, ..Behaviour::default() }),
        ("an expired token", Behaviour { expired: true, ..Behaviour::default() }),
        ("a foreign signature", Behaviour { foreign_key: true, ..Behaviour::default() }),
    ] {
        issuer.behave(Behaviour { user: Some(ann.clone()), ..behaviour });
        let mut browser = Browser::new(&url, ca.as_bytes())?;
        assert_eq!(browser.sign_in().await?, "/ui/login?oidc_error=token", "{what}");
        assert!(!browser.cookies.contains_key("weaver_session"), "{what} gave a session");
    }
    // The issuer rotates its key: the operator reads the JWKS again (at
    // most every 10 s) and the new key's tokens are taken.
    issuer.behave(Behaviour { user: Some(ann.clone()), ..Behaviour::default() });
    issuer.rotate_key()?;
    eventually_within("a token signed by the new key to be taken", WAIT, Duration::from_millis(500), async || {
        let mut browser = Browser::new(&url, ca.as_bytes())?;
        let landed = browser.sign_in().await?;
        Ok(if landed == "/ui/logs" { ControlFlow::Break(()) } else { ControlFlow::Continue(landed) })
    })
    .await?;

    // The issuer says no.
    issuer.behave(Behaviour::default());
    let mut denied = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(denied.sign_in().await?, "/ui/login?oidc_error=denied");

    // The session ends with the ID token: then the user signs in again.
    issuer.behave(Behaviour { user: Some(ann), lifetime_s: Some(2), ..Behaviour::default() });
    let mut brief = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(brief.sign_in().await?, "/ui/logs");
    eventually_within("the session to end with its ID token", WAIT, Duration::from_millis(200), async || {
        let status = brief.get("/ui/api/session").await?.status;
        Ok(if status == StatusCode::UNAUTHORIZED {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(status.to_string())
        })
    })
    .await?;

    // Nothing secret in the operator's log.
    drop(operator);
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains("UI sign-in (OIDC)"), "no sign-in logged");
    assert!(logged.contains("PKCE verifier does not match"), "the stolen code was not refused for its verifier");
    for secret in ["client-secret-0123", stolen_code.as_str()] {
        assert!(!logged.contains(secret), "{secret:?} is in the operator's log");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn a_public_client_signs_in_with_pkce_alone_and_users_are_named_as_the_api_server_names_them()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    let (a, _b, home) = two_teams(&cluster, "oidc-public").await?;
    // No secret: PKCE alone binds the code to this operator's sign-in.
    let issuer = Issuer::start(CLIENT_ID, None).await?;
    let pat = User { sub: format!("u-pat-{a}"), email: "pat@example.com".into(), groups: Vec::new() };
    issuer.behave(Behaviour { user: Some(pat.clone()), ..Behaviour::default() });
    // The defaults: the `sub` claim, prefixed "<issuer>#", as the API
    // server's --oidc-username-claim and --oidc-username-prefix make it.
    let user = format!("{}#{}", issuer.url, pat.sub);
    grant_usage(&cluster, &a, "User", &user).await?;
    let dir = tempfile::tempdir()?;
    let (operator, url) = operator_for(&cluster, &home, &issuer, &[], &dir.path().join("operator.log")).await?;
    let ca = cluster.operator_ca(&home).await?;

    let mut browser = Browser::new(&url, ca.as_bytes())?;
    assert_eq!(browser.get("/ui/api/mode").await?.body, json!({"mode": "cluster", "oidc": "127.0.0.1"}));
    assert_eq!(browser.sign_in().await?, "/ui/logs");
    let session = browser.until("/ui/api/session", |s| s["namespaces"] == json!([a])).await?;
    assert_eq!(session["user"], json!(user));
    assert_eq!(issuer.redeemed(), 1);
    drop(operator);
    Ok(())
}
