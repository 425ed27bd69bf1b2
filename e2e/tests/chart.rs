//! The Helm chart (charts/llm-weaver): `helm lint` and `helm template` for
//! several value sets, every rendered object applied with server-side apply
//! (strict field validation) to the real test API server, the operator and
//! gateways run as the chart's ServiceAccounts with exactly its RBAC, and the
//! sidecar webhook answering the API server. Run with `make e2e`: it builds
//! helm from Go modules (`e2e/control-plane build-helm`), starts the plane and
//! sets WEAVER_E2E_HELM and WEAVER_E2E_KUBECONFIG.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use weaver_crds::ApiKey;
use weaver_e2e::bed::{Bed, Release, Setup, WAIT, api_key};
use weaver_e2e::cluster::Cluster;
use weaver_e2e::gateway::eventually_within;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};

/// Kinds of other operators' CRDs (cert-manager, CloudNativePG, Prometheus
/// Operator) the test plane does not serve; the value sets that render them
/// are checked by their fields instead.
const FOREIGN_KINDS: [&str; 4] = ["Certificate", "Cluster", "ServiceMonitor", "PrometheusRule"];

fn helm() -> anyhow::Result<PathBuf> {
    let helm = std::env::var_os("WEAVER_E2E_HELM")
        .context("WEAVER_E2E_HELM is not set: run these tests with `make e2e` (it builds helm)")?;
    Ok(PathBuf::from(helm))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> String {
    repo().join("charts/llm-weaver").to_string_lossy().into_owned()
}

/// The value sets CI renders: name and `helm` arguments.
fn value_sets() -> Vec<(&'static str, Vec<String>)> {
    let set = |pairs: &[&str]| pairs.iter().flat_map(|p| ["--set".to_owned(), (*p).to_owned()]).collect::<Vec<_>>();
    vec![
        ("defaults", vec![]),
        (
            "sidecar",
            set(&[
                "sidecar.enabled=true",
                "sidecar.serviceAccounts[0].namespace=apps",
                "sidecar.serviceAccounts[0].name=default",
            ]),
        ),
        (
            "cert-manager",
            set(&["tls.mode=certManager", "tls.certManager.issuerRef.name=weaver-ca", "sidecar.enabled=true"]),
        ),
        ("cloudnative-pg", set(&["store.type=postgres", "store.postgres.cloudNativePG.enabled=true"])),
        ("single-namespace", set(&["watchNamespace=team-a"])),
        ("sqlite", set(&["store.type=sqlite", "gateway.replicas=1"])),
        ("monitoring", vec!["--api-versions".into(), "monitoring.coreos.com/v1".into()]),
        (
            "oidc",
            set(&[
                "operator.oidc.issuerUrl=https://dex.example.com",
                "operator.oidc.clientId=llm-weaver",
                "operator.oidc.redirectUrl=https://weaver.example.com/ui/api/oidc/callback",
                "operator.oidc.clientSecret.name=weaver-oidc",
                "operator.oidc.groupsClaim=groups",
                "operator.oidc.caConfigMap=idp-ca",
                "sidecar.enabled=true",
            ]),
        ),
    ]
}

/// Runs helm; its stdout, or an error with its stderr.
fn run_helm(args: &[String]) -> anyhow::Result<String> {
    let out = std::process::Command::new(helm()?).args(args).output()?;
    anyhow::ensure!(out.status.success(), "helm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template` of release `release` in `namespace` with `args`: every
/// object, CRDs included.
fn render(release: &str, namespace: &str, args: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut all: Vec<String> =
        ["template", release, &chart(), "--namespace", namespace, "--include-crds"].map(str::to_owned).to_vec();
    all.extend_from_slice(args);
    let text = run_helm(&all)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> anyhow::Result<&'a Value> {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .with_context(|| format!("no {kind} named *{suffix}"))
}

/// The first container of Deployment `*-<component>`.
fn container<'a>(docs: &'a [Value], component: &str) -> anyhow::Result<&'a Value> {
    Ok(&named(docs, "Deployment", &format!("-{component}"))?["spec"]["template"]["spec"]["containers"][0])
}

/// The plain value of environment variable `name` of a container.
fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    env(c, name)?["value"].as_str().map(str::to_owned)
}

