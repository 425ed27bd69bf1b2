//! The gateway under test: the real server in-process on free loopback ports,
//! either standalone (reading a temporary manifests folder the test can
//! rewrite) or in cluster mode (following an operator the test names).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;
use weaver_gateway::Gateway;
use weaver_gateway::cli::{Args, RunError, Started, start};

pub struct TestGateway {
    pub addr: SocketAddr,
    /// Probes and metrics.
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The manifests folder of a standalone gateway; `None` in cluster mode.
    dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    started: Option<Started>,
}

impl TestGateway {
    /// Starts a standalone gateway serving `manifests` (written to
    /// `config.yaml`, reread every 100 ms), with extra command-line flags.
    pub async fn start(manifests: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("config.yaml"), manifests)?;
        let path = dir.path().to_string_lossy().into_owned();
        // The usage store (SQLite) and spool live in the temporary folder too;
        // a hidden folder, so the manifest reader skips it.
        let data = dir.path().join(".data").to_string_lossy().into_owned();
        let mut args = vec!["--manifests", &path, "--reload-interval", "100ms", "--data-dir", &data];
        args.extend_from_slice(flags);
        let mut gateway = Self::start_with_args(&args).await?;
        gateway.dir = Some(dir);
        Ok(gateway)
    }

    /// Starts a gateway with these command-line arguments (after the program
    /// name), listening on free loopback ports: the mode is whatever they
    /// say, e.g. `--operator ... --token-file ...` for cluster mode.
    pub async fn start_with_args(args: &[&str]) -> anyhow::Result<Self> {
        let mut argv = vec!["weaver-gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        argv.extend_from_slice(args);
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
            dir: None,
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

    /// The URL of a standalone gateway's usage store (SQLite in its temporary
    /// folder); `None` in cluster mode.
    pub fn usage_store_url(&self) -> Option<String> {
        self.dir.as_ref().map(|d| format!("sqlite://{}", d.path().join(".data").join("usage.db").display()))
    }

    /// The `--data-dir` of a standalone gateway started by [`Self::start`]
    /// (its SQLite store, spool and generated admin token); `None` otherwise.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join(".data"))
    }

    /// The manifests file of a standalone gateway; `None` in cluster mode.
    pub fn manifest_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("config.yaml"))
    }

    /// Replaces the manifests the way an editor saves: write aside, rename
    /// over. Fails in cluster mode, where there are none.
    pub fn rewrite(&self, manifests: &str) -> std::io::Result<()> {
        let dir =
            self.dir.as_ref().ok_or_else(|| std::io::Error::other("a cluster-mode gateway reads no manifests"))?;
        let tmp = dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, manifests)?;
        std::fs::rename(tmp, dir.path().join("config.yaml"))
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

    /// Shuts down gracefully and waits until the server has drained.
    pub async fn shutdown(mut self) -> Result<(), RunError> {
        self.begin_shutdown();
        self.wait().await
    }

    /// Shuts a standalone gateway down (which writes every record) and reads
    /// up to 100 of its usage records.
    pub async fn usage_records(mut self) -> anyhow::Result<Vec<weaver_store::UsageRecord>> {
        use weaver_store::UsageStore as _;
        self.begin_shutdown();
        self.wait().await?;
        let url = self.usage_store_url().ok_or_else(|| anyhow::anyhow!("a standalone gateway"))?;
        let store = weaver_store::Store::connect(&url, weaver_store::StoreOptions::default())?;
        Ok(store.records(&weaver_store::RecordFilter::default(), None, 100).await?.records)
    }
}

/// The name and data of each event of a stream whose events are named
/// (Anthropic's Messages API, OpenAI's Responses API).
pub async fn named_events(response: reqwest::Response) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    let text = response.text().await?;
    Ok(text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
            (name, serde_json::from_str(data).unwrap_or(serde_json::Value::Null))
        })
        .collect())
}

/// An OpenAI-shaped error answer: its status, `Retry-After` and `error` object.
pub async fn openai_error(
    response: reqwest::Response,
) -> anyhow::Result<(reqwest::StatusCode, Option<String>, serde_json::Value)> {
    let status = response.status();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: serde_json::Value = response.json().await?;
    Ok((status, retry_after, body["error"].clone()))
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Reads a streamed body into `text` until `done(text)` holds (`Ok(true)`)
/// or the body ends first (`Ok(false)`), waiting at most [`EVENTUALLY`]: a
/// bound on the wait, not a measurement (a relay that buffers a held stream
/// never delivers).
pub async fn read_until<S, B, E>(stream: &mut S, text: &mut String, done: impl Fn(&str) -> bool) -> anyhow::Result<bool>
where
    S: futures_util::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures_util::StreamExt as _;
    let read = async {
        while !done(text) {
            let Some(chunk) = stream.next().await else { return anyhow::Ok(false) };
            text.push_str(&String::from_utf8_lossy(chunk?.as_ref()));
        }
        Ok(true)
    };
    tokio::time::timeout(EVENTUALLY, read)
        .await
        .map_err(|_| anyhow::anyhow!("the stream did not deliver in {EVENTUALLY:?}: {text:?}"))?
}

/// The JSON of each `data:` event of an OpenAI stream, `[DONE]` as a string.
pub async fn data_events(response: reqwest::Response) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(data_events_of(&response.text().await?))
}

/// [`data_events`] of a stream's text.
pub fn data_events_of(text: &str) -> Vec<serde_json::Value> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| serde_json::Value::String(d.to_owned())))
        .collect()
}

/// The `content` deltas of an OpenAI stream's chunks, joined.
pub fn content_of(chunks: &[serde_json::Value]) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect()
}

/// How long [`eventually`] waits before it gives up.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Waits until `condition` holds, checking every 20 ms, for at most
/// [`EVENTUALLY`]; fails naming `what`. Tests wait on conditions this way
/// instead of sleeping a fixed time before an exact check.
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let every = Duration::from_millis(20);
    eventually_within(what, EVENTUALLY, every, async || {
        Ok(if condition().await { ControlFlow::Break(()) } else { ControlFlow::Continue(String::new()) })
    })
    .await
}

/// Polls `look` every `every` until it breaks with a value, for at most
/// `within`. Each look that is not there yet continues with what it saw, so
/// a timeout names `what` and the last observation; an error from `look`
/// ends the wait at once. For waits longer than [`EVENTUALLY`] (processes,
/// the API server, a scraping Prometheus) or that yield a value.
pub async fn eventually_within<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut look: impl AsyncFnMut() -> anyhow::Result<ControlFlow<T, String>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match look().await? {
            ControlFlow::Break(value) => return Ok(value),
            ControlFlow::Continue(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            let seen = if seen.is_empty() { String::new() } else { format!("; last seen: {seen}") };
            anyhow::bail!("timed out after {within:?} waiting: {what}{seen}");
        }
        tokio::time::sleep(every).await;
    }
}
