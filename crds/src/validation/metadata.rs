//! The checks the API server makes on every object's `metadata`, which no CRD
//! schema describes.
//!
//! Names, per kind (Kubernetes v1.31 sources):
//! - custom resources (Channel, ApiKey, RoutingPolicy, NamespacePolicy):
//!   apiextensions-apiserver `pkg/registry/customresource/strategy.go`
//!   `Validate` calls `ValidateObjectMetaAccessor(.., validation.NameIsDNSSubdomain, ..)`;
//! - Secrets: `pkg/apis/core/validation/validation.go` `ValidateSecret` uses
//!   `ValidateSecretName`, which is `NameIsDNSSubdomain`;
//! - namespaces (`metadata.namespace` of a namespaced object): apimachinery
//!   `pkg/api/validation/objectmeta.go` checks it with `ValidateNamespaceName`,
//!   which is `NameIsDNSLabel`.
//!
//! The rules and messages are apimachinery `pkg/util/validation/validation.go`
//! (`IsDNS1123Subdomain`, `IsDNS1123Label`, `RegexError`, `MaxLenError`).
//! Not mirrored: the syntax of label and annotation keys and values.

use serde_json::Value;

use super::{FieldError, go_fmt};

/// The members of `ObjectMeta` (apimachinery `pkg/apis/meta/v1/types.go`),
/// by their JSON names: any other member of `metadata` is an unknown field.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
                                 or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                                     characters, '-' or '.', and must start and end with an alphanumeric character";

/// Adds `metadata.<member>` to `out` for every member of `metadata` that
/// `ObjectMeta` does not have.
pub(super) fn unknown_fields(metadata: &Value, out: &mut Vec<String>) {
    if let Value::Object(fields) = metadata {
        let unknown = fields.keys().filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()));
        out.extend(unknown.map(|k| format!("metadata.{k}")));
    }
}

/// The violations of the object's name (a DNS-1123 subdomain, required) and
/// namespace (a DNS-1123 label, when given: manifests without one go to
/// `default`, as `kubectl apply` sends them).
pub(super) fn check(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
    let name = text("/metadata/name");
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "Required value: name or generateName is required".into(), false));
    }
    let invalid = |field: &str, value: &str, message: String| {
        FieldError::new(field, format!("Invalid value: {}: {message}", go_fmt::quote(value)), false)
    };
    if !name.is_empty() {
        errors.extend(dns1123_subdomain(name).into_iter().map(|m| invalid("metadata.name", name, m)));
    }
    let namespace = text("/metadata/namespace");
    if !namespace.is_empty() {
        errors.extend(dns1123_label(namespace).into_iter().map(|m| invalid("metadata.namespace", namespace, m)));
    }
    errors
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(alnum) && b.last().is_some_and(alnum) && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// apimachinery `IsDNS1123Label`.
fn dns1123_label(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errors.push(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    if !is_label(s) {
        errors.push(format!(
            "{DNS1123_LABEL_MSG} (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
        ));
    }
    errors
}

/// apimachinery `IsDNS1123Subdomain`.
fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    if !s.split('.').all(is_label) {
        errors.push(format!(
            "{DNS1123_SUBDOMAIN_MSG} (e.g. 'example.com', regex used for validation is \
             '{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*')"
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(object: Value) -> Vec<String> {
        check(&object).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn names_are_dns_subdomains_and_namespaces_dns_labels() {
        for good in ["a", "demo", "a.b-c.d9", "0abc", &"a".repeat(253)] {
            assert!(dns1123_subdomain(good).is_empty(), "{good}");
        }
        for bad in ["Bad_Name!", "-a", "a-", "a..b", ".a", "A", &"a".repeat(254)] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad}");
        }
        assert!(dns1123_label("team-a").is_empty());
        assert!(!dns1123_label("a.b").is_empty(), "a namespace has no dots");
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn messages_are_the_api_servers() {
        assert_eq!(
            messages(json!({"metadata": {"name": "Bad_Name!", "namespace": "Not A NS"}})),
            [
                "metadata.name: Invalid value: \"Bad_Name!\": a lowercase RFC 1123 subdomain must consist of lower \
                 case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
                 (e.g. 'example.com', regex used for validation is \
                 '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "metadata.namespace: Invalid value: \"Not A NS\": a lowercase RFC 1123 label must consist of lower \
                 case alphanumeric characters or '-', and must start and end with an alphanumeric character \
                 (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ]
        );
        assert_eq!(
            messages(json!({"metadata": {"labels": {"a": "b"}}})),
            ["metadata.name: Required value: name or generateName is required"]
        );
        assert!(messages(json!({"metadata": {"name": "ok", "namespace": "team-a"}})).is_empty());
    }

    #[test]
    fn object_meta_members_are_known() {
        let mut out = Vec::new();
        unknown_fields(&json!({"name": "a", "labels": {}, "annotations": {}, "lables": {}}), &mut out);
        assert_eq!(out, ["metadata.lables"]);
    }
}