/// Every (apiGroup, resource, verb) the ClusterRoles of `docs` grant.
fn cluster_grants(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut grants = BTreeSet::new();
    for role in of_kind(docs, "ClusterRole") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                        grants.insert((s(group), s(resource), s(verb)));
                    }
                }
            }
        }
    }
    grants
}

/// What every value set must render, whatever else it holds.
fn check_common(name: &str, docs: &[Value]) -> anyhow::Result<()> {
    for d in of_kind(docs, "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}: {}", d["metadata"]["name"]);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        for c in pod["containers"].as_array().into_iter().flatten() {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            assert!(c["readinessProbe"]["httpGet"].is_object() && c["livenessProbe"]["httpGet"].is_object());
            assert!(c["resources"]["requests"].is_object(), "{name}: {} has no requests", c["name"]);
        }
    }
    let operator = named(docs, "Deployment", "-operator")?;
    assert_eq!(operator["spec"]["replicas"], 2, "{name}: two operator replicas (Lease election)");
    let op = container(docs, "operator")?;
    let sans: BTreeSet<String> =
        env_value(op, "WEAVER_TLS_SANS").context("no SANs")?.split(',').map(str::to_owned).collect();
    let service = named(docs, "Service", "-operator")?["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    assert!(sans.contains(&format!("{service}.weaver.svc")), "{name}: the certificate covers the Service: {sans:?}");

    let gw_deploy = named(docs, "Deployment", "-gateway")?;
    let gw_pod = &gw_deploy["spec"]["template"]["spec"];
    let gw = container(docs, "gateway")?;
    let grace: u64 = env_value(gw, "WEAVER_SHUTDOWN_GRACE")
        .and_then(|g| g.strip_suffix('s').and_then(|s| s.parse().ok()))
        .context("no shutdown grace")?;
    let termination = gw_pod["terminationGracePeriodSeconds"].as_u64().context("no termination grace")?;
    assert!(termination > grace, "{name}: pods are killed ({termination}s) before streams drain ({grace}s)");
    assert_eq!(gw_pod["automountServiceAccountToken"], false, "{name}: gateways need no API server token");
    let volumes = gw_pod["volumes"].as_array().context("no volumes")?;
    let token = volumes.iter().find(|v| v["name"] == "token").context("no token volume")?;
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "llm-weaver");
    let ca = volumes.iter().find(|v| v["name"] == "operator-ca").context("no CA volume")?;
    assert_eq!(
        ca["secret"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "{name}: only the CA, never its key"
    );
    assert_eq!(ca["secret"]["secretName"].as_str(), env_value(op, "WEAVER_TLS_SECRET").as_deref());
    // Gateways reach the API server for nothing: their role is the operator's SubjectAccessReview.
    let gateway_role = named(docs, "ClusterRole", "-gateway")?;
    assert_eq!(
        gateway_role["rules"],
        json!([
            {"apiGroups": ["llmweaver.io"], "resources": ["gatewaysnapshots"], "verbs": ["get"]},
            {"apiGroups": ["llmweaver.io"], "resources": ["gatewayreports"], "verbs": ["create"]}
        ])
    );
    Ok(())
}

