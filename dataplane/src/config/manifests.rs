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
use weaver_crds::manifests::{ManifestError, parse_into};

use crate::state::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Manifest { path: PathBuf, source: ManifestError },
    #[error("the edit introduces problems: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NewProblems(Vec<Problem>),
}

/// Each manifest file's path and text.
type Files = Vec<(PathBuf, String)>;

fn parse(files: &[(PathBuf, String)]) -> Result<Resources, LoadError> {
    let mut resources = Resources::default();
    for (path, text) in files {
        parse_into(text, &mut resources).map_err(|source| LoadError::Manifest { path: path.clone(), source })?;
    }
    Ok(resources)
}

/// `--check DIR`: compiles the folder as standalone mode would load it and
/// returns every problem (an empty list: the folder is good). Errors are
/// files that cannot be read or parsed.
pub fn check(dir: &Path) -> Result<Vec<Problem>, LoadError> {
    let Some((_, files)) = ManifestDir::new(dir).read_if_changed()? else {
        return Ok(Vec::new());
    };
    Ok(compile(&parse(&files)?, 1).problems)
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
    /// does not parse, or a new problem — changes nothing and is reported.
    pub fn poll(&mut self, gw: &Gateway) -> Result<Outcome, LoadError> {
        let Some((fingerprint, files)) = self.read_if_changed()? else {
            return Ok(Outcome::Unchanged);
        };
        // Remember even a broken state, so it is reported once, not every poll.
        self.fingerprint = Some(fingerprint);
        let mut compiled = compile(&parse(&files)?, self.version + 1);
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
