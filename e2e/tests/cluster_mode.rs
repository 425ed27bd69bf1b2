//! Cluster mode over real loopback HTTPS: a fake operator (axum behind
//! tokio-rustls, with a throwaway CA) streams snapshots and collects reports;
//! in-process gateways (the shared [`TestGateway`] harness) follow it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use weaver_crds::Snapshot;
use weaver_crds::protocol::{GatewayReport, REPORTS_PATH, SNAPSHOTS_PATH};
use weaver_e2e::fixtures::{self, api_key, mock_channel};
use weaver_e2e::gateway::{TestGateway, eventually_within};

const ALPHA: &str = "lw-alpha-key";
const BETA: &str = "lw-beta-key";

/// A `mock` channel (answers locally, no upstream) and key `alpha`; with
/// `with_beta`, a second key.
fn snapshot(version: u64, with_beta: bool) -> anyhow::Result<Snapshot> {
    let mut yaml = mock_channel() + &api_key("alpha", ALPHA);
    if with_beta {
        yaml += &api_key("beta", BETA);
    }
    fixtures::snapshot(&yaml, version)
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Pki { ca_pem: ca_cert.pem(), server })
}

/// TLS in front of a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A failed handshake (a client that distrusts us) is that client's problem.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

struct OperatorState {
    /// The snapshot a new subscriber gets first (one JSON line).
    current: Mutex<String>,
    updates: broadcast::Sender<String>,
    /// The only token accepted; `None` accepts any.
    accept: Option<String>,
    /// `Authorization` headers of snapshot subscriptions, in order.
    subscriptions: Mutex<Vec<String>>,
    /// Reports with their `Authorization` header.
    reports: Mutex<Vec<(String, GatewayReport)>>,
    stopping: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OperatorState {
    fn authorized(&self, headers: &HeaderMap) -> (String, bool) {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let ok = self.accept.as_ref().is_none_or(|t| auth == format!("Bearer {t}"));
        (auth, ok)
    }
}

async fn snapshots(State(st): State<Arc<OperatorState>>, headers: HeaderMap) -> Response {
    let (auth, ok) = st.authorized(&headers);
    lock(&st.subscriptions).push(auth);
    if !ok {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Subscribe before reading the current one, so nothing falls in between
    // (a duplicate is harmless: the gateway skips a version it serves).
    let updates = st.updates.subscribe();
    let first = lock(&st.current).clone();
    let stopping = st.stopping.clone();
    let lines = futures_util::stream::unfold(
        (Some(first), updates, stopping),
        |(first, mut updates, mut stopping)| async move {
            let line = match first {
                Some(line) => line,
                None => tokio::select! {
                    got = updates.recv() => got.ok()?,
                    _ = stopping.wait_for(|s| *s) => return None,
                },
            };
            Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), (None, updates, stopping)))
        },
    );
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    response
}

async fn reports(
    State(st): State<Arc<OperatorState>>,
    headers: HeaderMap,
    axum::Json(report): axum::Json<GatewayReport>,
) -> StatusCode {
    let (auth, ok) = st.authorized(&headers);
    if !ok {
        return StatusCode::UNAUTHORIZED;
    }
    lock(&st.reports).push((auth, report));
    StatusCode::NO_CONTENT
}

/// The fake operator: serves `/v1/snapshots` and `/v1/reports` over HTTPS.
struct FakeOperator {
    url: String,
    state: Arc<OperatorState>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOperator {
    async fn start(pki: &Pki, first: &Snapshot, accept: Option<&str>) -> anyhow::Result<Self> {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let state = Arc::new(OperatorState {
            current: Mutex::new(serde_json::to_string(first)?),
            updates: broadcast::channel(16).0,
            accept: accept.map(str::to_owned),
            subscriptions: Mutex::default(),
            reports: Mutex::default(),
            stopping: stopping.clone(),
        });
        let app = Router::new()
            .route(SNAPSHOTS_PATH, get(snapshots))
            .route(REPORTS_PATH, post(reports))
            .with_state(state.clone());
        let listener = TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(pki.server.clone())) };
        let mut stopped = stopping;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Self { url: format!("https://{addr}"), state, stop, server })
    }

    /// Sends a new version on every open stream.
    fn push(&self, snapshot: &Snapshot) -> anyhow::Result<()> {
        let line = serde_json::to_string(snapshot)?;
        *lock(&self.state.current) = line.clone();
        let _ = self.state.updates.send(line);
        Ok(())
    }

    fn subscriptions(&self) -> Vec<String> {
        lock(&self.state.subscriptions).clone()
    }

    fn reports(&self) -> Vec<(String, GatewayReport)> {
        lock(&self.state.reports).clone()
    }

    /// Ends every stream, closes every connection and stops listening.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.server).await??;
        Ok(())
    }
}

/// The files a cluster-mode gateway reads and writes.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(ca_pem: &str, token: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca_pem)?;
        std::fs::write(dir.path().join("token"), token)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cache(&self) -> PathBuf {
        self.path("cache/snapshot.json")
    }
}