/// What each value set renders besides the common part.
fn check_set(name: &str, docs: &[Value]) -> anyhow::Result<()> {
    let op = container(docs, "operator")?;
    let gw = container(docs, "gateway")?;
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    match name {
        "defaults" => {
            for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "CustomResourceDefinition"]
            {
                assert!(kinds.contains(kind), "defaults: no {kind}");
            }
            for kind in ["MutatingWebhookConfiguration", "ServiceMonitor", "PrometheusRule", "Certificate", "Cluster"] {
                assert!(!kinds.contains(kind), "defaults: {kind} without asking");
            }
            let hpa = of_kind(docs, "HorizontalPodAutoscaler")[0];
            assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
            assert!(named(docs, "Deployment", "-gateway")?["spec"]["replicas"].is_null(), "the HPA owns replicas");
            let spread =
                &named(docs, "Deployment", "-gateway")?["spec"]["template"]["spec"]["topologySpreadConstraints"];
            assert_eq!(spread[0]["topologyKey"], "topology.kubernetes.io/zone");
            let grants = cluster_grants(docs);
            assert!(grants.contains(&("".into(), "secrets".into(), "watch".into())));
            assert!(!grants.iter().any(|(_, _, verb)| verb == "*" || verb == "delete"), "{grants:?}");
        }
        "sidecar" | "cert-manager" => {
            let hook = of_kind(docs, "MutatingWebhookConfiguration")[0];
            let w = &hook["webhooks"][0];
            assert_eq!(w["failurePolicy"], "Ignore");
            assert_eq!(w["namespaceSelector"]["matchLabels"]["llmweaver.io/inject"], "enabled");
            assert_eq!(w["clientConfig"]["service"]["path"], "/inject");
            let template: Value = serde_json::from_str(
                named(docs, "ConfigMap", "-inject")?["data"]["sidecar.json"].as_str().context("no template")?,
            )?;
            assert_eq!(template["container"]["image"], gw["image"], "sidecar and Deployment share one image");
            assert_eq!(env(&template["container"], "WEAVER_OPERATOR_URL"), env(gw, "WEAVER_OPERATOR_URL"));
            assert_eq!(env_value(op, "WEAVER_INJECT_TEMPLATE").as_deref(), Some("/etc/llm-weaver/inject/sidecar.json"));
            if name == "cert-manager" {
                let cert = of_kind(docs, "Certificate")[0];
                let mut names: BTreeSet<String> = BTreeSet::new();
                for list in ["dnsNames", "ipAddresses"] {
                    names.extend(
                        cert["spec"][list]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str())
                            .map(str::to_owned),
                    );
                }
                let sans: BTreeSet<String> =
                    env_value(op, "WEAVER_TLS_SANS").unwrap_or_default().split(',').map(str::to_owned).collect();
                assert_eq!(names, sans, "the Certificate covers what the operator checks");
                assert_eq!(cert["spec"]["secretName"].as_str(), env_value(op, "WEAVER_TLS_SECRET").as_deref());
                assert!(hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string());
                assert!(env(op, "WEAVER_WEBHOOK_CONFIGURATION").is_none(), "cert-manager injects the caBundle");
                let role = named(docs, "Role", "-operator")?;
                for rule in
                    role["rules"].as_array().into_iter().flatten().filter(|r| r["resources"] == json!(["secrets"]))
                {
                    assert_eq!(rule["verbs"], json!(["get"]), "the operator writes no TLS Secret: {rule}");
                }
            } else {
                let binding = named(docs, "ClusterRoleBinding", "-gateway")?;
                assert!(binding["subjects"].as_array().is_some_and(|s| s.iter().any(|s| s["namespace"] == "apps")));
            }
        }
        "cloudnative-pg" => {
            let cluster = of_kind(docs, "Cluster")[0];
            let secret = format!("{}-app", cluster["metadata"]["name"].as_str().unwrap_or_default());
            for c in [op, gw] {
                let store = &env(c, "WEAVER_STORE").context("no WEAVER_STORE")?["valueFrom"]["secretKeyRef"];
                assert_eq!(store, &json!({"name": secret, "key": "uri"}));
            }
        }
        "single-namespace" => {
            let grants = cluster_grants(docs);
            let watched = ["secrets", "channels", "apikeys", "routingpolicies", "namespacepolicies"];
            assert!(!grants.iter().any(|(_, r, _)| watched.contains(&r.as_str())), "cluster-wide: {grants:?}");
            let role = of_kind(docs, "Role")
                .into_iter()
                .find(|r| r["metadata"]["namespace"] == "team-a")
                .context("no Role in the watched namespace")?;
            assert!(role.to_string().contains("apikeys/status"));
            assert_eq!(env_value(op, "WEAVER_WATCH_NAMESPACE").as_deref(), Some("team-a"));
        }
        "sqlite" => {
            let gateway = named(docs, "Deployment", "-gateway")?;
            assert_eq!(gateway["spec"]["replicas"], 1);
            assert_eq!(gateway["spec"]["strategy"]["type"], "Recreate");
            assert!(!kinds.contains("HorizontalPodAutoscaler"));
            assert!(kinds.contains("PersistentVolumeClaim"));
            assert_eq!(env_value(gw, "WEAVER_STORE").as_deref(), Some("sqlite:///var/lib/llm-weaver/usage.db"));
        }
        "monitoring" => {
            let monitors = of_kind(docs, "ServiceMonitor");
            assert_eq!(monitors.len(), 2, "operator and gateways are scraped");
            let rule_files = files_in("config/prometheus", &["yaml", "yml"])?
                .iter()
                .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("groups:") && !t.contains("tests:")))
                .count();
            assert_eq!(
                kinds.contains("PrometheusRule"),
                rule_files > 0,
                "PrometheusRule iff config/prometheus has rules"
            );
        }
        "oidc" => {
            assert_eq!(env_value(op, "WEAVER_OIDC_ISSUER_URL").as_deref(), Some("https://dex.example.com"));
            assert_eq!(env_value(op, "WEAVER_OIDC_SCOPES").as_deref(), Some("openid,profile,email"));
            // The secret and the CA are files from their Secret and ConfigMap,
            // mounted beside the sidecar template.
            let pod = &named(docs, "Deployment", "-operator")?["spec"]["template"]["spec"];
            let mounted = |path: &str| {
                op["volumeMounts"].as_array().into_iter().flatten().find_map(|m| {
                    let dir = m["mountPath"].as_str()?;
                    let name = m["name"].as_str()?;
                    path.starts_with(&format!("{dir}/"))
                        .then(|| pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == name).cloned())?
                })
            };
            let secret = mounted(&env_value(op, "WEAVER_OIDC_CLIENT_SECRET_FILE").unwrap_or_default());
            assert_eq!(secret.map(|v| v["secret"]["secretName"].clone()), Some(json!("weaver-oidc")));
            let ca = mounted(&env_value(op, "WEAVER_OIDC_CA_FILE").unwrap_or_default());
            assert_eq!(ca.map(|v| v["configMap"]["name"].clone()), Some(json!("idp-ca")));
            assert!(mounted("/etc/llm-weaver/inject/sidecar.json").is_some());
        }
        other => anyhow::bail!("unknown value set {other}"),
    }
    // Every dashboard of config/grafana ships as a ConfigMap the Grafana sidecar loads.
    let dashboards = files_in("config/grafana", &["json"])?;
    let maps: Vec<&Value> = of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|m| m["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(maps.len(), dashboards.len(), "{name}: one ConfigMap per dashboard");
    for file in dashboards {
        let base = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let want: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let shipped =
            maps.iter().find_map(|m| m["data"][&base].as_str()).with_context(|| format!("{base} not shipped"))?;
        assert_eq!(serde_json::from_str::<Value>(shipped)?, want, "{base} shipped as it is");
    }
    Ok(())
}

