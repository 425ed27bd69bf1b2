//! A Postgres cluster of a test's own (through `e2e/postgres`), which the test
//! may stop and start again — an outage — without losing its data. Removed
//! when dropped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;

/// A throwaway cluster on a free loopback port, owned by the `postgres` OS
/// user (so tests that use it run as root, as `make test` does).
pub struct PgCluster {
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn script(command: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/postgres");
    let out = Command::new(path).arg(command).arg(dir).output().with_context(|| format!("running {path}"))?;
    anyhow::ensure!(
        out.status.success(),
        "e2e/postgres {command} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

impl PgCluster {
    /// Creates and starts a cluster in a fresh folder under the system's
    /// temporary folder (the `postgres` user must reach it, so not `/root`).
    pub fn up() -> anyhow::Result<PgCluster> {
        let dir = std::env::temp_dir().join(format!("llm-weaver-pg-{}", rand::random::<u64>()));
        let out = script("up", &dir)?;
        let url = out
            .trim()
            .strip_prefix("export WEAVER_TEST_POSTGRES_URL=")
            .context("e2e/postgres up printed no URL")?
            .to_owned();
        Ok(PgCluster { dir, url })
    }

    /// Stops the server (fast shutdown: connections are cut), keeping the data.
    pub fn stop(&self) -> anyhow::Result<()> {
        script("stop", &self.dir).map(drop)
    }

    /// Starts the stopped server again on the same port.
    pub fn start(&self) -> anyhow::Result<()> {
        script("start", &self.dir).map(drop)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = script("down", &self.dir);
    }
}
