//! The container images' Dockerfile (docker/Dockerfile), checked without a
//! container runtime: what it copies exists, it copies every workspace member
//! cargo needs, each image runs a binary of the workspace that the build stage
//! builds, on the pinned toolchain, as the user the chart runs as. (`make
//! lint` runs hadolint on it.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The workspace's binaries, by package, as cargo reads Cargo.toml.
fn workspace_binaries() -> anyhow::Result<BTreeSet<(String, String)>> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(repo())
        .output()?;
    anyhow::ensure!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut bins = BTreeSet::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")) {
                bins.insert((
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    t["name"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    Ok(bins)
}

/// The first directory of every workspace member (what a COPY must bring),
/// from the one-line `members = [...]` of Cargo.toml.
fn member_roots() -> anyhow::Result<BTreeSet<String>> {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml"))?;
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .ok_or_else(|| anyhow::anyhow!("no workspace members"))?;
    let members: Vec<String> = serde_json::from_str(line.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default())?;
    Ok(members.iter().map(|m| m.split('/').next().unwrap_or_default().to_owned()).collect())
}

#[test]
fn dockerfile_builds_the_workspaces_binaries_from_what_exists() -> anyhow::Result<()> {
    let bins = workspace_binaries()?;
    let members = member_roots()?;
    let toolchain = std::fs::read_to_string(repo().join("rust-toolchain.toml"))?;
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = ").map(|v| v.trim_matches('"').to_owned()))
        .ok_or_else(|| anyhow::anyhow!("no toolchain channel"))?;
    let text = std::fs::read_to_string(repo().join("docker/Dockerfile"))?;
    let mut copied = BTreeSet::new();
    let mut built = BTreeSet::new();
    // Runtime stage name -> (binary it runs, user it runs as).
    let mut images: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    let (mut ui_stage, mut ui_built, mut ui_copied) = (false, false, false);
    for step in instructions(&text) {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words.first().copied() {
            // The UI's build stage: its files go into the Rust build.
            Some("FROM") if words[1].starts_with("node:") => ui_stage = true,
            Some("FROM") if words[1].starts_with("rust:") => {
                assert!(words[1].starts_with(&format!("rust:{channel}")), "builds with {}, not {channel}", words[1]);
            }
            Some("FROM") => {
                assert!(words[1].contains("distroless"), "runtime image {} is not distroless", words[1]);
                let name = words.get(3).map(|s| (*s).to_owned()).unwrap_or_default();
                images.push((name, None, None));
            }
            Some("COPY") if words.contains(&"--from=ui") => {
                ui_copied = words.last() == Some(&"dashboard/dist");
            }
            Some("RUN") if step.contains("npm run build") => ui_built = true,
            Some("COPY") if !words.iter().any(|w| w.starts_with("--from")) => {
                for src in &words[1..words.len() - 1] {
                    assert!(repo().join(src).exists(), "COPY {src}: no such file in the repository");
                    copied.insert((*src).to_owned());
                }
            }
            Some("RUN") if step.contains("cargo build") => {
                assert!(step.contains("--locked") && step.contains("--release"), "not a locked release build");
                let mut package = None;
                for pair in words.windows(2) {
                    match pair[0] {
                        "-p" => package = Some(pair[1].to_owned()),
                        "--bin" => {
                            let p = package.clone().unwrap_or_default();
                            assert!(
                                bins.contains(&(p.clone(), pair[1].to_owned())),
                                "{p}/{} is no binary of the workspace",
                                pair[1]
                            );
                            built.insert(pair[1].to_owned());
                        }
                        _ => {}
                    }
                }
            }
            Some("ENTRYPOINT") => {
                let image = images.last_mut().ok_or_else(|| anyhow::anyhow!("ENTRYPOINT of the build stage"))?;
                let exec: Vec<String> = serde_json::from_str(step.trim_start_matches("ENTRYPOINT").trim())?;
                image.1 = exec.first().and_then(|p| p.rsplit('/').next()).map(str::to_owned);
            }
            Some("USER") => {
                if let Some(image) = images.last_mut() {
                    image.2 = words.get(1).map(|s| (*s).to_owned());
                }
            }
            _ => {}
        }
    }
    assert!(ui_stage && ui_built && ui_copied, "the usage UI is built and copied into dashboard/dist for embedding");
    for member in &members {
        assert!(copied.contains(member), "workspace member {member} is not copied (cargo needs it)");
    }
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        assert!(copied.contains(file), "{file} is not copied");
    }
    let want = [("operator", "weaver-operator"), ("gateway", "weaver-gateway")];
    assert_eq!(images.len(), want.len(), "one image each for the operator and the gateway");
    for ((name, runs, user), (want_name, want_bin)) in images.iter().zip(want) {
        assert_eq!((name.as_str(), runs.as_deref()), (want_name, Some(want_bin)));
        assert!(built.contains(want_bin), "{want_bin} is not built");
        assert_eq!(user.as_deref(), Some("65532:65532"), "{name}: not the chart's non-root user");
    }
    Ok(())
}
