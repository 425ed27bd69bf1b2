//! One operator test's world over the test control plane: a namespace of its
//! own, the mock upstream, the operator replicas and cluster-mode gateways as
//! real processes, and the checks the tests poll (leases, conditions,
//! status, metrics). `make e2e` starts the plane and the Postgres they use.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use reqwest::StatusCode;
use serde_json::json;
use weaver_crds::{ApiKey, Channel, NamespacePolicy};

use crate::cluster::{Cluster, Process, binary};
use crate::mock_upstream::{Behaviour, MockUpstream};

/// How long the bed's `until_*` checks wait before they fail.
pub const WAIT: Duration = Duration::from_secs(30);

/// One test's world: a namespace, the mock upstream, the operator (and a
/// standby replica when asked for) and the gateways.
pub struct Bed {
    pub cluster: Cluster,
    pub ns: String,
    pub upstream: MockUpstream,
    /// The replica that leads when the bed starts (`operator-0`).
    pub operator: Option<Process>,
    /// A second operator replica, when a test starts one.
    pub standby: Option<Process>,
    pub gateways: Vec<Option<Process>>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The operators' `--store`, when the test gives one.
    pub store: Option<String>,
    /// The gateways' `--store`, when the test gives one.
    gateway_store: Option<String>,
    /// The operators' `--gateway-timeout`.
    gateway_timeout: Duration,
    /// Whose identity the operators and gateways run with (a test may change
    /// the operators' settings before restarting one).
    pub release: Option<Release>,
}

/// A Helm release already applied to the plane: the bed runs the operator and
/// the gateways as its ServiceAccounts, with exactly the RBAC it grants, and
/// with the operator settings its Deployment gives.
#[derive(Clone, Debug)]
pub struct Release {
    /// The release's namespace; the bed uses it as its own.
    pub namespace: String,
    /// A kubeconfig acting as the operator's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    /// The operator container's plain environment (`WEAVER_TLS_SECRET`...).
    pub operator_env: Vec<(String, String)>,
    /// The gateways' ServiceAccount (in `namespace`), bound by the release.
    pub gateway_account: String,
}

impl Release {
    fn tls_secret(&self) -> &str {
        self.operator_env
            .iter()
            .find(|(k, _)| k == "WEAVER_TLS_SECRET")
            .map_or("llm-weaver-operator-tls", |(_, v)| v.as_str())
    }
}

/// What a [`Bed`] starts; [`Setup::new`] gives the defaults.
pub struct Setup {
    /// The upstream the manifests point at; the bed keeps it running.
    pub upstream: MockUpstream,
    /// Manifests without namespaces, applied to the bed's namespace.
    pub manifests: String,
    /// Cluster-mode gateways to start.
    pub gateways: usize,
    /// Also start a standby operator replica (`operator-1`) once `operator-0`
    /// leads; odd gateways then follow the standby, as gateways behind a
    /// Service spread over the replicas.
    pub standby: bool,
    /// The operators' `--store` (status usage read from the store).
    pub operator_store: Option<String>,
    /// The gateways' `--store` (each gets a data folder of its own for its
    /// spool).
    pub gateway_store: Option<String>,
    /// The operators' `--gateway-timeout`: how long a silent gateway still
    /// counts as live (for the rate-limit shares).
    pub gateway_timeout: Duration,
    /// Run as a Helm release's ServiceAccounts (default: the plane's admin,
    /// and gateways bound to the test's gateway role).
    pub release: Option<Release>,
}

impl Setup {
    /// One operator and two gateways without a store, serving
    /// [`manifests`] against `upstream`.
    pub fn new(upstream: MockUpstream) -> Self {
        let manifests = manifests(&upstream.base_url());
        Self {
            upstream,
            manifests,
            gateways: 2,
            standby: false,
            operator_store: None,
            gateway_store: None,
            gateway_timeout: Duration::from_secs(10),
            release: None,
        }
    }
}

/// Secret `upstream-creds`, the upstream credential every [`channel`] uses.
pub const UPSTREAM_CREDS: &str =
    "---\napiVersion: v1\nkind: Secret\nmetadata: {name: upstream-creds}\nstringData: {apiKey: sk-upstream}\n";

