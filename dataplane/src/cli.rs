//! Command line and start-up.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use ipnet::IpNet;
use reqwest::Url;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use http::HeaderValue;
use weaver_telemetry::LogFormat;

use crate::config::cluster::{self, Cluster, ClusterError};
use crate::config::manifests::{self, LoadError, ManifestDir};
use crate::metering::{Metrics, UsageSink};
use crate::server::ui::AdminAuth;
use crate::server::usage_api::{AdminToken, LiveKeys, TokenError, TokenSource};
use crate::server::{AdminGate, CorsOrigins, Listeners, UsageApi};
use crate::state::{Gateway, Ledger, Settings};
use weaver_dashboard::session::Sessions;
use weaver_store::{Store, StoreOptions, UsageStore as _, Writer, WriterConfig};

/// LLM Weaver gateway: an OpenAI-compatible endpoint in front of many LLM providers.
#[derive(Debug, Parser)]
#[command(name = "weaver-gateway", version, subcommand_negates_reqs = true)]
#[command(group(ArgGroup::new("source").required(true).args(["manifests", "operator", "check"])))]
pub struct Args {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serve standalone from the Channel, ApiKey, RoutingPolicy and Secret
    /// manifests in this folder (*.yaml, *.yml; re-read on change).
    #[arg(long, env = "WEAVER_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Compile the manifests in this folder as standalone mode would, print
    /// every problem, and exit: non-zero when there is one (for CI and GitOps
    /// repositories).
    #[arg(long, value_name = "DIR")]
    pub check: Option<PathBuf>,
    /// Cluster mode: follow the snapshots of the operator at this https URL
    /// and report to it.
    #[arg(long, env = "WEAVER_OPERATOR_URL", value_parser = parse_operator_url)]
    pub operator: Option<Url>,
    /// PEM CA bundle to trust for the operator (cluster mode; default: the
    /// public webpki roots).
    #[arg(long, env = "WEAVER_OPERATOR_CA")]
    pub operator_ca: Option<PathBuf>,
    /// Token presented to the operator (cluster mode); re-read for every
    /// connection and report, since the kubelet rotates it.
    #[arg(long, env = "WEAVER_TOKEN_FILE", default_value = "/var/run/secrets/llmweaver.io/token")]
    pub token_file: PathBuf,
    /// Where the last applied snapshot is kept (cluster mode), so a restart
    /// serves while the operator is unreachable. Holds credentials: mode 0600.
    #[arg(long, env = "WEAVER_CACHE_FILE", default_value = "/var/cache/llm-weaver/snapshot.json")]
    pub cache_file: PathBuf,
    /// Name reported to the operator; must be unique per process start
    /// (default: $POD_NAME or the host name, plus `-` and the start time in
    /// unix milliseconds).
    #[arg(long, env = "WEAVER_INSTANCE")]
    pub instance: Option<String>,
    /// How often counters are reported to the operator (cluster mode).
    #[arg(long, env = "WEAVER_REPORT_INTERVAL", default_value = "2s", value_parser = positive_duration)]
    pub report_interval: Duration,
    /// Address to listen on. Containers pass 0.0.0.0:8080.
    #[arg(long, env = "WEAVER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where usage records are kept: `sqlite://PATH`, `postgres://...`, or
    /// `off`. Default: standalone, `sqlite://<data-dir>/usage.db`; cluster
    /// mode, off (usage goes to the operator's reports only).
    #[arg(long, env = "WEAVER_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The gateway's own files: the SQLite usage store by default, and the
    /// spool that keeps usage records while the store is unreachable.
    #[arg(long, env = "WEAVER_DATA_DIR", default_value = "/var/lib/llm-weaver")]
    pub data_dir: PathBuf,
    /// Serve requests even when usage records cannot be kept (the queue and
    /// the spool are full); by default such requests are refused with 503.
    #[arg(long, env = "WEAVER_USAGE_FAIL_OPEN")]
    pub usage_fail_open: bool,
    /// How long the first usage record of a batch waits for more before the
    /// batch is written (a batch also goes once it holds 1,000 records).
    /// Longer means fewer, larger transactions; records reach the store (and
    /// the usage API) later, and a SIGKILL can take more of them.
    #[arg(long, env = "WEAVER_USAGE_BATCH_INTERVAL", default_value = "200ms", value_parser = positive_duration)]
    pub usage_batch_interval: Duration,
    /// Address for `/healthz`, `/readyz` and `/metrics`, kept off the client
    /// port, and (standalone, with a usage store) the usage API under
    /// `/admin/v1/`. Containers pass 0.0.0.0:9090.
    #[arg(long, env = "WEAVER_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// The admin listener's bearer token (the usage API and the channel
    /// test). Prefer the environment variable or --admin-token-file: a
    /// flag's value shows in the process list.
    #[arg(long, env = "WEAVER_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "admin_token_file")]
    pub admin_token: Option<AdminTokenText>,
    /// File holding the admin listener's bearer token. Without it (or
    /// WEAVER_ADMIN_TOKEN), a standalone gateway generates one into
    /// <data-dir>/admin-token (mode 0600) on the first start and reuses it
    /// afterwards; a cluster-mode gateway has none, and no channel test.
    #[arg(long, env = "WEAVER_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Browser origins allowed to call the API (CORS preflights are answered
    /// for them); `*` allows any. Off when empty.
    #[arg(long = "cors-allow-origin", env = "WEAVER_CORS_ALLOW_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allow_origins: Vec<HeaderValue>,
    /// Add the ApiKey name as a `key` label to request and token metrics (one
    /// series per key: mind the cardinality with many keys).
    #[arg(long, env = "WEAVER_METRICS_PER_KEY")]
    pub metrics_per_key: bool,
    /// Name the channel that answered in an `x-weaver-channel` response
    /// header (`--channel-header false` to leave it out, e.g. when channel
    /// names should stay internal).
    #[arg(long, env = "WEAVER_CHANNEL_HEADER", default_value_t = true, action = clap::ArgAction::Set)]
    pub channel_header: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "WEAVER_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Proxies (CIDRs) whose X-Forwarded-For header is trusted for IP allowlists.
    #[arg(long = "trusted-proxy", env = "WEAVER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// How long requests and streams in flight may run on after SIGTERM.
    #[arg(long, env = "WEAVER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Standalone: how many gateways serve these manifests behind one load
    /// balancer; each enforces 1/N of every key's rate limits. (In cluster
    /// mode the operator counts the live gateways.)
    #[arg(long, env = "WEAVER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "operator")]
    pub replicas: u32,
    /// How often the manifests folder is checked for changes.
    #[arg(long, env = "WEAVER_RELOAD_INTERVAL", default_value = "500ms", value_parser = positive_duration)]
    pub reload_interval: Duration,
    /// Log format: `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, env = "WEAVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// Tools the binary also is.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    ChannelTest(crate::probe::cli::ChannelTestArgs),
}

