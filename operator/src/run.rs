//! Start-up: wiring the watches, the compiler, the servers and the writers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use weaver_crds::protocol::TOKEN_AUDIENCE;
use weaver_dashboard::session::Sessions;

use crate::auth::Authenticator;
use crate::cli::Args;
use crate::context::{Context, Forwarder};
use crate::gateway::{Gateways, OperatorToken};
use crate::leader::{self, LeaderConfig};
use crate::metrics::{BudgetGauges, Metrics};
use crate::state::{self, Published};
use crate::usage::UsageBook;
use crate::usage_store::UsageReader;
use crate::{inject, keys, server, status, tls, usage_api};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Kubernetes configuration: {0}")]
    Kube(#[from] kube::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("usage store: {0}")]
    Store(#[from] weaver_store::StoreError),
    #[error("sidecar webhook: {0}")]
    Inject(#[from] inject::InjectError),
    #[error("{0}")]
    Oidc(#[from] crate::oidc::OidcError),
}

/// A running operator.
pub struct Started {
    /// Where gateways connect (HTTPS).
    pub addr: SocketAddr,
    /// /metrics, /healthz, /readyz.
    pub metrics_addr: SocketAddr,
    pub context: Arc<Context>,
    tasks: tokio::task::JoinSet<()>,
}

impl Started {
    /// Runs until a server task ends (they only end on failure).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.tasks.join_next().await;
        anyhow::bail!("a server task ended")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "weaver-operator".into())
}

/// In a pod its namespace; elsewhere the kubeconfig's current namespace.
fn own_namespace(client: &Client) -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| client.default_namespace().to_owned())
}

pub async fn start(args: Args) -> Result<Started, StartError> {
    let client = Client::try_default().await?;
    // Connects lazily: an unreachable store is retried every status pass.
    let store = args
        .store
        .as_deref()
        .map(|url| weaver_store::Store::connect(url, weaver_store::StoreOptions::default()))
        .transpose()?
        .map(|s| UsageReader::new(s, args.watch_namespace.clone(), args.store_history_refresh));
    let namespace = args.namespace.clone().unwrap_or_else(|| own_namespace(&client));
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let listener =
        TcpListener::bind(args.listen).await.map_err(|source| StartError::Listen { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: args.listen, source })?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|source| StartError::Listen { addr: args.metrics_listen, source })?;
    let metrics_addr =
        metrics_listener.local_addr().map_err(|source| StartError::Listen { addr: args.metrics_listen, source })?;
    let advertise_url = args
        .advertise_url
        .clone()
        .or_else(|| std::env::var("POD_IP").ok().map(|ip| format!("https://{ip}:{}", addr.port())));
    let sans = if args.tls_san.is_empty() {
        vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "llm-weaver-operator".to_owned(),
            format!("llm-weaver-operator.{namespace}"),
            format!("llm-weaver-operator.{namespace}.svc"),
        ]
    } else {
        args.tls_san.clone()
    };

    let material = tls::load_or_create(&client, &namespace, &args.tls_secret, &sans).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.certificates(&material);
    let injector = match &args.inject_template {
        Some(path) => Some(Arc::new(inject::Injector::new(inject::Template::load(path)?, material.ca_pem.clone()))),
        None => None,
    };
    let acceptor =
        Arc::new(arc_swap::ArcSwap::from_pointee(tokio_rustls::TlsAcceptor::from(tls::server_config(&material)?)));
    let ca = reqwest::Certificate::from_pem(material.ca_pem.as_bytes())?;
    // Replicas reach the leader by address but verify it by a name it carries.
    let tls_name =
        sans.iter().find(|s| s.parse::<std::net::IpAddr>().is_err()).cloned().unwrap_or_else(|| "localhost".into());
    let forward = Forwarder::new(ca, tls_name);

    let leadership = leader::spawn(
        client.clone(),
        LeaderConfig {
            namespace: namespace.clone(),
            lease_name: "llm-weaver-operator".to_owned(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_every: args.lease_duration / 5,
            advertise_url,
        },
    );
    let changed = Arc::new(Notify::new());
    let stores = state::watch_all(&client, args.watch_namespace.as_deref(), changed.clone());
    let (publish, published) = watch::channel(Arc::new(Published::default()));
    let (replicas, replicas_rx) = watch::channel(1u32);
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        leadership,
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "llm-weaver-operator".into(), instance: Some(identity) },
        ),
        authenticator: Authenticator::new(client, TOKEN_AUDIENCE),
        usage: Mutex::new(UsageBook::new(Timestamp::now().as_millisecond())),
        published,
        replicas,
        forward,
        gateway_timeout: args.gateway_timeout,
        store,
        alerts: Mutex::default(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    // Every replica signs UI sessions, and calls gateways' admin routes,
    // with keys derived from the shared serving key, so a Service may send a
    // browser to any of them and any of them may test a channel.
    let sessions = Arc::new(Sessions::with_key(Sessions::derive_key(material.key_pem.as_bytes())));
    let oidc = crate::oidc::Oidc::from_args(&args.oidc, sessions.clone())?.map(Arc::new);
    if oidc.is_some() && ctx.store.is_none() {
        tracing::warn!("--oidc-issuer-url has no effect without --store: the UI is served only with a usage store");
    }
    let token = OperatorToken::derive(material.key_pem.as_bytes());
    let token_sha256 = token.sha256_hex();
    let gateways = Arc::new(Gateways::new(args.gateway_url.clone(), args.gateway_admin_url.clone(), token)?);
    tasks.spawn(state::compile_loop(stores, changed, replicas_rx, args.debounce, Some(token_sha256), metrics, publish));
    let ui = usage_api::router(&ctx, args.watch_namespace.clone(), sessions, gateways, oidc);
    let mut routes = server::router(ctx.clone()).merge(ui);
    if let Some(injector) = &injector {
        routes = routes
            .merge(Router::new().route("/inject", axum::routing::post(inject::handle)).with_state(injector.clone()));
    }
    let ca_bundle =
        args.webhook_configuration.clone().map(|name| CaBundle { name, pem: watch::channel(material.ca_pem.clone()) });
    tasks.spawn(server::serve_tls(listener, acceptor.clone(), routes));
    let ca_tx = ca_bundle.as_ref().map(|b| b.pem.0.clone());
    if let Some(bundle) = ca_bundle {
        tasks.spawn(keep_ca_bundle(ctx.client.clone(), bundle.name, bundle.pem.1));
    }
    let renewal = Renewal { ctx: ctx.clone(), namespace: namespace.clone(), secret: args.tls_secret.clone(), sans };
    tasks.spawn(renew_certificate(renewal, acceptor, injector, ca_tx));
    tasks.spawn(serve_plain(metrics_listener, ctx.clone()));
    tasks.spawn(writer_loop(ctx.clone(), args.status_interval));
    tracing::info!(%addr, %metrics_addr, namespace = %namespace, usage_api = ctx.store.is_some(), "listening");
    Ok(Started { addr, metrics_addr, context: ctx, tasks })
}