/// The files of `dir` (relative to the repository) with one of `extensions`.
fn files_in(dir: &str, extensions: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join(dir))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)) {
            files.push(path);
        }
    }
    Ok(files)
}

/// The environment variables `binary` reads: those its `--help` names, and
/// the pod fields it reads directly (`POD_NAME` for the gateway's instance
/// name, `POD_IP` for the operator's advertised URL).
fn settings_of(binary: &str) -> anyhow::Result<BTreeSet<String>> {
    let out = std::process::Command::new(weaver_e2e::cluster::binary(binary)?).arg("--help").output()?;
    let help = String::from_utf8(out.stdout)?;
    let mut names: BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned)).collect();
    names.extend(["POD_NAME".to_owned(), "POD_IP".to_owned()]);
    Ok(names)
}

/// Every variable of the container's environment is one the binary reads: a
/// misspelt name would be ignored silently in the cluster.
fn check_env_names(name: &str, c: &Value, known: &BTreeSet<String>) {
    for e in c["env"].as_array().into_iter().flatten() {
        let var = e["name"].as_str().unwrap_or_default();
        assert!(known.contains(var), "{name}: {} sets {var}, which the binary does not read", c["name"]);
    }
}

#[test]
#[ignore = "needs helm: run with `make e2e`"]
fn every_value_set_lints_and_renders_what_it_promises() -> anyhow::Result<()> {
    let operator_settings = settings_of("weaver-operator")?;
    let gateway_settings = settings_of("weaver-gateway")?;
    for (name, args) in value_sets() {
        let mut lint = vec!["lint".to_owned(), chart(), "--strict".to_owned(), "--namespace".into(), "weaver".into()];
        // `helm lint` takes values, not the cluster's API versions.
        let values = args.chunks(2).filter(|pair| pair[0] == "--set").flatten().cloned();
        lint.extend(values);
        run_helm(&lint).with_context(|| format!("value set {name}"))?;
        let docs = render("weaver", "weaver", &args).with_context(|| format!("value set {name}"))?;
        check_common(name, &docs).with_context(|| format!("value set {name}"))?;
        check_set(name, &docs).with_context(|| format!("value set {name}"))?;
        check_env_names(name, container(&docs, "operator")?, &operator_settings);
        check_env_names(name, container(&docs, "gateway")?, &gateway_settings);
        if let Ok(map) = named(&docs, "ConfigMap", "-inject") {
            let template: Value = serde_json::from_str(map["data"]["sidecar.json"].as_str().unwrap_or_default())?;
            check_env_names(name, &template["container"], &gateway_settings);
        }
    }
    // values.schema.json refuses what would render a broken install.
    for bad in [
        "misspelt=1",
        "gateway.replicaCount=3",
        "store.type=sqlite",
        "store.type=postgres",
        "tls.mode=certManager",
        "gateway.port=0",
        "operator.leaseDuration=soon",
        "sidecar.failurePolicy=Sometimes",
        "operator.oidc.redirectUrl=https://weaver.example.com/elsewhere",
    ] {
        let err = render("weaver", "weaver", &["--set".into(), bad.into()]).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("values don't meet the specifications of the schema")),
            "{bad} was not refused by the schema: {err:?}"
        );
    }
    Ok(())
}

