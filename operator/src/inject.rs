//! Sidecar mode: a mutating admission webhook that adds a gateway container
//! to pods annotated `llmweaver.io/inject: "true"`.
//!
//! The container comes from a template the Helm chart renders from the central
//! gateway's own image and settings (`--inject-template`), so both run the
//! same gateway; this module adds what differs per pod: the client port
//! (bound to 127.0.0.1, where the app calls it), the admin port with the
//! probes, resources, and one projected volume holding the pod's token of
//! audience `llm-weaver` and the operator's CA. The CA travels in a pod
//! annotation projected into a file, because the operator's Secret lives in
//! another namespace than the pods and a pod can mount only its own
//! namespace's Secrets; it is a public certificate, never the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::State;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::Deserialize;
use serde_json::{Value, json};
use weaver_crds::protocol::TOKEN_AUDIENCE;

/// The annotation that asks for a sidecar (value `"true"`).
pub const INJECT_ANNOTATION: &str = "llmweaver.io/inject";
/// Set on pods that received one, so a second pass (reinvocation) adds nothing.
pub const INJECTED_ANNOTATION: &str = "llmweaver.io/injected";
/// The operator's CA (PEM) as injected, projected into the sidecar's files.
pub const CA_ANNOTATION: &str = "llmweaver.io/operator-ca";
/// Client port override (the app calls `http://127.0.0.1:<port>/v1`).
pub const PORT_ANNOTATION: &str = "llmweaver.io/port";
/// CPU request override (a Kubernetes quantity).
pub const CPU_ANNOTATION: &str = "llmweaver.io/cpu";
/// Memory request and limit override (a Kubernetes quantity).
pub const MEMORY_ANNOTATION: &str = "llmweaver.io/memory";
/// The injected container's name.
pub const CONTAINER: &str = "llm-weaver-gateway";
/// The injected volume: token and CA.
const VOLUME: &str = "llm-weaver";
/// Where that volume is mounted; the template's WEAVER_TOKEN_FILE and
/// WEAVER_OPERATOR_CA point into it.
const MOUNT: &str = "/var/run/secrets/llmweaver.io";
/// How long the projected token lives before the kubelet rotates it (seconds).
const TOKEN_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read the sidecar template {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the sidecar template {path} is not valid: {source}")]
    Parse { path: String, source: serde_json::Error },
}

/// The sidecar template the chart renders (`sidecar.json`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// The gateway container: image, settings, security context.
    pub container: Container,
    /// Default client port.
    pub port: u16,
    /// Admin port (probes, metrics); never the client port.
    pub admin_port: u16,
    /// Default resources.
    #[serde(default)]
    pub resources: ResourceRequirements,
}

impl Template {
    pub fn load(path: &Path) -> Result<Self, InjectError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| InjectError::Read { path: shown.clone(), source })?;
        serde_json::from_slice(&text).map_err(|source| InjectError::Parse { path: shown, source })
    }
}

/// The webhook's state: the template and the CA currently served.
pub struct Injector {
    template: Template,
    ca_pem: ArcSwap<String>,
}

impl Injector {
    pub fn new(template: Template, ca_pem: String) -> Self {
        Self { template, ca_pem: ArcSwap::from_pointee(ca_pem) }
    }

    /// Called when the serving certificate is reloaded (its CA may be new).
    pub fn set_ca(&self, ca_pem: String) {
        self.ca_pem.store(Arc::new(ca_pem));
    }

