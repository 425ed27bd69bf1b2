//! Admission of manifests without a cluster: a Channel, ApiKey or
//! RoutingPolicy read from a file gets the verdict the API server would give
//! the same object on create, with the same field paths and messages.
//!
//! The only source of rules is the CRD generated from the Rust types
//! ([`crate::crdgen::crds`]): its OpenAPI schema, checked with the
//! `jsonschema` crate, and its `x-kubernetes-validations`, run with the `cel`
//! crate. A rule added to the types is enforced here and by the API server
//! alike. The steps follow the API server's handling of a create
//! (apiextensions-apiserver `customresource_handler.go` and
//! `registry/customresource/strategy.go`):
//!
//! 1. members the schema does not declare are refused, as kubectl's default
//!    strict field validation has the API server do (`unknown field
//!    "spec.budgte"`); `metadata` is checked against `ObjectMeta`;
//! 2. `status` is dropped (the status subresource resets it on create);
//! 3. nulls the schema does not allow are dropped, then defaults are applied;
//! 4. the name and namespace syntax ([`metadata`]), then the OpenAPI value checks (`type`, `enum`, `minimum`, `maxLength`,
//!    `pattern`, `required`...);
//! 5. unique keys in lists of `x-kubernetes-list-type: map`;
//! 6. the CEL rules, unless step 3 found a violation that makes them
//!    meaningless (a wrong type, a missing field, an unsupported enum value,
//!    too long or too many): then, as the API server does, a note says some
//!    rules were not checked.

mod cel_env;
mod go_fmt;
mod metadata;
mod schema;

use std::fmt;
use std::sync::{Arc, LazyLock};

use kube::Resource;
use serde_json::Value;

use crate::crdgen;
use schema::Node;

/// One violation, as the API server reports it in a 422's `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.models[0].name`.
    pub field: String,
    /// What is wrong, e.g. `Invalid value: 20000: spec.weight in body should be
    /// less than or equal to 10000`.
    pub message: String,
    /// Whether this kind of violation keeps the CEL rules from running.
    blocking: bool,
}

impl FieldError {
    fn new(field: &str, message: String, blocking: bool) -> Self {
        Self { field: field.to_owned(), message, blocking }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why an object would be refused, worded as the API server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `Kind.group`, e.g. `Channel.llmweaver.io`.
    pub group_kind: String,
    /// The object's `metadata.name`.
    pub name: String,
    /// Every violation found.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Rejection {
    /// `Channel.llmweaver.io "big" is invalid: <error>`, or `[<error>, <error>]`
    /// for several (apimachinery `errors.NewInvalid`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown: Vec<String> = Vec::with_capacity(self.errors.len());
        for e in &self.errors {
            let text = e.to_string();
            if !shown.contains(&text) {
                shown.push(text);
            }
        }
        write!(f, "{} {} is invalid: ", self.group_kind, go_fmt::quote(&self.name))?;
        match shown.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

/// The CRDs could not be turned into validators: a bug in this crate or a
/// schema feature it does not mirror yet. The unit tests build every CRD, so
/// this never reaches a release.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The CRD has no `openAPIV3Schema`.
    #[error("the CRD of {kind} has no schema")]
    Missing { kind: String },
    /// The CRD does not serialise to JSON.
    #[error("the CRD of {kind} does not serialise: {source}")]
    Json { kind: String, source: serde_json::Error },
    /// The schema uses something standalone admission does not mirror.
    #[error("{at}: {what} is not supported by standalone validation")]
    Unsupported { at: String, what: String },
    /// A CEL rule does not compile.
    #[error("{at}: the rule `{rule}` does not compile: {message}")]
    Rule { at: String, rule: String, message: String },
    /// The translated schema is not valid JSON Schema.
    #[error("the schema of {kind} is not valid JSON Schema: {message}")]
    JsonSchema { kind: String, message: String },
    /// The CEL environment could not be set up.
    #[error("the CEL environment: {0}")]
    Cel(#[from] cel::DeclarationError),
}

/// Why [`admit`] did not let an object through.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The object breaks its schema or rules.
    #[error("{0}")]
    Rejected(Rejection),
    /// The object has members its schema does not declare (paths such as
    /// `spec.budgte`, sorted). Worded as the API server's answer to a request
    /// with strict field validation (apiextensions-apiserver
    /// `customresource_handler.go`, `strict decoding error`).
    #[error(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        .fields.iter().map(|f| format!("unknown field {}", go_fmt::quote(f))).collect::<Vec<_>>().join(", ")
    )]
    UnknownFields { kind: &'static str, version: &'static str, fields: Vec<String> },
    /// Not one of the kinds in [`crdgen::crds`].
    #[error("no CRD for kind {0}")]
    UnknownKind(String),
    /// The validators could not be built.
    #[error("the CRDs cannot be checked: {0}")]
    Schema(&'static SchemaError),
}

