//! The gateway under test: the real server on a free loopback port, reading a
//! temporary manifests folder the test can rewrite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::oneshot;
use weaver_gateway::Gateway;
use weaver_gateway::cli::{Args, RunError, Started, start};

pub struct TestGateway {
    pub addr: SocketAddr,
    /// Probes and metrics.
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    started: Option<Started>,
}

impl TestGateway {
    /// Starts a gateway serving `manifests` (written to `config.yaml`), with
    /// extra command-line flags.
    pub async fn start(manifests: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("config.yaml"), manifests)?;
        let path = dir.path().to_string_lossy().into_owned();
        let mut argv = vec![
            "weaver-gateway",
            "--manifests",
            &path,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--reload-interval",
            "100ms",
        ];
        argv.extend_from_slice(flags);
        let args = Args::try_parse_from(argv)?;
        let (tx, rx) = oneshot::channel();
        let started = start(args, async {
            let _ = rx.await;
        })
        .await?;
        Ok(Self {
            addr: started.addr,
            admin_addr: started.admin_addr,
            gateway: started.gateway.clone(),
            dir,
            stop: Some(tx),
            started: Some(started),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Replaces the manifests the way an editor saves: write aside, rename over.
    pub fn rewrite(&self, manifests: &str) -> std::io::Result<()> {
        let tmp = self.dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, manifests)?;
        std::fs::rename(tmp, self.manifest_path())
    }

    /// Begins a graceful shutdown (what SIGTERM does in the binary).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to finish draining.
    pub async fn wait(&mut self) -> Result<(), RunError> {
        match self.started.take() {
            Some(s) => s.wait().await,
            None => Ok(()),
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// How long [`eventually`] waits before it gives up.
pub const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until `condition` holds, checking every 20 ms, for at most
/// [`EVENTUALLY`]; fails naming `what`. Tests wait on conditions this way
/// instead of sleeping a fixed time before an exact check.
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !condition().await {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
