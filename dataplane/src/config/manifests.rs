//! Standalone configuration: a folder of manifests, re-read when it changes.
//!
//! The folder is polled (content hash every `interval`) rather than watched with
//! inotify: editors save by rename, volumes mounted from ConfigMaps swap
//! symlinks, and a poll of a few small files catches all of these the same way.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weaver_crds::compiler::{Problem, Resources, compile};
use weaver_crds::manifests::{Folder, ManifestError};

use crate::state::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Manifest { path: PathBuf, source: ManifestError },
    /// Every document that could not be read, in every file.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Manifests(Vec<LoadError>),
    #[error("the edit introduces problems: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NewProblems(Vec<Problem>),
    /// The folder holds no Channel, ApiKey, RoutingPolicy or NamespacePolicy:
    /// applied, it would refuse every request. More likely a copy or a branch
    /// switch half done than a wish, so it is refused (see [`ManifestDir::poll`]).
    #[error(
        "{} holds no Channel, ApiKey, RoutingPolicy or NamespacePolicy; an empty configuration would refuse \
         every request, so it is not applied",
        .0.display()
    )]
    Empty(PathBuf),
}

/// Each manifest file's path and text.
type Files = Vec<(PathBuf, String)>;

/// Reads every file; the errors are those of every document of every file.
/// A file with an error adds none of its objects.
fn read(files: &[(PathBuf, String)]) -> (Folder, Vec<LoadError>) {
    let mut folder = Folder::default();
    let mut errors = Vec::new();
    for (path, text) in files {
        if let Err(e) = folder.add(path, text) {
            errors.extend(e.into_iter().map(|source| LoadError::Manifest { path: path.clone(), source }));
        }
    }
    (folder, errors)
}

fn parse(dir: &Path, files: &[(PathBuf, String)]) -> Result<Resources, LoadError> {
    let (folder, errors) = read(files);
    if !errors.is_empty() {
        return Err(LoadError::Manifests(errors));
    }
    if folder.objects() == 0 {
        return Err(LoadError::Empty(dir.to_owned()));
    }
    Ok(folder.resources)
}

/// `--check DIR`: reads and compiles the folder as standalone mode would load
/// it and returns every error (documents that cannot be read, each once; an
/// empty folder) and then every problem of the objects that could be read.
/// Both empty: the folder is good. `Err` only when the folder cannot be listed.
pub fn check(dir: &Path) -> Result<(Vec<LoadError>, Vec<Problem>), LoadError> {
    let files = ManifestDir::new(dir).read_if_changed()?.map(|(_, files)| files).unwrap_or_default();
    let (folder, mut errors) = read(&files);
    if errors.is_empty() && folder.objects() == 0 {
        errors.push(LoadError::Empty(dir.to_owned()));
    }
    Ok((errors, compile(&folder.resources, 1).problems))
}

/// What one look at the folder did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Unchanged,
    Applied { version: u64 },
}