/// What is needed to admit one kind.
struct KindSchema {
    kind: String,
    version: String,
    group_kind: String,
    status_subresource: bool,
    validator: jsonschema::Validator,
    root: Node,
}

/// Every kind's validators, built on first use and shared by every load.
struct Admission {
    env: Arc<cel::Env>,
    kinds: Vec<KindSchema>,
}

static ADMISSION: LazyLock<Result<Admission, SchemaError>> = LazyLock::new(Admission::build);

impl Admission {
    fn build() -> Result<Self, SchemaError> {
        let env = cel_env::env()?;
        let mut kinds = Vec::new();
        for (_, crd) in crdgen::crds() {
            let kind = crd.spec.names.kind.clone();
            let version = crd.spec.versions.first();
            let schema = version.and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref());
            let schema = schema.ok_or_else(|| SchemaError::Missing { kind: kind.clone() })?;
            let schema =
                serde_json::to_value(schema).map_err(|source| SchemaError::Json { kind: kind.clone(), source })?;
            let (root, json_schema) = Node::build(&schema, &kind, &env)?;
            let validator = jsonschema::draft4::options()
                .should_validate_formats(true)
                .with_pattern_options(jsonschema::PatternOptions::regex())
                .build(&json_schema)
                .map_err(|e| SchemaError::JsonSchema { kind: kind.clone(), message: e.to_string() })?;
            kinds.push(KindSchema {
                version: version.map(|v| v.name.clone()).unwrap_or_default(),
                group_kind: format!("{kind}.{}", crd.spec.group),
                status_subresource: version.and_then(|v| v.subresources.as_ref()).is_some_and(|s| s.status.is_some()),
                kind,
                validator,
                root,
            });
        }
        Ok(Self { env: Arc::new(env), kinds })
    }
}

/// Admits `object`, a whole manifest of kind `K`, as the API server admits a
/// create: on success `object` is what the server would store (status
/// dropped, defaults applied); otherwise every violation is returned.
pub fn admit<K: Resource<DynamicType = ()>>(object: &mut Value) -> Result<(), AdmitError> {
    let admission = ADMISSION.as_ref().map_err(AdmitError::Schema)?;
    let kind = K::kind(&());
    let schema = admission.kinds.iter().find(|k| k.kind == kind).ok_or_else(|| AdmitError::UnknownKind(kind.into()))?;
    let mut unknown = Vec::new();
    for (key, value) in object.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => metadata::unknown_fields(value, &mut unknown),
            _ => schema.root.unknown_member(key, value, "", &mut unknown),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(AdmitError::UnknownFields { kind: &schema.kind, version: &schema.version, fields: unknown });
    }
    if schema.status_subresource
        && let Some(fields) = object.as_object_mut()
    {
        fields.remove("status");
    }
    schema.root.prune_nulls(object);
    schema.root.apply_defaults(object);
    let mut errors = metadata::check(object);
    errors.extend(schema.validator.iter_errors(object).map(|e| schema.root.field_error(&e)));
    schema.root.check_list_maps(object, "", &mut errors);
    if errors.iter().any(|e| e.blocking) {
        errors.push(FieldError::new("<nil>", format!("Invalid value: null: {NOT_CHECKED}"), false));
    } else {
        schema.root.check_rules(&admission.env, object, "", &mut errors);
    }
    if errors.is_empty() {
        return Ok(());
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    Err(AdmitError::Rejected(Rejection { group_kind: schema.group_kind.clone(), name, errors }))
}