/// Server-side applies every rendered object (strict field validation);
/// returns the kinds skipped because the plane does not serve them.
async fn apply_all(cluster: &Cluster, docs: &[Value], dry_run: bool) -> anyhow::Result<BTreeSet<String>> {
    let mut skipped = BTreeSet::new();
    let mut params = PatchParams::apply("helm-chart-test").force().validation_strict();
    params.dry_run = dry_run;
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let types = obj.types.clone().context("an object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let Ok((resource, caps)) = kube::discovery::pinned_kind(&cluster.client, &gvk).await else {
            anyhow::ensure!(FOREIGN_KINDS.contains(&gvk.kind.as_str()), "{} is not served by the API server", gvk.kind);
            skipped.insert(gvk.kind.clone());
            continue;
        };
        let name = obj.metadata.name.clone().context("an object without a name")?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(cluster.client.clone(), ns, &resource),
            (Scope::Namespaced, None) => anyhow::bail!("{} {name} has no namespace", gvk.kind),
            (Scope::Cluster, _) => Api::all_with(cluster.client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(doc))
            .await
            .with_context(|| format!("server-side apply of {} {name}", gvk.kind))?;
    }
    Ok(skipped)
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run with `make e2e`"]
async fn every_value_set_applies_to_the_api_server() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await?;
    for (name, mut args) in value_sets() {
        let ns = cluster.namespace("chart").await?;
        // Names of their own: cluster-scoped objects of one set do not meet another's.
        args.extend(["--set".into(), format!("fullnameOverride={ns}")]);
        if name == "single-namespace" {
            args.extend(["--set".into(), format!("watchNamespace={ns}")]);
        }
        let docs = render(&ns, &ns, &args)?;
        // Strict validation first (nothing written), then for real.
        apply_all(&cluster, &docs, true).await.with_context(|| format!("value set {name} (dry run)"))?;
        let skipped = apply_all(&cluster, &docs, false).await.with_context(|| format!("value set {name}"))?;
        let expected: BTreeSet<String> = match name {
            "cert-manager" => ["Certificate".to_owned()].into(),
            "cloudnative-pg" => ["Cluster".to_owned()].into(),
            "monitoring" => of_kind(&docs, "ServiceMonitor")
                .iter()
                .chain(&of_kind(&docs, "PrometheusRule"))
                .filter_map(|d| d["kind"].as_str().map(str::to_owned))
                .collect(),
            _ => BTreeSet::new(),
        };
        assert_eq!(skipped, expected, "value set {name}: only other operators' kinds are left out");
    }
    Ok(())
}