    /// The JSON patch for `pod`, or `None` when it gets no sidecar.
    pub fn patch_for(&self, pod: &Pod) -> Result<Option<Value>, String> {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(INJECT_ANNOTATION).map(String::as_str) != Some("true")
            || annotations.contains_key(INJECTED_ANNOTATION)
        {
            return Ok(None);
        }
        let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
        if spec.containers.iter().any(|c| c.name == CONTAINER) {
            return Ok(None);
        }
        let t = &self.template;
        let port = match annotations.get(PORT_ANNOTATION) {
            Some(p) => {
                p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(format!("{PORT_ANNOTATION}: not a port: {p}"))?
            }
            None => t.port,
        };
        if port == t.admin_port {
            return Err(format!("{PORT_ANNOTATION}: {port} is the sidecar's admin port"));
        }
        let mut resources = t.resources.clone();
        for (annotation, resource, limit) in [(CPU_ANNOTATION, "cpu", false), (MEMORY_ANNOTATION, "memory", true)] {
            if let Some(v) = annotations.get(annotation) {
                let q = Quantity(v.clone());
                resources.requests.get_or_insert_with(BTreeMap::new).insert(resource.into(), q.clone());
                if limit {
                    resources.limits.get_or_insert_with(BTreeMap::new).insert(resource.into(), q);
                }
            }
        }
        let container = self.container(port, resources)?;
        let volume = json!({
            "name": VOLUME,
            "projected": {"sources": [
                {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"downwardAPI": {"items": [
                    {"path": "ca.crt", "fieldRef": {"fieldPath": format!("metadata.annotations['{CA_ANNOTATION}']")}}
                ]}}
            ]}
        });
        let mut ops = vec![json!({"op": "add", "path": "/spec/containers/-", "value": container})];
        // A projected token needs a named account; the ServiceAccount admission
        // plugin names `default` before webhooks run, where it is enabled.
        if spec.service_account_name.as_deref().is_none_or(str::is_empty) {
            ops.push(json!({"op": "add", "path": "/spec/serviceAccountName", "value": "default"}));
        }
        if spec.volumes.is_some() {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
        }
        // `annotations` exists: the inject annotation is in it.
        for (key, value) in [(INJECTED_ANNOTATION, "true".to_owned()), (CA_ANNOTATION, self.ca_pem.load().to_string())]
        {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", key.replace('/', "~1")), "value": value}));
        }
        Ok(Some(Value::Array(ops)))
    }

    fn container(&self, port: u16, resources: ResourceRequirements) -> Result<Value, String> {
        let t = &self.template;
        let mut c = t.container.clone();
        c.name = CONTAINER.into();
        let env = c.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != "WEAVER_LISTEN" && e.name != "WEAVER_ADMIN_LISTEN");
        for (name, value) in [
            ("WEAVER_LISTEN", format!("127.0.0.1:{port}")),
            // Not loopback: the kubelet probes it at the pod's address.
            ("WEAVER_ADMIN_LISTEN", format!("0.0.0.0:{}", t.admin_port)),
        ] {
            env.push(k8s_openapi::api::core::v1::EnvVar { name: name.into(), value: Some(value), value_from: None });
        }
        c.resources = Some(resources);
        let mut v = serde_json::to_value(&c).map_err(|e| e.to_string())?;
        let probe = |path: &str| json!({"httpGet": {"path": path, "port": t.admin_port}, "periodSeconds": 5});
        v["ports"] = json!([{"name": "weaver-admin", "containerPort": t.admin_port}]);
        v["startupProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": t.admin_port}, "periodSeconds": 2, "failureThreshold": 60});
        v["livenessProbe"] = probe("/healthz");
        v["readinessProbe"] = probe("/readyz");
        v["volumeMounts"] = json!([{"name": VOLUME, "mountPath": MOUNT, "readOnly": true}]);
        Ok(v)
    }

    /// Answers one AdmissionReview. Anything unexpected allows the pod
    /// unchanged: a sidecar is never worth refusing an app's pod over,
    /// except a malformed annotation, which the pod's owner must fix.
    pub fn review(&self, review: AdmissionReview<Pod>) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
        };
        let response = AdmissionResponse::from(&request);
        let Some(pod) = request.object.as_ref() else { return response.into_review() };
        let response = match self.patch_for(pod) {
            Ok(None) => response,
            Ok(Some(ops)) => match serde_json::from_value::<json_patch::Patch>(ops) {
                Ok(patch) => response.with_patch(patch).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot encode the sidecar patch; pod admitted as it is");
                    AdmissionResponse::from(&request)
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "sidecar patch is not a JSON patch; pod admitted as it is");
                    AdmissionResponse::from(&request)
                }
            },
            Err(reason) => response.deny(reason),
        };
        response.into_review()
    }
}

/// `POST /inject`: the API server's AdmissionReview.
pub async fn handle(
    State(injector): State<Arc<Injector>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    Json(injector.review(review))
}