/// An admin token from the command line or the environment; `Debug` never
/// shows it (the parsed arguments are debug-printable).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenText(String);

impl AdminTokenText {
    pub(crate) fn text(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for AdminTokenText {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(AdminTokenText(text.to_owned()))
    }
}

impl std::fmt::Debug for AdminTokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTokenText(<redacted>)")
    }
}

/// The token travels with every request, so plain HTTP is refused.
fn parse_operator_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    if url.scheme() != "https" {
        return Err("the operator must be reached over https (the gateway sends its token)".to_owned());
    }
    Ok(url)
}

fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text.trim()).map_err(|e| e.to_string())
}

/// A period for a timer, which cannot be zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{} problem(s) in the manifests", .0)]
    Problems(usize),
    #[error("cannot open the usage store: {0}")]
    Store(#[from] weaver_store::StoreError),
    #[error("cannot start the usage writer: {0}")]
    Writer(#[from] weaver_store::WriterError),
    #[error("no admin token for the usage API: {0}")]
    AdminToken(#[from] TokenError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot load the manifests: {0}")]
    Load(#[from] LoadError),
    #[error("cannot start cluster mode: {0}")]
    Cluster(#[from] ClusterError),
    #[error("give either --manifests or --operator")]
    NoSource,
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    ChannelTest(#[from] crate::probe::cli::ChannelTestError),
}

/// An error and its causes on one line, each cause once: the messages
/// already quote their source, so `anyhow`'s `Caused by:` list would repeat
/// every message (three or four times for a manifest problem).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let shown = c.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = c.source();
    }
    text
}

/// A gateway that is listening.
pub struct Started {
    /// The bound client address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound admin address (probes, metrics).
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    serving: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Started {
    /// Waits until the server has shut down.
    pub async fn wait(self) -> Result<(), RunError> {
        self.serving.await.map_err(|e| RunError::Serve(std::io::Error::other(e)))?
    }
}

/// What keeps the configuration current while the server runs.
enum Source {
    Manifests(JoinHandle<()>),
    Operator(cluster::Running),
}

impl Source {
    async fn stop(self) {
        match self {
            Source::Manifests(watcher) => watcher.abort(),
            Source::Operator(running) => running.stop().await,
        }
    }
}

/// Standalone: the first load of the folder must succeed.
async fn load_manifests(gw: &Arc<Gateway>, dir: &std::path::Path, replicas: u32) -> Result<ManifestDir, RunError> {
    let mut source = ManifestDir::new(dir).with_replicas(replicas);
    let gw2 = gw.clone();
    let (source, first) = tokio::task::spawn_blocking(move || {
        let outcome = source.poll(&gw2);
        (source, outcome)
    })
    .await
    .map_err(|e| RunError::Serve(std::io::Error::other(e)))?;
    first?;
    Ok(source)
}

/// How long shutdown waits for the budgets' last ledger sync.
const BUDGETS_LAST_SYNC: Duration = Duration::from_secs(10);

/// Loads the configuration, binds, and serves until `shutdown` resolves.
///
/// Standalone (`--manifests`) fails on a folder that cannot be read or
/// parsed. Cluster mode (`--operator`) fails only on a TLS setup that cannot
/// work; it serves the cached snapshot if there is one and is not ready until
/// a snapshot is applied, whether the operator is reachable or not.
pub async fn start(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<Started, RunError> {
    let started_at = crate::clock::unix_millis();
    let instance = args.instance.clone().unwrap_or_else(|| cluster::default_instance(started_at));
    let (writer, store) = open_store(&args).await?;
    let settings = Settings {
        max_body_bytes: args.max_body_bytes,
        trusted_proxies: args.trusted_proxies,
        channel_header: args.channel_header,
    };
    let sink = writer.as_ref().map(|w| UsageSink {
        writer: w.handle(),
        replica: instance.as_str().into(),
        fail_open: args.usage_fail_open,
    });
    // Budgets hold across replicas through the store's ledger; without a
    // store, for this replica alone.
    let ledger = Ledger::new(store.clone(), instance.clone());
    let gw = Gateway::new(settings, Metrics::new(args.metrics_per_key), sink, ledger);
    let (stop_budgets, budgets_stopped) = tokio::sync::oneshot::channel::<()>();
    let budgets = tokio::spawn(crate::state::budget::run_sync(gw.clone(), async {
        let _ = budgets_stopped.await;
    }));
    let checks = tokio::spawn(crate::probe::checks::run(gw.clone()));
    enum Prepared {
        Manifests(ManifestDir),
        Operator(Cluster),
    }
    let prepared = match (args.manifests, args.operator) {
        (Some(dir), _) => Prepared::Manifests(load_manifests(&gw, &dir, args.replicas).await?),
        (None, Some(operator)) => {
            let config = cluster::Config {
                operator,
                ca_file: args.operator_ca,
                token_file: args.token_file,
                cache_file: args.cache_file,
                instance,
                report_interval: args.report_interval,
            };
            let gw2 = gw.clone();
            // Reads and parses the cache file: blocking work.
            let cluster = tokio::task::spawn_blocking(move || Cluster::prepare(&gw2, config))
                .await
                .map_err(|e| RunError::Serve(std::io::Error::other(e)))??;
            Prepared::Operator(cluster)
        }
        (None, None) => return Err(RunError::NoSource),
    };
    let bind = |addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })?;
        let bound = listener.local_addr().map_err(RunError::Serve)?;
        Ok::<_, RunError>((listener, bound))
    };
    // A standalone gateway with a store must have an admin token for its
    // usage API (generated when none is given); without a store it makes
    // one for the channel test when it can, and goes without otherwise (a
    // read-only data folder). Cluster-mode gateways have one only when given.
    let given = args.admin_token.is_some() || args.admin_token_file.is_some();
    let load = || admin_token(&args.admin_token, args.admin_token_file.clone(), args.data_dir.clone());
    let token = match &prepared {
        Prepared::Manifests(_) if given || store.is_some() => Some(load().await?),
        Prepared::Manifests(_) => {
            load().await.inspect_err(|e| tracing::warn!(error = %e, "no admin token: the channel test is off")).ok()
        }
        Prepared::Operator(_) if given => Some(load().await?),
        Prepared::Operator(_) => None,
    };
    let usage_api = match (&prepared, store, &token) {
        (Prepared::Operator(_), _, _) => {
            UsageApi::Off("cluster-mode gateways do not serve the usage API; the operator does")
        }
        (Prepared::Manifests(_), Some(store), Some(token)) => {
            let (token, sessions) = (Arc::new(token.clone()), Arc::new(Sessions::new()));
            let auth = || AdminAuth { token: token.clone(), sessions: sessions.clone() };
            let api = weaver_usage_api::router(store, auth(), LiveKeys(gw.clone()));
            UsageApi::Served(api.merge(crate::server::ui::router(auth(), gw.clone())))
        }
        (Prepared::Manifests(_), _, _) => {
            UsageApi::Off("the usage API needs a usage store; this gateway runs with --store off")
        }
    };
    // Cluster-mode gateways also take the operator's token (its UI's channel test).
    let operator = matches!(prepared, Prepared::Operator(_)).then(|| gw.clone());
    let admin_gate = AdminGate { token, operator };
    let (client, addr) = bind(args.listen).await?;
    let (admin, admin_addr) = bind(args.admin_listen).await?;
    let source = match prepared {
        Prepared::Manifests(dir) => {
            tracing::info!(%addr, %admin_addr, manifests = %dir.path().display(), "listening");
            Source::Manifests(tokio::spawn(dir.watch(gw.clone(), args.reload_interval)))
        }
        Prepared::Operator(cluster) => {
            tracing::info!(%addr, %admin_addr, operator = %cluster.operator_url(), instance = cluster.instance(), "listening");
            Source::Operator(cluster.spawn(gw.clone()))
        }
    };
    let serving = tokio::spawn({
        let gw = gw.clone();
        async move {
            let cors = CorsOrigins { origins: args.cors_allow_origins };
            let listeners = Listeners { client, admin, usage_api, admin_gate };
            let served = crate::server::serve(listeners, gw, &cors, shutdown, args.shutdown_grace).await;
            source.stop().await;
            // The budgets' last sync settles what this replica spent; a store
            // out of reach must not hold the exit for long (the slices then
            // expire on their own).
            let _ = stop_budgets.send(());
            let _ = tokio::time::timeout(BUDGETS_LAST_SYNC, budgets).await;
            checks.abort();
            // Every record of the requests that ran is written, or spooled
            // for the next start.
            if let Some(writer) = writer {
                writer.flush_and_close().await?;
            }
            served.map_err(RunError::Serve)
        }
    });
    Ok(Started { addr, admin_addr, gateway: gw, serving })
}

/// The admin token (reading or generating its file: blocking
/// work); logs where it comes from, never the token.
async fn admin_token(
    given: &Option<AdminTokenText>,
    file: Option<PathBuf>,
    data_dir: PathBuf,
) -> Result<AdminToken, RunError> {
    let given = given.as_ref().map(|AdminTokenText(t)| t.clone());
    let (token, source) =
        tokio::task::spawn_blocking(move || AdminToken::load(given.as_deref(), file.as_deref(), &data_dir))
            .await
            .map_err(|e| RunError::Serve(std::io::Error::other(e)))??;
    match source {
        TokenSource::Given => tracing::info!("admin routes on the admin listener; admin token from WEAVER_ADMIN_TOKEN"),
        TokenSource::File(path) => {
            tracing::info!(file = %path.display(), "admin routes on the admin listener; admin token from the file")
        }
        TokenSource::DataDir(path, generated) => {
            tracing::info!(file = %path.display(), generated, "admin routes on the admin listener; admin token in the file")
        }
    }
    Ok(token)
}

/// Opens the usage store (migrating it) and starts its writer, unless the
/// store is off; also returns the store (a clone shares the connection pool)
/// for the budget ledger and the usage API's reads.
async fn open_store(args: &Args) -> Result<(Option<Writer>, Option<Store>), RunError> {
    let url = match (&args.store, &args.manifests) {
        (Some(url), _) if url == "off" => return Ok((None, None)),
        (Some(url), _) => url.clone(),
        (None, Some(_)) => format!("sqlite://{}", args.data_dir.join("usage.db").display()),
        (None, None) => return Ok((None, None)),
    };
    let store = Store::connect(&url, StoreOptions::default())?;
    // One gateway per data folder: a restarted gateway replays what its
    // predecessor left in the spool.
    let config =
        WriterConfig { batch_interval: args.usage_batch_interval, ..WriterConfig::new(args.data_dir.join("spool")) };
    let ledger = store.clone();
    let writer = match store.migrate().await {
        Ok(()) => {
            tracing::info!(store = %redacted(&url), "usage store ready");
            Writer::start(store, config)?
        }
        // A database server that is away must not keep gateways from serving:
        // records are spooled until it answers. A SQLite file that cannot be
        // opened is a set-up mistake, said at once.
        Err(weaver_store::StoreError::Database(err)) if matches!(store, Store::Postgres(_)) => {
            tracing::warn!(store = %redacted(&url), %err,
                "usage store unreachable at start; usage records are spooled until it answers");
            Writer::start_unmigrated(store, config)?
        }
        Err(err) => return Err(err.into()),
    };
    Ok((Some(writer), Some(ledger)))
}

/// A store URL for logs: no password.
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Runs until `shutdown` resolves and the server has drained; with
/// `--check`, checks the folder and returns.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    if let Some(Command::ChannelTest(test)) = args.command {
        crate::probe::cli::run(test).await?;
        return Ok(());
    }
    if let Some(dir) = &args.check {
        let (errors, problems) = manifests::check(dir)?;
        for e in &errors {
            println!("{e}");
        }
        for p in &problems {
            println!("{p}");
        }
        if !(errors.is_empty() && problems.is_empty()) {
            return Err(RunError::Problems(errors.len() + problems.len()));
        }
        println!("{}: no problems", dir.display());
        return Ok(());
    }
    start(args, shutdown).await?.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_comes_from_one_place_and_is_never_printed() {
        let parse = |argv: &[&str]| Args::try_parse_from([&["weaver-gateway", "--manifests", "dir"], argv].concat());
        assert!(parse(&["--admin-token", "t", "--admin-token-file", "f"]).is_err());
        let args = parse(&["--admin-token", "s3cret-value"]);
        assert!(args.is_ok_and(|a| !format!("{a:?}").contains("s3cret-value")));
    }

    #[test]
    fn errors_print_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let load = LoadError::Io { path: "dir".into(), source: io };
        assert_eq!(error_chain(&RunError::Load(load)), "cannot load the manifests: cannot read dir: disk on fire");
        let mute = RunError::Listen { addr: ([127, 0, 0, 1], 1).into(), source: std::io::Error::other("busy") };
        assert_eq!(error_chain(&mute), "cannot listen on 127.0.0.1:1: busy");
    }

    #[test]
    fn exactly_one_source_is_required() {
        let parse = |argv: &[&str]| Args::try_parse_from([&["weaver-gateway"], argv].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--manifests", "dir", "--operator", "https://op:8443"]).is_err());
        assert!(parse(&["--operator", "http://op:8080"]).is_err(), "plain http would expose the token");
        assert!(parse(&["--operator", "https://op:8443", "--report-interval", "0s"]).is_err());
        assert!(parse(&["--manifests", "dir"]).is_ok_and(|a| a.manifests.is_some() && a.operator.is_none()));
        assert!(parse(&["--manifests", "dir", "--replicas", "3"]).is_ok_and(|a| a.replicas == 3));
        assert!(parse(&["--manifests", "dir", "--replicas", "0"]).is_err());
        assert!(parse(&["--operator", "https://op:8443", "--replicas", "2"]).is_err(), "the operator counts replicas");
        assert!(parse(&["--operator", "https://op:8443"]).is_ok_and(|a| a.operator.is_some()
            && a.report_interval == Duration::from_secs(2)
            && a.token_file == std::path::Path::new("/var/run/secrets/llmweaver.io/token")));
    }
}
