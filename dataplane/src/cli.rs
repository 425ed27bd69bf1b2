//! Command line and start-up.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use tokio::net::TcpListener;

use crate::gateway::{Gateway, Settings};
use crate::source::{LoadError, ManifestDir};

/// LLM Weaver gateway: an OpenAI-compatible endpoint in front of many LLM providers.
#[derive(Debug, Parser)]
#[command(name = "weaver-gateway", version)]
pub struct Args {
    /// Serve standalone from the Channel, ApiKey, RoutingPolicy and Secret
    /// manifests in this folder (*.yaml, *.yml; re-read on change).
    #[arg(long, env = "WEAVER_MANIFESTS")]
    pub manifests: PathBuf,
    /// Address to listen on. Containers pass 0.0.0.0:8080.
    #[arg(long, env = "WEAVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "WEAVER_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Proxies (CIDRs) whose X-Forwarded-For header is trusted for IP allowlists.
    #[arg(long = "trusted-proxy", env = "WEAVER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// How long requests and streams in flight may run on after SIGTERM.
    #[arg(long, env = "WEAVER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How often the manifests folder is checked for changes.
    #[arg(long, env = "WEAVER_RELOAD_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
    /// Log format: `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, env = "WEAVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot load the manifests: {0}")]
    Load(#[from] LoadError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A gateway that is listening.
pub struct Started {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    serving: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Started {
    /// Waits until the server has shut down.
    pub async fn wait(self) -> Result<(), RunError> {
        self.serving.await.map_err(|e| RunError::Serve(std::io::Error::other(e)))?
    }
}

/// Loads the manifests (failing on a folder that cannot be read or parsed),
/// binds, and starts serving until `shutdown` resolves.
pub async fn start(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<Started, RunError> {
    let gw = Gateway::new(Settings { max_body_bytes: args.max_body_bytes, trusted_proxies: args.trusted_proxies });
    let mut source = ManifestDir::new(&args.manifests);
    let gw2 = gw.clone();
    let (source, first) = tokio::task::spawn_blocking(move || {
        let outcome = source.poll(&gw2);
        (source, outcome)
    })
    .await
    .map_err(|e| RunError::Serve(std::io::Error::other(e)))?;
    first?;
    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| RunError::Listen { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(%addr, manifests = %args.manifests.display(), "listening");
    let watcher = tokio::spawn(source.watch(gw.clone(), args.reload_interval));
    let serving = tokio::spawn({
        let gw = gw.clone();
        async move {
            let served = crate::app::serve(listener, gw, shutdown, args.shutdown_grace).await;
            watcher.abort();
            served.map_err(RunError::Serve)
        }
    });
    Ok(Started { addr, gateway: gw, serving })
}

/// Runs until `shutdown` resolves and the server has drained.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    start(args, shutdown).await?.wait().await
}
