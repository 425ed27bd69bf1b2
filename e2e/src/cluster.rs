//! The operator's test bed: a real kube-apiserver + etcd (`e2e/control-plane`,
//! started by `make e2e`), and the operator and gateways as real processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, Resource, ResourceExt};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use weaver_crds::compiler::Resources;
use weaver_crds::protocol::TOKEN_AUDIENCE;

/// The ClusterRole that lets a gateway receive snapshots and send reports.
pub const GATEWAY_ROLE: &str = "llm-weaver-gateway";

/// A connection to the test control plane.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// Connects to the plane named by `WEAVER_E2E_KUBECONFIG` (`make e2e` sets
    /// it), installs the CRDs and the gateway ClusterRole.
    pub async fn connect() -> anyhow::Result<Self> {
        let kubeconfig = PathBuf::from(
            std::env::var("WEAVER_E2E_KUBECONFIG")
                .context("WEAVER_E2E_KUBECONFIG is not set: run these tests with `make e2e`")?,
        );
        let config =
            Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default()).await?;
        let cluster = Self { client: Client::try_from(config)?, kubeconfig };
        cluster.install().await?;
        Ok(cluster)
    }

    async fn install(&self) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for (_, crd) in weaver_crds::crdgen::crds() {
            let name = crd.name_any();
            crds.patch(&name, &PatchParams::apply("weaver-e2e").force(), &Patch::Apply(&crd)).await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await??;
        }
        let role = ClusterRole {
            metadata: kube::api::ObjectMeta { name: Some(GATEWAY_ROLE.into()), ..Default::default() },
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec!["llmweaver.io".into()]),
                    resources: Some(vec!["gatewaysnapshots".into()]),
                    verbs: vec!["get".into()],
                    ..Default::default()
                },
                PolicyRule {
                    api_groups: Some(vec!["llmweaver.io".into()]),
                    resources: Some(vec!["gatewayreports".into()]),
                    verbs: vec!["create".into()],
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        self.apply_cluster(&role).await
    }

    /// Server-side applies one object of a namespace.
    pub async fn apply<K>(&self, namespace: &str, obj: &K) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let mut obj = obj.clone();
        obj.meta_mut().namespace = Some(namespace.to_owned());
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.patch(&obj.name_any(), &PatchParams::apply("weaver-e2e").force(), &Patch::Apply(&obj)).await?;
        Ok(())
    }

    /// Server-side applies one cluster-scoped object.
    pub async fn apply_cluster<K>(&self, obj: &K) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(self.client.clone());
        api.patch(&obj.name_any(), &PatchParams::apply("weaver-e2e").force(), &Patch::Apply(obj)).await?;
        Ok(())
    }

    /// Applies every Channel, ApiKey, RoutingPolicy, NamespacePolicy and Secret in `yaml` to `namespace`.
    pub async fn apply_yaml(&self, namespace: &str, yaml: &str) -> anyhow::Result<()> {
        let mut r = Resources::default();
        weaver_crds::manifests::parse_into(yaml, &mut r)?;
        for o in r.secrets {
            self.apply(namespace, &o).await?;
        }
        for o in r.channels {
            self.apply(namespace, &o).await?;
        }
        for o in r.routing_policies {
            self.apply(namespace, &o).await?;
        }
        for o in r.api_keys {
            self.apply(namespace, &o).await?;
        }
        for o in r.namespace_policies {
            self.apply(namespace, &o).await?;
        }
        Ok(())
    }

    /// A fresh namespace with a random name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = format!("{prefix}-{:06x}", rand::rng().random_range(0..0xFF_FFFF));
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// A projected-style token (audience `llm-weaver`) for ServiceAccount
    /// `name`, bound to the gateway role when `authorised`.
    pub async fn gateway_token(&self, namespace: &str, name: &str, authorised: bool) -> anyhow::Result<String> {
        if authorised {
            let binding = ClusterRoleBinding {
                metadata: kube::api::ObjectMeta { name: Some(format!("{namespace}-{name}")), ..Default::default() },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: GATEWAY_ROLE.into(),
                },
                subjects: Some(vec![service_account_subject(namespace, name)]),
            };
            self.apply_cluster(&binding).await?;
        }
        self.token(namespace, name, &[TOKEN_AUDIENCE]).await
    }

    /// A token for ServiceAccount `name` (created when missing) for
    /// `audiences`; none means the API server's own, as `kubectl create
    /// token` issues.
    pub async fn token(&self, namespace: &str, name: &str, audiences: &[&str]) -> anyhow::Result<String> {
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        self.apply(namespace, &sa).await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let token = api.create_token_request(name, &PostParams::default(), &request).await?;
        token.status.map(|s| s.token).context("TokenRequest returned no token")
    }

    /// Makes "another-replica" hold the operator's Lease in `namespace` for
    /// an hour, so an operator started there never leads: one watching every
    /// namespace then serves its HTTPS routes but writes nothing into other
    /// tests' namespaces.
    pub async fn lease_held_elsewhere(&self, namespace: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let lease = Lease {
            metadata: kube::api::ObjectMeta { name: Some("llm-weaver-operator".into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some("another-replica".into()),
                lease_duration_seconds: Some(3600),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            }),
        };
        self.apply(namespace, &lease).await
    }

    /// Starts an operator replica on this plane: replica `identity`, its
    /// Lease and TLS Secret in `namespace`, metrics on a free loopback port,
    /// JSON logs into `log`, and `args` besides (`--listen` among them).
    pub async fn operator(
        &self,
        namespace: &str,
        identity: &str,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        self.operator_as(&self.kubeconfig, namespace, identity, args, &[], log).await
    }

    /// [`Cluster::operator`] with the identity of `kubeconfig` and the
    /// environment `envs` (settings the way a Deployment gives them; `args`
    /// win over them).
    pub async fn operator_as(
        &self,
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        args: &[String],
        envs: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        let mut all: Vec<String> =
            ["--metrics-listen", "127.0.0.1:0", "--log-format", "json", "--namespace", namespace]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        all.extend(["--identity".to_owned(), identity.to_owned()]);
        all.extend_from_slice(args);
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("KUBECONFIG", &kubeconfig));
        Process::start(&binary("weaver-operator")?, &all, &env, log).await
    }

    /// Writes a kubeconfig into `path` that acts as ServiceAccount
    /// `namespace/name` (a token of the API server's audience, valid an hour):
    /// a process using it has exactly the RBAC that account is granted.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) -> anyhow::Result<()> {
        let token = self.token(namespace, name, &[]).await?;
        let admin = Kubeconfig::read_from(&self.kubeconfig)?;
        let cluster = admin.clusters.first().and_then(|c| c.cluster.clone()).context("no cluster in the kubeconfig")?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "plane", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": name, "namespace": namespace}}],
            "current-context": "sa",
        });
        // JSON is YAML: kube and kubectl read it as a kubeconfig.
        std::fs::write(path, serde_json::to_vec(&config)?)?;
        Ok(())
    }

    /// The CA the operator's serving certificate chains to, from its Secret.
    pub async fn operator_ca(&self, operator_namespace: &str) -> anyhow::Result<String> {
        self.operator_ca_in(operator_namespace, "llm-weaver-operator-tls").await
    }

    /// The CA in the operator's TLS Secret `secret`.
    pub async fn operator_ca_in(&self, operator_namespace: &str, secret: &str) -> anyhow::Result<String> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), operator_namespace).get(secret).await?;
        let data: BTreeMap<String, k8s_openapi::ByteString> = secret.data.unwrap_or_default();
        let ca = data.get("ca.crt").context("no ca.crt in the operator's TLS Secret")?;
        Ok(String::from_utf8(ca.0.clone())?)
    }
}