/// A cluster-mode gateway following `operator_url` with `files`.
async fn start_gateway(operator_url: &str, files: &Files, instance: &str) -> anyhow::Result<TestGateway> {
    let path = |name: &str| files.path(name).to_string_lossy().into_owned();
    let cache = files.cache().to_string_lossy().into_owned();
    TestGateway::start_with_args(&[
        "--operator",
        operator_url,
        "--operator-ca",
        &path("ca.pem"),
        "--token-file",
        &path("token"),
        "--cache-file",
        &cache,
        "--instance",
        instance,
        "--report-interval",
        "100ms",
    ])
    .await
}

/// What these tests ask of a gateway.
trait Probes {
    async fn chat(&self, client: &reqwest::Client, key: &str) -> anyhow::Result<StatusCode>;
    async fn ready(&self, client: &reqwest::Client) -> anyhow::Result<bool>;
}

impl Probes for TestGateway {
    async fn chat(&self, client: &reqwest::Client, key: &str) -> anyhow::Result<StatusCode> {
        let body = json!({"model": "demo-chat", "messages": [{"role": "user", "content": "Hello there"}]});
        let response = client.post(self.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().await?;
        Ok(response.status())
    }

    async fn ready(&self, client: &reqwest::Client) -> anyhow::Result<bool> {
        Ok(client.get(self.admin_url("/readyz")).send().await?.status() == StatusCode::OK)
    }
}

/// A plain-HTTP client for the gateway. reqwest may be built without a default
/// crypto provider (`-no-provider` features), so it is given one explicitly.
fn client() -> anyhow::Result<reqwest::Client> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

/// Polls `check` until it yields a value; fails after 10 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    eventually_within(what, Duration::from_secs(10), Duration::from_millis(25), async || {
        Ok(check().await?.map_or(ControlFlow::Continue(String::new()), ControlFlow::Break))
    })
    .await
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test]
async fn follows_the_stream_and_reports_cumulative_usage() -> anyhow::Result<()> {
    let pki = pki()?;
    let v1 = snapshot(1, false)?;
    let operator = FakeOperator::start(&pki, &v1, None).await?;
    let files = Files::new(&pki.ca_pem, "token-1\n")?;
    let gw = start_gateway(&operator.url, &files, "gw-follow").await?;
    let http = client()?;

    // The first snapshot arrives over HTTPS (trusting --operator-ca) and is served.
    eventually("the gateway is ready", || async { Ok(gw.ready(&http).await?.then_some(())) }).await?;
    assert_eq!(gw.chat(&http, ALPHA).await?, StatusCode::OK);
    assert_eq!(gw.chat(&http, BETA).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(operator.subscriptions(), ["Bearer token-1"], "the token file's content, trimmed");

    // A new version on the open stream is applied without reconnecting.
    operator.push(&snapshot(2, true)?)?;
    eventually("key beta works", || async { Ok((gw.chat(&http, BETA).await? == StatusCode::OK).then_some(())) })
        .await?;
    assert_eq!(operator.subscriptions().len(), 1);
    assert_eq!(gw.chat(&http, ALPHA).await?, StatusCode::OK);

    // Reports acknowledge version 2 and carry counters since the start: alpha
    // made two requests, across both versions.
    let (auth, report) = eventually("a report acknowledges version 2 with alpha's two requests", || async {
        Ok(operator
            .reports()
            .into_iter()
            .rev()
            .find(|(_, r)| r.applied_version == 2 && r.keys.iter().any(|k| k.name == "alpha" && k.requests == 2)))
    })
    .await?;
    assert_eq!(auth, "Bearer token-1");
    assert_eq!(report.instance, "gw-follow");
    assert!(report.started_at > 0);
    let alpha = report.keys.iter().find(|k| k.name == "alpha").context("alpha")?;
    assert_eq!(alpha.namespace, "team-a");
    assert!(alpha.input_tokens > 0 && alpha.output_tokens > 0, "{alpha:?}");
    let prices = v1.channels[0].models[0].prices;
    // Each request's cost is rounded on its own; the two were identical.
    assert_eq!(alpha.cost, 2 * prices.cost(alpha.input_tokens / 2, 0, alpha.output_tokens / 2).0);
    assert!(alpha.last_used.is_some());
    let channel = report.channels.iter().find(|c| c.name == "demo").context("channel demo")?;
    assert_eq!((channel.namespace.as_str(), channel.failures), ("team-a", 0));
    assert!(channel.requests >= 3, "{channel:?}");
    assert_eq!(channel.latency.count(), channel.requests);

    // The applied snapshot is cached, for this user's eyes only.
    let cache = files.cache();
    eventually("version 2 is cached", || async {
        let cached = std::fs::read(&cache).ok().and_then(|b| serde_json::from_slice::<Snapshot>(&b).ok());
        Ok(cached.filter(|s| s.version == 2).map(|_| ()))
    })
    .await?;
    assert_eq!(mode(&cache)?, 0o600);

    gw.shutdown().await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn serves_without_the_operator_and_restarts_from_the_cache() -> anyhow::Result<()> {
    let pki = pki()?;
    let operator = FakeOperator::start(&pki, &snapshot(7, false)?, None).await?;
    let url = operator.url.clone();
    let files = Files::new(&pki.ca_pem, "token")?;
    let first = start_gateway(&url, &files, "gw-first").await?;
    let http = client()?;
    eventually("the first gateway is ready", || async { Ok(first.ready(&http).await?.then_some(())) }).await?;
    let cache = files.cache();
    eventually("the snapshot is cached", || async { Ok(cache.exists().then_some(())) }).await?;
    assert_eq!(mode(&cache)?, 0o600);

    // The operator goes away: the stream ends, reconnecting fails, and the
    // gateway keeps serving the last good snapshot.
    operator.stop().await?;
    for _ in 0..10 {
        assert_eq!(first.chat(&http, ALPHA).await?, StatusCode::OK);
        assert!(first.ready(&http).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A gateway started while the operator is down serves from the cache at once.
    let second = start_gateway(&url, &files, "gw-second").await?;
    assert!(second.ready(&http).await?);
    assert_eq!(second.chat(&http, ALPHA).await?, StatusCode::OK);

    first.shutdown().await?;
    second.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_token_is_retried_and_the_rotated_one_is_read() -> anyhow::Result<()> {
    let pki = pki()?;
    let operator = FakeOperator::start(&pki, &snapshot(3, false)?, Some("good-token")).await?;
    let files = Files::new(&pki.ca_pem, "stale-token")?;
    let gw = start_gateway(&operator.url, &files, "gw-token").await?;
    let http = client()?;

    eventually("the stale token was tried twice", || async { Ok((operator.subscriptions().len() >= 2).then_some(())) })
        .await?;
    assert!(!gw.ready(&http).await?, "nothing applied while the operator refuses the token");
    assert!(operator.subscriptions().iter().all(|a| a == "Bearer stale-token"));

    // The kubelet rotates the token: the next attempt reads the new one.
    std::fs::write(files.path("token"), "good-token")?;
    eventually("the gateway is ready", || async { Ok(gw.ready(&http).await?.then_some(())) }).await?;
    assert_eq!(operator.subscriptions().last().map(String::as_str), Some("Bearer good-token"));

    gw.shutdown().await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_cache_file_others_can_read_is_not_loaded() -> anyhow::Result<()> {
    let pki = pki()?;
    let files = Files::new(&pki.ca_pem, "token")?;
    let cache = files.cache();
    std::fs::create_dir_all(cache.parent().context("parent")?)?;
    std::fs::write(&cache, serde_json::to_vec(&snapshot(1, false)?)?)?;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644))?;
    // Nothing listens on this port once the listener is dropped.
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let gw = start_gateway(&format!("https://{dead}"), &files, "gw-exposed").await?;
    let http = client()?;
    assert!(!gw.ready(&http).await?);
    assert_eq!(gw.chat(&http, ALPHA).await?, StatusCode::UNAUTHORIZED);
    gw.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn rate_limits_take_the_replica_share_the_operator_counts_and_survive_new_versions() -> anyhow::Result<()> {
    let limited = |version: u64, replicas: u32| -> anyhow::Result<Snapshot> {
        let mut s = snapshot(version, false)?;
        s.keys[0].rate_limit =
            Some(weaver_crds::api_key::RateLimit { requests_per_minute: Some(4), ..Default::default() });
        s.gateway_replicas = replicas;
        Ok(s)
    };
    let pki = pki()?;
    let operator = FakeOperator::start(&pki, &limited(1, 2)?, None).await?;
    let files = Files::new(&pki.ca_pem, "token\n")?;
    let gw = start_gateway(&operator.url, &files, "gw-limits").await?;
    let http = client()?;
    eventually("the gateway is ready", || async { Ok(gw.ready(&http).await?.then_some(())) }).await?;

    // Two live gateways: this one admits 2 of the key's 4 a minute.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gw.chat(&http, ALPHA).await?);
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);

    // One gateway left: its share is the whole limit, but the bucket it
    // emptied stays empty (the fill carries over; it refills at the new rate).
    operator.push(&limited(2, 1)?)?;
    let limit_header = || async {
        let body = json!({"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]});
        let r = http.post(gw.url("/v1/chat/completions")).bearer_auth(ALPHA).json(&body).send().await?;
        let limit = r.headers().get("x-ratelimit-limit-requests").and_then(|v| v.to_str().ok()).map(str::to_owned);
        anyhow::Ok((r.status(), limit))
    };
    let (status, _) = eventually("version 2 applies the whole limit", || async {
        let (status, limit) = limit_header().await?;
        Ok((limit.as_deref() == Some("4")).then_some((status, ())))
    })
    .await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "a new version does not refill the bucket");
    gw.shutdown().await?;
    operator.stop().await?;
    Ok(())
}
