//! The compiler: resources + Secrets -> one snapshot and a list of problems per
//! resource. Pure and deterministic (inputs are sorted), so the operator and the
//! standalone gateway produce the same snapshot from the same manifests.
//!
//! A problem never aborts compilation. What cannot work safely is left out of
//! the snapshot (a channel without its credentials, a key whose allowlist does
//! not parse); what still works partially stays in and is reported (a policy
//! with one dangling channel reference keeps routing to the others).

pub mod keys;
mod namespaces;
mod policies;
mod routes;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::api_key::ApiKey;
use crate::channel::Channel;
use crate::common::SecretKeyRef;
use crate::namespace_policy::NamespacePolicy;
use crate::routing_policy::RoutingPolicy;
use crate::snapshot::Snapshot;

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub channels: Vec<Channel>,
    pub api_keys: Vec<ApiKey>,
    pub routing_policies: Vec<RoutingPolicy>,
    pub namespace_policies: Vec<NamespacePolicy>,
    pub secrets: Vec<Secret>,
}

/// The kinds a problem can be about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Channel,
    ApiKey,
    RoutingPolicy,
    NamespacePolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Channel => "Channel",
            Kind::ApiKey => "ApiKey",
            Kind::RoutingPolicy => "RoutingPolicy",
            Kind::NamespacePolicy => "NamespacePolicy",
        })
    }
}

/// Why a resource is not (fully) ready; the operator uses these as condition
/// reasons, so they are stable CamelCase words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemReason {
    SecretNotFound,
    SecretKeyNotFound,
    MissingCredentials,
    ProviderNotSupported,
    InvalidField,
    DuplicateModel,
    DuplicateKey,
    ChannelNotFound,
    RoutingPolicyNotFound,
    NoChannelForModel,
    InvalidSelector,
}

impl ProblemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemReason::SecretNotFound => "SecretNotFound",
            ProblemReason::SecretKeyNotFound => "SecretKeyNotFound",
            ProblemReason::MissingCredentials => "MissingCredentials",
            ProblemReason::ProviderNotSupported => "ProviderNotSupported",
            ProblemReason::InvalidField => "InvalidField",
            ProblemReason::DuplicateModel => "DuplicateModel",
            ProblemReason::DuplicateKey => "DuplicateKey",
            ProblemReason::ChannelNotFound => "ChannelNotFound",
            ProblemReason::RoutingPolicyNotFound => "RoutingPolicyNotFound",
            ProblemReason::NoChannelForModel => "NoChannelForModel",
            ProblemReason::InvalidSelector => "InvalidSelector",
        }
    }
}

/// Something wrong with one resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub reason: ProblemReason,
    /// For humans; never contains secret material.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}: {}: {}", self.kind, self.namespace, self.name, self.reason.as_str(), self.message)
    }
}

/// The compiler's output.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// Sorted by kind, namespace, name.
    pub problems: Vec<Problem>,
    /// The channels each RoutingPolicy resolved to, by (namespace, name).
    pub resolved: BTreeMap<(String, String), Vec<String>>,
}

/// Compiles resources into the snapshot with the given version.
pub fn compile(resources: &Resources, version: u64) -> Compiled {
    let mut problems = Problems::default();
    let secrets = SecretIndex::new(&resources.secrets);
    let channels = routes::compile_channels(&resources.channels, &secrets, &mut problems);
    let mut tables = routes::RouteTables::new(&channels, &resources.routing_policies, &mut problems);
    let resolved = tables.resolved_policies(&channels);
    let (defaults, namespaces) = namespaces::compile_namespaces(&resources.namespace_policies, &mut problems);
    let inputs = keys::KeyInputs { secrets: &secrets, namespaces: &defaults };
    let keys = keys::compile_keys(&resources.api_keys, &inputs, &mut tables, &mut problems);
    let mut problems = problems.0;
    problems.sort();
    let (route_tables, policies) = tables.into_parts();
    Compiled {
        snapshot: Snapshot {
            version,
            channels: channels.into_iter().map(|c| c.snapshot).collect(),
            route_tables,
            policies,
            keys,
            namespaces,
            gateway_replicas: 1,
            operator_token_sha256: None,
        },
        problems,
        resolved,
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, kind: Kind, obj: &impl ResourceExt, reason: ProblemReason, message: String) {
        self.0.push(Problem { kind, namespace: namespace_of(obj).to_owned(), name: obj.name_any(), reason, message });
    }
}

/// Objects read from manifests may lack a namespace; kubectl would put them in
/// `default`, and so do we.
pub(crate) fn namespace_of(obj: &impl ResourceExt) -> &str {
    obj.meta().namespace.as_deref().unwrap_or("default")
}

/// Sorts objects by namespace and name, so the output does not depend on the
/// order the API server or the file system listed them in.
pub(crate) fn sorted<T: ResourceExt>(items: &[T]) -> Vec<&T> {
    let mut out: Vec<&T> = items.iter().collect();
    out.sort_by(|a, b| (namespace_of(*a), a.meta().name.as_deref()).cmp(&(namespace_of(*b), b.meta().name.as_deref())));
    out
}

struct SecretIndex<'a>(BTreeMap<(&'a str, &'a str), &'a Secret>);

impl<'a> SecretIndex<'a> {
    fn new(secrets: &'a [Secret]) -> Self {
        Self(secrets.iter().filter_map(|s| Some(((namespace_of(s), s.metadata.name.as_deref()?), s))).collect())
    }

    /// The value of one Secret key, trimmed of surrounding whitespace (a key
    /// written with `--from-file` usually ends in a newline).
    fn value(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, (ProblemReason, String)> {
        let secret = self
            .0
            .get(&(namespace, r.name.as_str()))
            .ok_or_else(|| (ProblemReason::SecretNotFound, format!("Secret {namespace}/{} not found", r.name)))?;
        let from_data =
            secret.data.as_ref().and_then(|d| d.get(&r.key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let from_string_data = || secret.string_data.as_ref().and_then(|d| d.get(&r.key)).cloned();
        let value = from_data.or_else(from_string_data).ok_or_else(|| {
            (ProblemReason::SecretKeyNotFound, format!("Secret {namespace}/{} has no key {:?}", r.name, r.key))
        })?;
        let value = value.trim();
        if value.is_empty() {
            return Err((
                ProblemReason::SecretKeyNotFound,
                format!("key {:?} of Secret {namespace}/{} is empty", r.key, r.name),
            ));
        }
        Ok(value.to_owned())
    }
}

impl SecretIndex<'_> {
    /// A rotated-out key and the unix second it stops working, when the
    /// operator left one in the Secret.
    fn previous_key(&self, namespace: &str, r: &SecretKeyRef) -> Option<(String, i64)> {
        let secret = self.0.get(&(namespace, r.name.as_str()))?;
        let until = secret.metadata.annotations.as_ref()?.get(keys::PREVIOUS_EXPIRES_ANNOTATION)?.parse().ok()?;
        let field = keys::previous_key_field(&r.key);
        let value = secret.data.as_ref()?.get(&field)?;
        let value = String::from_utf8_lossy(&value.0).trim().to_owned();
        (!value.is_empty()).then_some((value, until))
    }
}

/// Whether `name` matches any of the globs (`*` and `?`).
pub fn matches_any(globs: &[String], name: &str) -> bool {
    globs.iter().any(|g| wildmatch::WildMatch::new(g).matches(name))
}

#[cfg(test)]
mod tests;
