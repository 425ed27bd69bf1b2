//! The operator's usage API as people and dashboards in a cluster read it
//! (README, "In a cluster: the operator serves it"): over HTTPS trusting the
//! operator's CA, with a ServiceAccount token for the API server's own
//! audiences, which RBAC lets read usage.

use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef};
use kube::api::ObjectMeta;
use reqwest::StatusCode;
use serde_json::Value;

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