/// RBAC's name for ServiceAccount `namespace/name`.
pub fn service_account_subject(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// A binary of this workspace, built next to the test executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test executable has no target dir")?;
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

/// A child process that logs JSON lines to stderr; killed when dropped.
pub struct Process {
    pub child: Child,
    /// Fields of its `listening` log line.
    pub listening: serde_json::Value,
    pub log: PathBuf,
}

impl Process {
    /// Starts `program` and waits for its `listening` log line.
    pub async fn start(program: &Path, args: &[String], envs: &[(&str, &str)], log: PathBuf) -> anyhow::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut file = tokio::fs::File::create(&log).await?;
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                use tokio::io::AsyncWriteExt;
                file.write_all(format!("{line}\n").as_bytes()).await?;
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    return Ok::<_, anyhow::Error>(v);
                }
            }
            anyhow::bail!("exited before listening")
        })
        .await
        .map_err(|_| anyhow::anyhow!("{} did not start in time; log: {}", program.display(), log.display()))??;
        // Keep draining stderr into the log so the child never blocks on it.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = file.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Ok(Self { child, listening, log })
    }

    /// The address from the `listening` line's field.
    pub fn addr(&self, field: &str) -> String {
        self.listening[field].as_str().unwrap_or_default().to_owned()
    }

    /// Pauses the process (SIGSTOP) until [`Process::resume`]: as a pod
    /// throttled by its CPU limit, it finds what happened meanwhile waiting
    /// in its connections.
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP").await
    }

    /// Lets a paused process go on (SIGCONT).
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT").await
    }

    async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has exited")?;
        let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().await?;
        anyhow::ensure!(status.success(), "kill -{name} {pid} failed: {status}");
        Ok(())
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