/// Applies the chart (release name = namespace = the objects' prefix) with
/// `args`, and a bed whose operator and gateways run as its ServiceAccounts.
async fn release_bed(args: &[&str]) -> anyhow::Result<(Bed, Vec<Value>, tempfile::TempDir)> {
    let cluster = Cluster::connect().await?;
    let ns = cluster.namespace("chart").await?;
    let mut all: Vec<String> = vec!["--set".into(), format!("fullnameOverride={ns}")];
    for a in args {
        all.extend(["--set".into(), a.replace("{ns}", &ns)]);
    }
    let docs = render(&ns, &ns, &all)?;
    apply_all(&cluster, &docs, false).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("operator.kubeconfig");
    cluster.service_account_kubeconfig(&ns, &format!("{ns}-operator"), &kubeconfig).await?;
    let op = container(&docs, "operator")?;
    let mut operator_env: Vec<(String, String)> = op["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    // The sidecar template the Deployment mounts from the chart's ConfigMap.
    if let Some((_, path)) = operator_env.iter_mut().find(|(k, _)| k == "WEAVER_INJECT_TEMPLATE") {
        let template = named(&docs, "ConfigMap", "-inject")?["data"]["sidecar.json"].as_str().context("no template")?;
        let file = dir.path().join("sidecar.json");
        std::fs::write(&file, template)?;
        *path = file.to_string_lossy().into_owned();
    }
    let mut setup = Setup::new(MockUpstream::start(Behaviour::default()).await?);
    setup.release = Some(Release {
        namespace: ns.clone(),
        operator_kubeconfig: kubeconfig,
        operator_env,
        gateway_account: format!("{ns}-gateway"),
    });
    let bed = Bed::start(setup).await?;
    // `dir` holds the operator's kubeconfig and sidecar template: keep it as long as the bed.
    Ok((bed, docs, dir))
}

/// Everything works with the chart's RBAC; without the rule that lets the
/// operator write status, status writes fail (and nothing else does).
async fn runs_with_exactly_the_charts_rbac(args: &[&str], watch_role: &str) -> anyhow::Result<()> {
    let (bed, docs, _dir) = release_bed(args).await?;
    // Keys issued (Secrets created), the gateways authenticated and
    // authorised (TokenReview, SubjectAccessReview), requests served,
    // status written, Events recorded, the Lease taken.
    let key = bed.issued_key("app").await?;
    bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
    bed.until_condition::<weaver_crds::Channel>("primary", "Ready", "True", "Compiled").await?;
    bed.until_leader("operator-0").await?;
    eventually_within("an Event recorded for Channel primary", WAIT, Duration::from_millis(100), async || {
        let events = bed.events_for("primary").await?;
        Ok(if events.is_empty() { ControlFlow::Continue("no Event".to_owned()) } else { ControlFlow::Break(()) })
    })
    .await?;

    // One permission removed: patching status.
    let kind = if watch_role == "Role" { "Role" } else { "ClusterRole" };
    let mut role = named(&docs, kind, "-operator-watch")?.clone();
    let rules = role["rules"].as_array_mut().context("no rules")?;
    let before = rules.len();
    rules.retain(|r| !r["resources"].to_string().contains("/status"));
    assert_eq!(rules.len(), before - 1, "one rule removed");
    apply_all(&bed.cluster, &[role], false).await?;
    bed.cluster.apply_yaml(&bed.ns, &api_key("late", r#"{allowedModels: ["gpt-4o*"]}"#)).await?;
    let late = bed.issued_key("late").await?;
    bed.until_all(&late, "gpt-4o-mini", StatusCode::OK).await?;
    bed.until_metric("weaver_operator_errors_total{category=\"status_write\"}", 1.0).await?;
    assert_eq!(bed.condition::<ApiKey>("late", "Ready").await, None, "status written without the permission");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run with `make e2e`"]
async fn operator_and_gateways_run_with_the_charts_cluster_rbac() -> anyhow::Result<()> {
    runs_with_exactly_the_charts_rbac(&[], "ClusterRole").await
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run with `make e2e`"]
async fn operator_and_gateways_run_with_the_charts_single_namespace_rbac() -> anyhow::Result<()> {
    runs_with_exactly_the_charts_rbac(&["watchNamespace={ns}"], "Role").await
}

/// A pod of one container, annotated `annotations`.
fn pod(name: &str, annotations: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}
    }))?)
}