/// Writes `ca_pem` as the caBundle of every webhook of the
/// MutatingWebhookConfiguration `name` (server-side apply, field manager
/// `llm-weaver`), so the API server trusts the operator's self-managed CA.
pub async fn sync_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> Result<(), kube::Error> {
    use base64::Engine as _;
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let webhooks: Vec<Value> = current
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::apply(crate::context::MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn injector() -> Result<Injector, serde_json::Error> {
        let template: Template = serde_json::from_value(json!({
            "container": {"name": "x", "image": "gw:1", "env": [{"name": "WEAVER_OPERATOR_URL", "value": "https://op:8443"}]},
            "port": 8080,
            "adminPort": 9091,
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}
        }))?;
        Ok(Injector::new(template, "CA".into()))
    }

    fn pod(annotations: &[(&str, &str)]) -> Result<Pod, serde_json::Error> {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        serde_json::from_value(json!({
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        }))
    }

    /// `p` with the webhook's patch applied, as the API server would.
    fn injected(i: &Injector, p: &Pod) -> Result<Pod, Box<dyn std::error::Error>> {
        let ops = i.patch_for(p)?.ok_or("no patch")?;
        let mut doc = serde_json::to_value(p)?;
        json_patch::patch(&mut doc, &serde_json::from_value::<json_patch::Patch>(ops)?)?;
        Ok(serde_json::from_value(doc)?)
    }

    #[test]
    fn annotated_pods_get_a_loopback_gateway_with_token_and_ca() -> TestResult {
        let i = injector()?;
        let p = pod(&[(INJECT_ANNOTATION, "true"), (PORT_ANNOTATION, "7000"), (MEMORY_ANNOTATION, "200Mi")])?;
        let out = injected(&i, &p)?;
        let spec = out.spec.ok_or("no spec")?;
        let gw = spec.containers.iter().find(|c| c.name == CONTAINER).ok_or("no sidecar")?;
        let env: BTreeMap<_, _> = gw.env.iter().flatten().map(|e| (e.name.as_str(), e.value.clone())).collect();
        assert_eq!(env.get("WEAVER_LISTEN").cloned().flatten().as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(env.get("WEAVER_OPERATOR_URL").cloned().flatten().as_deref(), Some("https://op:8443"));
        let res = gw.resources.clone().ok_or("no resources")?;
        assert_eq!(res.requests.and_then(|r| r.get("memory").cloned()).map(|q| q.0).as_deref(), Some("200Mi"));
        assert_eq!(res.limits.and_then(|r| r.get("memory").cloned()).map(|q| q.0).as_deref(), Some("200Mi"));
        assert_eq!(spec.volumes.unwrap_or_default().first().map(|v| v.name.as_str()), Some(VOLUME));
        assert_eq!(spec.service_account_name.as_deref(), Some("default"), "the token is the pod's account's");
        assert_eq!(out.metadata.annotations.unwrap_or_default().get(CA_ANNOTATION).map(String::as_str), Some("CA"));
        Ok(())
    }

    #[test]
    fn others_and_already_injected_pods_are_untouched() -> TestResult {
        let i = injector()?;
        assert_eq!(i.patch_for(&pod(&[])?)?, None);
        assert_eq!(i.patch_for(&pod(&[(INJECT_ANNOTATION, "false")])?)?, None);
        let once = injected(&i, &pod(&[(INJECT_ANNOTATION, "true")])?)?;
        assert_eq!(i.patch_for(&once)?, None, "reinvocation adds nothing");
        Ok(())
    }

    #[test]
    fn a_bad_port_annotation_is_refused_with_its_reason() -> TestResult {
        let i = injector()?;
        let err =
            i.patch_for(&pod(&[(INJECT_ANNOTATION, "true"), (PORT_ANNOTATION, "http")])?).err().ok_or("accepted")?;
        assert!(err.contains(PORT_ANNOTATION), "{err}");
        assert!(i.patch_for(&pod(&[(INJECT_ANNOTATION, "true"), (PORT_ANNOTATION, "9091")])?).is_err());
        Ok(())
    }
}