/// Channel `name` (OpenAI, at `upstream`, with the credential of
/// [`UPSTREAM_CREDS`], labelled `tier: <name>`) serving `model` at 0.15 /
/// 0.60 USD per million tokens; `extra` is one more line of its spec.
pub fn channel(name: &str, upstream: &str, model: &str, extra: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: {name}, labels: {{tier: {name}}}}}
spec:
  provider: openai
  baseUrl: {upstream}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: {model}
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
  {extra}
"#
    )
}

/// ApiKey `name`, its key issued by the operator, with `spec` (a YAML flow
/// mapping).
pub fn api_key(name: &str, spec: &str) -> String {
    format!("---\napiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// [`UPSTREAM_CREDS`], [`channel`] `primary` at `upstream` serving
/// `gpt-4o-mini`, RoutingPolicy `default` selecting it by label, and
/// [`api_key`] `app` allowed `gpt-4o*`.
pub fn manifests(upstream: &str) -> String {
    let policy = "---\napiVersion: llmweaver.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: default}\n\
                  spec: {models: [\"gpt-4o*\"], channels: [{selector: {matchLabels: {tier: primary}}}]}\n";
    UPSTREAM_CREDS.to_owned()
        + &channel("primary", upstream, "gpt-4o-mini", "")
        + policy
        + &api_key("app", r#"{allowedModels: ["gpt-4o*"]}"#)
}

impl Bed {
    /// The default [`Setup`] with a default mock upstream.
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_store(None).await
    }

    /// A default bed whose operator reads usage from the store at `store`.
    pub async fn with_store(store: Option<String>) -> anyhow::Result<Self> {
        let mut setup = Setup::new(MockUpstream::start(Behaviour::default()).await?);
        setup.operator_store = store;
        Self::start(setup).await
    }

    /// Applies the manifests to a fresh namespace, then starts the operator
    /// (and the standby), then the gateways.
    pub async fn start(setup: Setup) -> anyhow::Result<Self> {
        let cluster = Cluster::connect().await?;
        let ns = match &setup.release {
            Some(release) => release.namespace.clone(),
            None => cluster.namespace("e2e").await?,
        };
        cluster.apply_yaml(&ns, &setup.manifests).await?;
        let mut bed = Self {
            cluster,
            ns,
            upstream: setup.upstream,
            operator: None,
            standby: None,
            gateways: (0..setup.gateways).map(|_| None).collect(),
            dir: tempfile::tempdir()?,
            http: reqwest::Client::new(),
            store: setup.operator_store,
            gateway_store: setup.gateway_store,
            gateway_timeout: setup.gateway_timeout,
            release: setup.release,
        };
        bed.operator = Some(bed.operator_process(None, "operator-0").await?);
        let token = match &bed.release {
            Some(r) => bed.cluster.gateway_token(&bed.ns, &r.gateway_account, false).await?,
            None => bed.cluster.gateway_token(&bed.ns, "gateway", true).await?,
        };
        std::fs::write(bed.path("token"), token)?;
        let secret = bed.release.as_ref().map_or("llm-weaver-operator-tls", Release::tls_secret);
        let ca = bed.cluster.operator_ca_in(&bed.ns, secret).await?;
        std::fs::write(bed.path("ca.pem"), ca)?;
        if setup.standby {
            bed.until_leader("operator-0").await?;
            bed.standby = Some(bed.operator_process(None, "operator-1").await?);
        }
        for i in 0..setup.gateways {
            let url = if bed.standby.is_some() && i % 2 == 1 { bed.standby_url() } else { bed.operator_url() };
            bed.start_gateway_at(i, &url, "gateway", "token").await?;
        }
        Ok(bed)
    }

    /// A bed whose gateways already serve the issued key of ApiKey `app`.
    pub async fn serving() -> anyhow::Result<(Self, String)> {
        let bed = Self::new().await?;
        let key = bed.issued_key("app").await?;
        bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
        Ok((bed, key))
    }

    /// A file in the bed's temporary folder (logs, token, CA, caches).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An operator replica on `listen` (a free port when `None`), advertising
    /// its address for report forwarding.
    pub async fn operator_process(&self, listen: Option<&str>, identity: &str) -> anyhow::Result<Process> {
        let listen = match listen {
            Some(l) => l.to_owned(),
            None => format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()),
        };
        let advertise = format!("https://{listen}");
        let gateway_timeout = humantime::format_duration(self.gateway_timeout).to_string();
        let mut args: Vec<String> = [
            "--listen",
            &listen,
            "--advertise-url",
            &advertise,
            "--watch-namespace",
            &self.ns,
            "--status-interval",
            "500ms",
            "--gateway-timeout",
            &gateway_timeout,
            "--lease-duration",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(store) = &self.store {
            // Records of earlier days are re-read every second, not every 5 min.
            args.extend(["--store".into(), store.clone(), "--store-history-refresh".into(), "1s".into()]);
        }
        let log = self.path(&format!("{identity}-{}.log", rand_suffix()));
        match &self.release {
            Some(r) => {
                self.cluster.operator_as(&r.operator_kubeconfig, &self.ns, identity, &args, &r.operator_env, log).await
            }
            None => self.cluster.operator(&self.ns, identity, &args, log).await,
        }
    }

    /// The replica holding the leader Lease.
    pub async fn lease_holder(&self) -> Option<String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.cluster.client.clone(), &self.ns);
        leases.get("llm-weaver-operator").await.ok()?.spec?.holder_identity
    }

    /// Polls until `identity` holds the leader Lease; returns how long it took.
    pub async fn until_leader(&self, identity: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if self.lease_holder().await.as_deref() == Some(identity) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{identity} never took the lease; holder {:?}", self.lease_holder().await)
    }

    /// The HTTPS address of the operator started first (empty once it is gone).
    pub fn operator_url(&self) -> String {
        self.operator.as_ref().map(|o| format!("https://{}", o.addr("addr"))).unwrap_or_default()
    }

    /// The HTTPS address of the standby replica (empty without one).
    pub fn standby_url(&self) -> String {
        self.standby.as_ref().map(|o| format!("https://{}", o.addr("addr"))).unwrap_or_default()
    }

    /// (Re)starts gateway `i` following the operator started first.
    pub async fn start_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_gateway_at(i, &self.operator_url(), "gateway", "token").await
    }

    /// (Re)starts gateway `i` following the operator at `url` as instance
    /// `<instance>-<i>`, presenting the token in the bed's file `token`.
    pub async fn start_gateway_at(&mut self, i: usize, url: &str, instance: &str, token: &str) -> anyhow::Result<()> {
        let url = if url.is_empty() { "https://127.0.0.1:9".to_owned() } else { url.to_owned() };
        let mut args: Vec<String> = vec![
            "--operator".into(),
            url,
            "--operator-ca".into(),
            self.path("ca.pem").to_string_lossy().into_owned(),
            "--token-file".into(),
            self.path(token).to_string_lossy().into_owned(),
            "--cache-file".into(),
            self.path(&format!("cache-{i}.json")).to_string_lossy().into_owned(),
            "--instance".into(),
            format!("{instance}-{i}"),
            "--report-interval".into(),
            "500ms".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--log-format".into(),
            "json".into(),
        ];
        if let Some(store) = &self.gateway_store {
            // The spool of records the store has not taken yet: one folder
            // per gateway, kept across its restarts.
            let data = self.path(&format!("data-{i}")).to_string_lossy().into_owned();
            args.extend(["--store".into(), store.clone(), "--data-dir".into(), data]);
        }
        let log = self.path(&format!("gateway-{i}-{}.log", rand_suffix()));
        self.gateways[i] = Some(Process::start(&binary("weaver-gateway")?, &args, &[], log).await?);
        Ok(())
    }

    /// Gateway `i`'s client address (`http://...`; empty when it is stopped).
    pub fn gateway(&self, i: usize) -> String {
        self.gateways[i].as_ref().map(|g| format!("http://{}", g.addr("addr"))).unwrap_or_default()
    }

    /// The gateway's admin listener (metrics).
    pub fn gateway_admin(&self, i: usize) -> String {
        self.gateways[i].as_ref().map(|g| format!("http://{}", g.addr("admin_addr"))).unwrap_or_default()
    }

    /// The key the operator issued into the ApiKey's Secret.
    pub async fn issued_key(&self, apikey: &str) -> anyhow::Result<String> {
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        let name = format!("{apikey}-apikey");
        let secret = tokio::time::timeout(
            WAIT,
            await_condition(secrets, &name, |s: Option<&Secret>| s.is_some_and(|s| s.data.is_some())),
        )
        .await??
        .ok_or_else(|| anyhow::anyhow!("secret vanished"))?;
        let data = secret.data.unwrap_or_default();
        Ok(String::from_utf8(data.get("apiKey").map(|b| b.0.clone()).unwrap_or_default())?)
    }

    /// A small chat request through gateway `i`; its status (503 when the
    /// gateway does not answer at all).
    pub async fn chat(&self, gateway: usize, key: &str, model: &str) -> StatusCode {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        match self
            .http
            .post(format!("{}/v1/chat/completions", self.gateway(gateway)))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r.status(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Polls until every live gateway knows `key`: it lists the models for
    /// it (taking nothing from the key's limits); returns the request ids of
    /// the listings that succeeded, one per gateway, each of which makes a
    /// usage record in the bed's namespace.
    pub async fn until_served(&self, key: &str) -> anyhow::Result<Vec<String>> {
        let started = Instant::now();
        let mut ids = Vec::new();
        for i in (0..self.gateways.len()).filter(|i| self.gateways[*i].is_some()) {
            let url = format!("{}/v1/models", self.gateway(i));
            loop {
                let id = format!("{}-listing-{:016x}", self.ns, rand::random::<u64>());
                let listed = self.http.get(&url).bearer_auth(key).header("x-request-id", &id).send().await;
                if listed.is_ok_and(|r| r.status() == StatusCode::OK) {
                    ids.push(id);
                    break;
                }
                anyhow::ensure!(started.elapsed() < WAIT, "gateway {i} did not accept the key within {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(ids)
    }

    /// Polls until every live gateway answers `want` for this key and model;
    /// returns how long it took.
    pub async fn until_all(&self, key: &str, model: &str, want: StatusCode) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            let mut all = true;
            for i in 0..self.gateways.len() {
                if self.gateways[i].is_some() && self.chat(i, key, model).await != want {
                    all = false;
                }
            }
            if all {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("gateways did not answer {want} for {model} within {WAIT:?}")
    }

    /// The sample `name` (with its labels) of the `/metrics` at `url`; -1
    /// when absent or unreachable.
    pub async fn metric(&self, url: &str, name: &str) -> f64 {
        let text = match self.http.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return -1.0,
        };
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(-1.0)
    }

    /// Waits until every gateway serves the operator's current snapshot
    /// version, once that version is newer than `past`.
    pub async fn until_converged(&self, past: f64) -> anyhow::Result<f64> {
        let op_metrics =
            self.operator.as_ref().map(|o| format!("http://{}", o.addr("metrics_addr"))).unwrap_or_default();
        let started = Instant::now();
        while started.elapsed() < WAIT {
            let version = self.metric(&op_metrics, "weaver_operator_snapshot_version").await;
            let mut all = version > past;
            for i in 0..self.gateways.len() {
                all &= self.metric(&self.gateway_admin(i), "weaver_gateway_snapshot_version").await == version;
            }
            if all {
                return Ok(version);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("gateways did not converge on the operator's version")
    }

    /// `(status, reason)` of condition `type_` of object `name`.
    pub async fn condition<K>(&self, name: &str, type_: &str) -> Option<(String, String)>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + serde::Serialize,
    {
        let api: Api<K> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        let conditions = obj["status"]["conditions"].as_array()?.clone();
        let c = conditions.iter().find(|c| c["type"] == type_)?;
        Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
    }

    /// Polls until condition `type_` of object `name` has this status and reason.
    pub async fn until_condition<K>(&self, name: &str, type_: &str, status: &str, reason: &str) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + serde::Serialize,
    {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < WAIT {
            last = self.condition::<K>(name, type_).await;
            if last.as_ref().is_some_and(|(s, r)| s == status && r == reason) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{name}: {type_} never became {status}/{reason}; last {last:?}")
    }

    /// The reasons of the Events about object `name`.
    pub async fn events_for(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .filter_map(|e| e.reason)
            .collect())
    }

    /// Merge-patches object `name`.
    pub async fn patch<K>(&self, name: &str, patch: serde_json::Value) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }
}

/// The usage store `make e2e` starts (`e2e/postgres up`). Tests share its
/// database: records carry the test's own namespace and the operator reads
/// only the namespace it watches.
pub fn store_url() -> anyhow::Result<String> {
    std::env::var("WEAVER_TEST_POSTGRES_URL").context("WEAVER_TEST_POSTGRES_URL is not set: run with `make e2e`")
}

/// `(requests, input tokens, output tokens, cost, errors)` of a usage status.
pub type Seen = (u64, u64, u64, String, Option<u64>);

fn seen(u: Option<&weaver_crds::api_key::UsageStatus>) -> Option<Seen> {
    u.map(|u| (u.requests, u.input_tokens, u.output_tokens, u.cost.clone(), u.errors))
}

impl Bed {
    /// The usage in ApiKey `name`'s status.
    pub async fn key_usage(&self, name: &str) -> Option<Seen> {
        let keys: Api<ApiKey> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        seen(keys.get(name).await.ok()?.status?.usage.as_ref())
    }

    /// The usage in Channel `name`'s status.
    pub async fn channel_usage(&self, name: &str) -> Option<Seen> {
        let channels: Api<Channel> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        seen(channels.get(name).await.ok()?.status?.usage.as_ref())
    }

    /// The usage in the status of the namespace's NamespacePolicy.
    pub async fn namespace_usage(&self) -> Option<Seen> {
        let policies: Api<NamespacePolicy> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        seen(policies.get(weaver_crds::namespace_policy::NAME).await.ok()?.status?.usage.as_ref())
    }

    /// Polls until ApiKey `key` and Channel `channel` show exactly these totals.
    pub async fn until_usage(
        &self,
        key: &str,
        want_key: &Seen,
        channel: &str,
        want_channel: &Seen,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let (k, c) = (self.key_usage(key).await, self.channel_usage(channel).await);
            if k.as_ref() == Some(want_key) && c.as_ref() == Some(want_channel) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < WAIT,
                "status never showed the store's totals: key {k:?} (want {want_key:?}), channel {c:?} (want {want_channel:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The budget alert Events of one object: `(type, message)`, each checked
    /// to be a single occurrence (a repeat would be a series).
    pub async fn budget_events(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        let events: Api<Event> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        let mut out = Vec::new();
        for e in events.list(&ListParams::default()).await?.items {
            if e.involved_object.name.as_deref() != Some(name) || e.reason.as_deref() != Some("BudgetThresholdCrossed")
            {
                continue;
            }
            anyhow::ensure!(e.series.is_none() && e.count.unwrap_or(1) <= 1, "a budget alert repeated: {e:?}");
            out.push((e.type_.unwrap_or_default(), e.message.unwrap_or_default()));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// Polls until object `name` has at least `n` budget alert Events.
    pub async fn until_budget_events(&self, name: &str, n: usize) -> anyhow::Result<Vec<(String, String)>> {
        let started = Instant::now();
        loop {
            let events = self.budget_events(name).await?;
            if events.len() >= n {
                return Ok(events);
            }
            anyhow::ensure!(started.elapsed() < WAIT, "{} budget alert Events, want {n}: {events:?}", events.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The metrics address of the operator started first.
    pub fn operator_metrics(&self) -> String {
        self.operator.as_ref().map(|o| format!("http://{}", o.addr("metrics_addr"))).unwrap_or_default()
    }

    /// Polls until the operator's metric `name` is at least `min`.
    pub async fn until_metric(&self, name: &str, min: f64) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let value = self.metric(&self.operator_metrics(), name).await;
            if value >= min {
                return Ok(value);
            }
            anyhow::ensure!(started.elapsed() < WAIT, "{name} is {value}, want at least {min}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the leading operator and starts `identity` in its place, with
    /// `store`; returns once it holds the Lease.
    pub async fn replace_operator(&mut self, identity: &str, store: Option<String>) -> anyhow::Result<()> {
        if let Some(op) = self.operator.take() {
            op.kill().await?;
        }
        self.store = store;
        self.operator = Some(self.operator_process(None, identity).await?);
        self.until_leader(identity).await?;
        Ok(())
    }
}

/// Makes log names unique across restarts of one process.
fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
