//! Reading resources from YAML manifests, as `kubectl apply -f` would.

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::compiler::Resources;
use crate::{ApiKey, Channel, RoutingPolicy};

/// A document that could not be read. Carries the document's position, kind and
/// name but never its content (it may be a Secret).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml { index: usize, source: serde_yaml::Error },
    #[error("document {index} ({kind} {name}): {source}")]
    Invalid { index: usize, kind: String, name: String, source: serde_yaml::Error },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: NameOnly,
}

#[derive(Default, Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

/// Adds every Channel, ApiKey, RoutingPolicy and core/v1 Secret of a
/// (multi-document) YAML text to `into`, defaulting the namespace to
/// `default`. Other kinds are skipped, so a folder may hold any manifests.
/// Returns how many documents were taken; on error nothing of this text is
/// added, so a half-edited file cannot leave a half-read config.
pub fn parse_into(text: &str, into: &mut Resources) -> Result<usize, ManifestError> {
    let mut staged = Resources::default();
    let mut taken = 0;
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|source| ManifestError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|source| ManifestError::Yaml { index, source })?;
        let invalid = |source| ManifestError::Invalid {
            index,
            kind: meta.kind.clone(),
            name: meta.metadata.name.clone(),
            source,
        };
        match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("llmweaver.io/v1alpha1", "Channel") => {
                let mut obj: Channel = serde_yaml::from_value(value).map_err(invalid)?;
                default_namespace(&mut obj.metadata);
                staged.channels.push(obj);
            }
            ("llmweaver.io/v1alpha1", "ApiKey") => {
                let mut obj: ApiKey = serde_yaml::from_value(value).map_err(invalid)?;
                default_namespace(&mut obj.metadata);
                staged.api_keys.push(obj);
            }
            ("llmweaver.io/v1alpha1", "RoutingPolicy") => {
                let mut obj: RoutingPolicy = serde_yaml::from_value(value).map_err(invalid)?;
                default_namespace(&mut obj.metadata);
                staged.routing_policies.push(obj);
            }
            ("v1", "Secret") => {
                let mut obj: Secret = serde_yaml::from_value(value).map_err(invalid)?;
                default_namespace(&mut obj.metadata);
                staged.secrets.push(obj);
            }
            _ => continue,
        }
        taken += 1;
    }
    into.channels.append(&mut staged.channels);
    into.api_keys.append(&mut staged.api_keys);
    into.routing_policies.append(&mut staged.routing_policies);
    into.secrets.append(&mut staged.secrets);
    Ok(taken)
}

fn default_namespace(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.namespace.get_or_insert_with(|| "default".to_owned());
}
