//! Standalone loading gives the API server's verdict: the shared list of invalid
//! manifests (`e2e/crd/invalid-manifests.yaml`, also run against a real
//! kube-apiserver by `e2e/crd`) is rejected with exactly the same errors, and
//! the samples load.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use weaver_crds::Resources;
use weaver_crds::manifests::{ManifestError, parse_into};
use weaver_crds::validation::AdmitError;

#[derive(Deserialize)]
struct Case {
    id: String,
    manifest: serde_yaml::Value,
    errors: Vec<Expected>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    field: String,
    message: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn invalid_manifests_get_the_api_servers_answer() -> Result<(), Box<dyn std::error::Error>> {
    let cases: Vec<Case> =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("e2e/crd/invalid-manifests.yaml"))?)?;
    assert!(cases.len() >= 5, "the shared list is missing");
    let mut mismatches = Vec::new();
    for case in cases {
        let text = serde_yaml::to_string(&case.manifest)?;
        let mut want = case.errors;
        want.sort();
        let got = match parse_into(&text, &mut Resources::default()) {
            Err(ManifestError::Rejected { source: AdmitError::Rejected(r), .. }) => {
                let mut got: Vec<Expected> =
                    r.errors.into_iter().map(|e| Expected { field: e.field, message: e.message }).collect();
                got.sort();
                got
            }
            other => {
                mismatches.push(format!("{}: expected a rejection, got {other:?}", case.id));
                continue;
            }
        };
        if got != want {
            mismatches.push(format!("{}:\n  want {want:?}\n  got  {got:?}", case.id));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}

#[test]
fn samples_and_the_demo_config_are_admitted() -> Result<(), Box<dyn std::error::Error>> {
    for dir in ["config/samples", "config/dev"] {
        let mut taken = 0;
        for entry in std::fs::read_dir(repo().join(dir))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path)?;
                taken +=
                    parse_into(&text, &mut Resources::default()).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        assert!(taken > 0, "{dir} holds no manifests");
    }
    Ok(())
}