pub(crate) struct ManifestDir {
    dir: PathBuf,
    /// Gateways serving this folder behind one load balancer (`--replicas`):
    /// each enforces this share of every rate limit.
    replicas: u32,
    fingerprint: Option<u64>,
    problems: BTreeSet<Problem>,
    version: u64,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io { path: dir.to_owned(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), replicas: 1, fingerprint: None, problems: BTreeSet::new(), version: 0 }
    }

    /// Snapshots say `replicas` gateways share the rate limits (at least one).
    pub fn with_replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder and applies it when it changed. The first load applies
    /// whatever compiles (problems are logged); later a broken edit — YAML that
    /// does not parse, a document the API server would refuse, a duplicate
    /// object, a new problem, or a folder left with no objects — changes
    /// nothing and is reported. A folder with no objects is refused at start-up
    /// too: a gateway that refuses every request is never what was meant.
    pub fn poll(&mut self, gw: &Gateway) -> Result<Outcome, LoadError> {
        let Some((fingerprint, files)) = self.read_if_changed()? else {
            return Ok(Outcome::Unchanged);
        };
        // Remember even a broken state, so it is reported once, not every poll.
        self.fingerprint = Some(fingerprint);
        let mut compiled = compile(&parse(&self.dir, &files)?, self.version + 1);
        compiled.snapshot.gateway_replicas = self.replicas;
        if self.version > 0 {
            let new: Vec<Problem> = compiled.problems.iter().filter(|p| !self.problems.contains(*p)).cloned().collect();
            if !new.is_empty() {
                return Err(LoadError::NewProblems(new));
            }
        } else {
            for p in &compiled.problems {
                tracing::warn!(problem = %p, "manifest problem");
            }
        }
        self.problems = compiled.problems.into_iter().collect();
        self.version += 1;
        gw.apply(compiled.snapshot);
        Ok(Outcome::Applied { version: self.version })
    }

    /// The folder's files and their fingerprint, unless unchanged since the last look.
    fn read_if_changed(&self) -> Result<Option<(u64, Files)>, LoadError> {
        let mut paths = Vec::new();
        yaml_files(&self.dir, &mut paths)?;
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
            path.hash(&mut hasher);
            text.hash(&mut hasher);
            files.push((path, text));
        }
        let fingerprint = hasher.finish();
        Ok((self.fingerprint != Some(fingerprint)).then_some((fingerprint, files)))
    }

    /// Polls every `interval` until `stop` resolves.
    pub async fn watch(mut self, gw: Arc<Gateway>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let gw2 = gw.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let outcome = self.poll(&gw2);
                (self, outcome)
            })
            .await;
            let Ok((dir, outcome)) = joined else {
                tracing::error!("manifest reload panicked; reloading stops");
                return;
            };
            self = dir;
            if let Err(e) = outcome {
                gw.metrics.snapshot_load_errors.inc();
                tracing::error!(error = %e, "manifest change rejected; the previous snapshot stays in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {name: demo}\nspec: {}\n";

    fn shown(dir: &Path) -> Result<Vec<String>, LoadError> {
        let (errors, problems) = check(dir)?;
        Ok(errors.iter().map(ToString::to_string).chain(problems.iter().map(ToString::to_string)).collect())
    }

    #[test]
    fn check_reports_every_document_of_every_file_and_duplicates_by_both_files()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a.yaml"), KEY)?;
        std::fs::write(dir.path().join("b.yaml"), format!("{KEY}---\n{}", KEY.replace("demo", "Bad_Name!")))?;
        std::fs::write(dir.path().join("c.yaml"), KEY.replace("spec: {}", "spec: {budgte: {}}"))?;
        let shown = shown(dir.path())?;
        assert_eq!(shown.len(), 4, "{shown:#?}");
        let a = dir.path().join("a.yaml").display().to_string();
        assert!(
            shown[0].contains("b.yaml: document 1 (line 1): ApiKey default/demo is already defined in "),
            "{shown:#?}"
        );
        assert!(shown[0].contains(&format!("{a}, document 1 (line 1)")), "{shown:#?}");
        assert!(shown[1].contains("b.yaml: document 2 (line 5): ApiKey.llmweaver.io \"Bad_Name!\" is invalid"));
        assert!(shown[2].contains("c.yaml: document 1 (line 1): ApiKey in version \"v1alpha1\" cannot be handled"));
        // Then the compiler's problems with what could be read: a.yaml's key.
        assert_eq!(shown[3], "ApiKey default/demo: SecretNotFound: Secret default/demo-apikey not found");
        Ok(())
    }

    #[test]
    fn a_folder_without_objects_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("other.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")?;
        let shown = shown(dir.path())?;
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert!(shown[0].ends_with("holds no Channel, ApiKey, RoutingPolicy or NamespacePolicy; an empty configuration would refuse every request, so it is not applied"));
        std::fs::write(dir.path().join("key.yaml"), KEY)?;
        assert!(!shown_has_empty(dir.path())?);
        Ok(())
    }

    fn shown_has_empty(dir: &Path) -> Result<bool, LoadError> {
        Ok(check(dir)?.0.iter().any(|e| matches!(e, LoadError::Empty(_))))
    }
}
