//! The operator's usage API as people and dashboards in a cluster read it
//! (README, "In a cluster: the operator serves it"): over HTTPS trusting the
//! operator's CA, with a ServiceAccount token for the API server's own
//! audiences, which RBAC lets read usage.

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef};
use kube::api::ObjectMeta;
use reqwest::StatusCode;
use serde_json::Value;
use weaver_store::{Outcome, UsageStore as _};

use crate::bed::WAIT;
use crate::cluster::{Cluster, service_account_subject};

/// The Role [`team_token`] creates.
pub const ROLE: &str = "usage-reader";

/// What a usage API caller needs in a namespace: `get` on `apikeys/usage`
/// (records, summary, export) and on `apikeys` (a key's budget and spend).
pub fn rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["llmweaver.io".into()]),
        resources: Some(vec!["apikeys".into(), "apikeys/usage".into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    }]
}

/// A binding's reference to the Role or ClusterRole (`kind`) `name`.
pub fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: name.into() }
}

/// A token of ServiceAccount `service_account` in `namespace` which the Role
/// [`ROLE`] there (with [`rules`]) lets read the namespace's usage, as a
/// team grants its dashboard; issued for the API server's audiences, as
/// `kubectl create token` issues it.
pub async fn team_token(cluster: &Cluster, namespace: &str, service_account: &str) -> anyhow::Result<String> {
    let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
    cluster.apply(namespace, &Role { metadata: meta(ROLE), rules: Some(rules()) }).await?;
    let binding = RoleBinding {
        metadata: meta(&format!("{service_account}-reads-usage")),
        role_ref: role_ref("Role", ROLE),
        subjects: Some(vec![service_account_subject(namespace, service_account)]),
    };
    cluster.apply(namespace, &binding).await?;
    cluster.token(namespace, service_account, &[]).await
}

/// Two teams' namespaces (`<prefix>-a-*`, `<prefix>-b-*`) and one for the
/// operator (`<prefix>-op-*`), answered in that order. Each team has ApiKey
/// `app` whose key (`team_key(namespace)`) is in a Secret the test wrote, so
/// the key compiles without a leader issuing it; the store holds two usage
/// records of A's key and one of B's.
pub async fn two_teams(cluster: &Cluster, prefix: &str) -> anyhow::Result<(String, String, String)> {
    let (a, b) = (cluster.namespace(&format!("{prefix}-a")).await?, cluster.namespace(&format!("{prefix}-b")).await?);
    let home = cluster.namespace(&format!("{prefix}-op")).await?;
    for ns in [&a, &b] {
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-key}}\nstringData: {{apiKey: {}}}\n",
            team_key(ns)
        );
        let key = "apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {name: app}\n\
                   spec: {secretRef: {name: app-key, key: apiKey}}\n";
        cluster.apply_yaml(ns, &format!("{secret}---\n{key}")).await?;
    }
    let store = weaver_store::Store::connect(&crate::bed::store_url()?, weaver_store::StoreOptions::default())?;
    store.migrate().await?;
    let one = |ns: &str, id: &str| crate::records::record(ns, "app", Some("primary"), id, Outcome::Ok, (10, 2), 1_000);
    store.insert_batch(&[one(&a, "1"), one(&a, "2"), one(&b, "3")]).await?;
    Ok((a, b, home))
}

/// The key [`two_teams`] writes for the ApiKey of `namespace`: one of its
/// own, since the operator refuses a key value that two ApiKeys share (and
/// tests share a plane).
pub fn team_key(namespace: &str) -> String {
    format!("lw-user-provided-{namespace}")
}

/// The namespaces of a page of usage records (`GET /admin/v1/usage/records`).
pub fn namespaces_of(records: &Value) -> std::collections::BTreeSet<String> {
    records["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["namespace"].as_str().map(str::to_owned))
        .collect()
}

/// A caller of one operator replica's usage API.
pub struct UsageReader {
    http: reqwest::Client,
    /// `https://host:port/admin/v1`.
    base: String,
}

impl UsageReader {
    /// The usage API of the operator at `operator` (`https://host:port`),
    /// whose serving certificate chains to the CA `ca_pem` (`ca.crt` of its
    /// TLS Secret, see [`Cluster::operator_ca`]).
    pub fn new(operator: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let ca = reqwest::Certificate::from_pem(ca_pem)?;
        Ok(Self {
            http: reqwest::Client::builder().add_root_certificate(ca).build()?,
            base: format!("{operator}/admin/v1"),
        })
    }

    /// `GET /admin/v1 + path` with `token` (none: no Authorization header):
    /// the status and the JSON body (the text, as a JSON string, when it is
    /// not JSON).
    pub async fn get(&self, token: Option<&str>, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Polls until `GET path` answers 200 with a body `want` accepts (RBAC
    /// objects and the operator's watch take a moment to apply), for
    /// [`WAIT`] at most.
    pub async fn until(&self, token: &str, path: &str, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let (status, body) = self.get(Some(token), path).await?;
            if status == StatusCode::OK && want(&body) {
                return Ok(body);
            }
            anyhow::ensure!(started.elapsed() < WAIT, "GET {path} never answered as wanted; last {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