fn containers(p: &Pod) -> Vec<String> {
    p.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect()
}

#[tokio::test]
#[ignore = "needs the test control plane and helm: run with `make e2e`"]
async fn sidecar_webhook_injects_annotated_pods_and_never_blocks_them() -> anyhow::Result<()> {
    let (mut bed, docs, _dir) = release_bed(&["sidecar.enabled=true"]).await?;
    let ns = bed.ns.clone();
    let cluster = bed.cluster.clone();
    let hook_name = format!("{ns}-operator-inject");
    // The test API server resolves no Services: it calls the operator on loopback.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let url = format!("https://{}/inject", bed.operator.as_ref().context("no operator")?.addr("addr"));
    // Strategic merge: the webhook keyed by name, its caBundle kept.
    let patch = json!({"webhooks": [{"name": "inject.llmweaver.io", "clientConfig": {"service": null, "url": url}}]});
    hooks.patch(&hook_name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    // The operator writes its CA as the caBundle (the chart's RBAC lets it).
    let ca = cluster.operator_ca_in(&ns, &format!("{ns}-operator-tls")).await?;
    eventually_within("the operator writes the webhook's caBundle", WAIT, Duration::from_millis(100), async || {
        let hook = hooks.get(&hook_name).await?;
        let bundle = hook.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.ca_bundle.clone());
        Ok(match bundle {
            Some(b) if b.0 == ca.as_bytes() => ControlFlow::Break(()),
            Some(_) => ControlFlow::Continue("a caBundle of another CA".to_owned()),
            None => ControlFlow::Continue("no caBundle".to_owned()),
        })
    })
    .await?;

    let apps = cluster.namespace("apps").await?;
    let labels = json!({"metadata": {"labels": {"llmweaver.io/inject": "enabled"}}});
    Api::<Namespace>::all(cluster.client.clone()).patch(&apps, &PatchParams::default(), &Patch::Merge(&labels)).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &apps);
    let inject = json!({"llmweaver.io/inject": "true", "llmweaver.io/port": "7000"});

    let injected = pods.create(&PostParams::default(), &pod("annotated", inject.clone())?).await?;
    assert_eq!(containers(&injected), ["app", "llm-weaver-gateway"]);
    let spec = injected.spec.clone().context("no spec")?;
    let gw = spec.containers.iter().find(|c| c.name == "llm-weaver-gateway").context("no sidecar")?;
    let gw_json = serde_json::to_value(gw)?;
    let central = container(&docs, "gateway")?;
    assert_eq!(gw_json["image"], central["image"], "one gateway image");
    assert_eq!(env(&gw_json, "WEAVER_OPERATOR_URL"), env(central, "WEAVER_OPERATOR_URL"), "one gateway config");
    assert_eq!(env_value(&gw_json, "WEAVER_LISTEN").as_deref(), Some("127.0.0.1:7000"));
    let annotations = injected.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("llmweaver.io/operator-ca"), Some(&ca), "the CA, projected into the sidecar");
    let volume = spec.volumes.unwrap_or_default().into_iter().find(|v| v.name == "llm-weaver").context("no volume")?;
    let sources = volume.projected.and_then(|p| p.sources).unwrap_or_default();
    assert_eq!(sources[0].service_account_token.as_ref().and_then(|t| t.audience.as_deref()), Some("llm-weaver"));

    let plain = pods.create(&PostParams::default(), &pod("plain", json!({}))?).await?;
    assert_eq!(containers(&plain), ["app"], "pods without the annotation are untouched");
    let elsewhere = cluster.namespace("unlabelled").await?;
    let other = Api::<Pod>::namespaced(cluster.client.clone(), &elsewhere)
        .create(&PostParams::default(), &pod("annotated", inject.clone())?)
        .await?;
    assert_eq!(containers(&other), ["app"], "namespaces outside the selector are untouched");

    // The webhook down: failurePolicy Ignore lets pods through, without a sidecar.
    if let Some(op) = bed.operator.take() {
        op.kill().await?;
    }
    let unserved = pods.create(&PostParams::default(), &pod("while-down", inject)?).await?;
    assert_eq!(containers(&unserved), ["app"]);
    Ok(())
}

