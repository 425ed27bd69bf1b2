//! The CustomResourceDefinitions, generated from the Rust types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ApiKey, Channel, NamespacePolicy, RoutingPolicy};

/// Every CRD of the API, with the file name it is kept under in `crds/manifests/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("llmweaver.io_channels.yaml", Channel::crd()),
        ("llmweaver.io_apikeys.yaml", ApiKey::crd()),
        ("llmweaver.io_routingpolicies.yaml", RoutingPolicy::crd()),
        ("llmweaver.io_namespacepolicies.yaml", NamespacePolicy::crd()),
    ]
}

/// A CRD as YAML, the way it is checked in.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!("# Generated from crds/src by `make crds`; do not edit.\n{}", serde_yaml::to_string(crd)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when the checked-in CRDs (crds/manifests, and the Helm chart's
    /// copy in charts/llm-weaver/crds) differ from the types, or the chart
    /// holds a CRD the types no longer define; `WEAVER_BLESS=1 cargo test -p
    /// weaver-crds` (or `make crds`) rewrites them.
    #[test]
    fn checked_in_crds_are_fresh() -> Result<(), Box<dyn std::error::Error>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bless = std::env::var_os("WEAVER_BLESS").is_some();
        for dir in [root.join("manifests"), root.join("../charts/llm-weaver/crds")] {
            let mut wanted = std::collections::BTreeSet::new();
            for (file, crd) in crds() {
                let want = to_yaml(&crd)?;
                let path = dir.join(file);
                wanted.insert(file.to_owned());
                if bless {
                    std::fs::write(&path, &want)?;
                    continue;
                }
                let have = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(have == want, "{} is stale: run `make crds` and commit the result", path.display());
            }
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                assert!(wanted.contains(&name), "{}/{name} is no CRD of ours: remove it", dir.display());
            }
        }
        Ok(())
    }
}