/// Keys and status, whenever a snapshot is published and every `interval`,
/// while this replica leads.
async fn writer_loop(ctx: Arc<Context>, interval: std::time::Duration) {
    let mut published = ctx.published.clone();
    let mut leadership = ctx.leadership.clone();
    let mut was_leader = false;
    let mut ticker = tokio::time::interval(interval);
    // A pass that takes longer than the interval (thousands of changed
    // statuses) stretches the interval instead of queueing passes behind it.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Ok(()) = published.changed() => {}
            Ok(()) = leadership.changed() => {}
        }
        let leading = ctx.leadership.is_leader();
        if leading && !was_leader {
            // Account for usage from now on; status holds what came before.
            *ctx.usage() = UsageBook::new(Timestamp::now().as_millisecond());
        }
        ctx.metrics.leader.set(i64::from(leading));
        if !leading && was_leader {
            BudgetGauges::default().clear(&ctx.metrics);
        }
        was_leader = leading;
        if !leading {
            continue;
        }
        let secrets = keys::index_secrets(&ctx);
        keys::issue_all(&ctx, &secrets).await;
        status::write_all(&ctx, &secrets).await;
    }
}

/// How often the serving certificate is checked (and renewed when it is
/// within 30 days of expiry or no longer covers the names).
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// The webhook configuration whose caBundle follows the CA.
struct CaBundle {
    name: String,
    pem: (watch::Sender<String>, watch::Receiver<String>),
}

/// Where the serving certificate is kept.
struct Renewal {
    ctx: Arc<Context>,
    namespace: String,
    secret: String,
    sans: Vec<String>,
}

/// Keeps the serving certificate fresh while the operator runs; a new CA goes
/// to the webhook (the CA it injects, and its caBundle).
async fn renew_certificate(
    r: Renewal,
    acceptor: Arc<arc_swap::ArcSwap<tokio_rustls::TlsAcceptor>>,
    injector: Option<Arc<inject::Injector>>,
    ca_bundle: Option<watch::Sender<String>>,
) {
    let mut ticker = tokio::time::interval(RENEW_EVERY);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let renewed = tls::load_or_create(&r.ctx.client, &r.namespace, &r.secret, &r.sans).await;
        match renewed.and_then(|m| Ok((tls::server_config(&m)?, m))) {
            Ok((config, material)) => {
                acceptor.store(Arc::new(tokio_rustls::TlsAcceptor::from(config)));
                r.ctx.metrics.certificates(&material);
                let ca_pem = material.ca_pem;
                if let Some(injector) = &injector {
                    injector.set_ca(ca_pem.clone());
                }
                if let Some(tx) = &ca_bundle {
                    tx.send_if_modified(|current| std::mem::replace(current, ca_pem) != *current);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the serving certificate; keeping the current one"),
        }
    }
}

/// Writes the CA into the webhook configuration's caBundle, retrying until it
/// succeeds (the configuration may be created after the operator starts), and
/// again whenever the CA changes.
async fn keep_ca_bundle(client: Client, name: String, mut pem: watch::Receiver<String>) {
    loop {
        let current = pem.borrow_and_update().clone();
        // No limit on attempts: the configuration may come long after us.
        let backoff = ExponentialBuilder::new()
            .with_min_delay(std::time::Duration::from_millis(500))
            .with_max_delay(std::time::Duration::from_secs(30))
            .with_factor(2.0)
            .without_max_times();
        let written = (|| inject::sync_ca_bundle(&client, &name, &current))
            .retry(backoff)
            .notify(|e, after| {
                let retry_in = humantime::format_duration(after);
                tracing::warn!(configuration = %name, error = %e, %retry_in, "cannot write the webhook's caBundle");
            })
            .await;
        if written.is_ok() {
            tracing::info!(configuration = %name, "webhook caBundle written");
        }
        if pem.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_plain(listener: TcpListener, ctx: Arc<Context>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(ctx): State<Arc<Context>>| async move {
                ([(http::header::CONTENT_TYPE, weaver_telemetry::OPENMETRICS_CONTENT_TYPE)], ctx.metrics.encode())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(ctx): State<Arc<Context>>| async move {
                if ctx.published.borrow().line.is_empty() {
                    (http::StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet").into_response()
                } else {
                    "ready".into_response()
                }
            }),
        )
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server failed");
    }
}