/// `value` as a Lua table constructor (what Argo CD hands its health scripts as `obj`).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            format!(
                "{{{}}}",
                fields.iter().map(|(k, v)| format!("[{k:?}] = {}", lua_literal(v))).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// The Argo CD health script's verdict on `obj` (a real Lua: Debian's lua5.4).
fn argo_health(obj: &Value) -> anyhow::Result<String> {
    let script = repo().join("charts/llm-weaver/argocd/health.lua");
    let program = format!(
        "obj = {}\nlocal hs = assert(loadfile({:?}))()\nio.write(hs.status)",
        lua_literal(obj),
        script.to_string_lossy()
    );
    let out = std::process::Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .context("lua5.4 (make setup installs it)")?;
    anyhow::ensure!(out.status.success(), "lua: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn argo_cd_health_follows_the_conditions() -> anyhow::Result<()> {
    let object = |generation: u64, observed: u64, conditions: Value| json!({"metadata": {"generation": generation}, "status": {"observedGeneration": observed, "conditions": conditions}});
    let c = |t: &str, s: &str, r: &str| json!({"type": t, "status": s, "reason": r, "message": "m"});
    for (obj, want) in [
        (json!({"metadata": {"generation": 1}}), "Progressing"),
        (object(2, 1, json!([c("Ready", "True", "Compiled")])), "Progressing"),
        (object(1, 1, json!([c("Ready", "True", "Compiled")])), "Healthy"),
        (object(1, 1, json!([c("Ready", "True", "Compiled"), c("Healthy", "Unknown", "NoTraffic")])), "Healthy"),
        (object(1, 1, json!([c("Ready", "True", "Compiled"), c("Healthy", "False", "UpstreamFailing")])), "Degraded"),
        (object(1, 1, json!([c("Ready", "False", "SecretNotFound")])), "Degraded"),
        (object(1, 1, json!([c("Ready", "False", "Disabled")])), "Suspended"),
        (object(1, 1, json!([c("Ready", "True", "Compiled"), c("BudgetExceeded", "True", "OverBudget")])), "Degraded"),
        (object(1, 1, json!([c("Ready", "True", "Compiled"), c("Expired", "False", "Valid")])), "Healthy"),
    ] {
        assert_eq!(argo_health(&obj)?, want, "{obj}");
    }
    // The chart's README shows the same script users paste into argocd-cm.
    let script = std::fs::read_to_string(repo().join("charts/llm-weaver/argocd/health.lua"))?;
    let readme = std::fs::read_to_string(repo().join("charts/llm-weaver/README.md"))?;
    let indented: String =
        script.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("    {l}\n") }).collect();
    assert!(readme.contains(&indented), "charts/llm-weaver/README.md holds a stale copy of argocd/health.lua");
    Ok(())
}