/// Checks what the API server checks of every object's `metadata` (name and
/// namespace syntax, [`metadata`]), for kinds with no CRD here such as
/// Secrets; `group_kind` names the kind in the message (`Secret` for core/v1).
pub fn admit_metadata(object: &Value, group_kind: &str) -> Result<(), AdmitError> {
    let errors = metadata::check(object);
    if errors.is_empty() {
        return Ok(());
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    Err(AdmitError::Rejected(Rejection { group_kind: group_kind.to_owned(), name, errors }))
}

/// The API server's note when CEL rules were skipped (`hasBlockingErr`).
const NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; \
                           correct the existing errors to complete validation";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{ApiKey, Channel, RoutingPolicy};

    fn rejected<K: Resource<DynamicType = ()>>(mut object: Value) -> Vec<String> {
        match admit::<K>(&mut object) {
            Err(AdmitError::Rejected(r)) => r.errors.iter().map(ToString::to_string).collect(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn every_crd_builds() {
        if let Err(e) = ADMISSION.as_ref() {
            panic!("{e}");
        }
    }

    #[test]
    fn defaults_and_nulls_are_applied_as_the_api_server_does() -> Result<(), AdmitError> {
        let mut object = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "Channel", "metadata": {"name": "c"},
            "spec": {"provider": "openai", "models": [{"name": "m"}], "weight": null, "baseUrl": null,
                     "credentials": {"secretRef": {"name": "s"}}},
            "status": {"successRate": 5},
        });
        admit::<Channel>(&mut object)?;
        assert_eq!(object.pointer("/spec/weight"), Some(&json!(100)), "a null with a default gets the default");
        assert_eq!(object.pointer("/spec/baseUrl"), Some(&Value::Null), "a nullable null stays");
        assert_eq!(object.pointer("/spec/priority"), Some(&json!(0)));
        assert_eq!(object.pointer("/spec/credentials/secretRef/key"), Some(&json!("apiKey")));
        assert_eq!(object.get("status"), None, "status is reset on create");
        Ok(())
    }

    #[test]
    fn cel_rules_wait_for_the_schema_errors() {
        let object = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "p"},
            "spec": {"models": ["m"], "strategy": "fastest", "channels": [{"name": "a", "selector": {}}]},
        });
        let errors = rejected::<RoutingPolicy>(object);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("spec.strategy: Unsupported value: \"fastest\""), "{errors:?}");
        assert!(errors[1].starts_with("<nil>: Invalid value: null: some validation rules were not checked"));
    }

    #[test]
    fn every_violation_is_reported() {
        let object = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k"},
            "spec": {"ipAllowlist": ["10.0.0.0/33"], "rotationGracePeriod": "soon"},
        });
        let mut errors = rejected::<ApiKey>(object);
        errors.sort();
        assert_eq!(
            errors,
            [
                "spec.ipAllowlist: Invalid value: every entry must be an IP address or a CIDR such as 10.0.0.0/8",
                "spec.rotationGracePeriod: Invalid value: \"soon\": must be a duration such as 500ms, 30s, 5m or 1h30m",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused_as_strict_field_validation_does() {
        let mut object = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": "k", "labels": {"a": "b"}, "annotations": {"c": "d"}, "lables": {}},
            "spec": {"budgte": {"limit": "1"}, "ratelimit": {}, "ipAllowlist": ["10.0.0.0/8"]},
        });
        let e = admit::<ApiKey>(&mut object).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("ApiKey in version \"v1alpha1\" cannot be handled as a ApiKey: strict decoding error: \
                 unknown field \"metadata.lables\", unknown field \"spec.budgte\", unknown field \"spec.ratelimit\""
                .to_owned())
        );
        let mut nested = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "Channel", "metadata": {"name": "c"},
            "spec": {"provider": "openai", "models": [{"name": "m", "alias": "x"}], "headers": {"X-Any": "v"}},
        });
        let e = admit::<Channel>(&mut nested).map_err(|e| e.to_string());
        assert!(e.as_ref().is_err_and(|e| e.ends_with("unknown field \"spec.models[0].alias\"")), "{e:?}");
        if let Some(models) = nested.pointer_mut("/spec/models/0") {
            models.as_object_mut().map(|m| m.remove("alias"));
        }
        assert!(admit::<Channel>(&mut nested).is_ok(), "additionalProperties (headers) take any member");
    }

    #[test]
    fn names_are_checked_with_the_schema() {
        let object = json!({
            "apiVersion": "llmweaver.io/v1alpha1", "kind": "Channel", "metadata": {"name": "Bad_Name!"},
            "spec": {"provider": "openai", "models": [{"name": "m"}], "weight": 20000},
        });
        let errors = rejected::<Channel>(object);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("metadata.name: Invalid value: \"Bad_Name!\": a lowercase RFC 1123 subdomain"));
        assert!(errors[1].starts_with("spec.weight: Invalid value: 20000"));
        assert!(admit_metadata(&json!({"metadata": {"name": "creds"}}), "Secret").is_ok());
        let e = admit_metadata(&json!({"metadata": {"name": "creds", "namespace": "Not A NS"}}), "Secret");
        assert!(e.is_err_and(|e| e.to_string().starts_with("Secret \"creds\" is invalid: metadata.namespace: ")));
    }

    #[test]
    fn rejections_read_like_the_api_server() {
        let one = FieldError::new("spec.weight", "Invalid value: 20000: x".to_owned(), false);
        let two = FieldError::new("spec.priority", "Invalid value: 2000: y".to_owned(), false);
        let r = Rejection { group_kind: "Channel.llmweaver.io".into(), name: "big".into(), errors: vec![one.clone()] };
        assert_eq!(r.to_string(), "Channel.llmweaver.io \"big\" is invalid: spec.weight: Invalid value: 20000: x");
        let r = Rejection { errors: vec![one.clone(), two, one], ..r };
        assert_eq!(
            r.to_string(),
            "Channel.llmweaver.io \"big\" is invalid: [spec.weight: Invalid value: 20000: x, spec.priority: Invalid value: 2000: y]"
        );
    }
}
