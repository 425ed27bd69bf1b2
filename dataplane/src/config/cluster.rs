//! Cluster mode: the operator streams snapshots to the gateway, and the gateway
//! reports back what it applied and served.
//!
//! Static stability comes first: the gateway never stops serving because the
//! operator is away. It keeps the last snapshot it applied, reconnects with
//! backoff, and keeps that snapshot on disk so that a gateway restarted while
//! the operator is down still serves.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::header;
use rand::Rng;
use reqwest::{StatusCode, Url};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use weaver_crds::Snapshot;
use weaver_crds::protocol::{REPORTS_PATH, SNAPSHOTS_PATH};

use crate::metering;
use crate::providers::chain;
use crate::state::Gateway;

/// The operator sends an empty line every 15 s; three missed in a row means
/// the connection is dead (a half-open TCP connection would otherwise hang
/// the stream forever).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last report.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A bound on one snapshot line, so a broken peer cannot grow the buffer
/// without end; real snapshots are far smaller.
const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// Cluster-mode settings, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// The operator's base URL (https).
    pub operator: Url,
    /// PEM CA bundle to trust for the operator instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Projected ServiceAccount token; re-read for every connection and report.
    pub token_file: PathBuf,
    pub cache_file: PathBuf,
    /// Unique per process start.
    pub instance: String,
    pub report_interval: Duration,
}

/// Problems that stop cluster mode from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the operator CA bundle {path}: {source}")]
    CaFile { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the operator CA bundle {path} holds no usable certificate")]
    NoCa { path: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the token file {path} is empty")]
    Empty { path: PathBuf },
}

/// Why one connection to the snapshot stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot reach the operator: {0}")]
    Request(String),
    #[error("the operator refused the gateway's token ({0}); check the token's audience and the gateway's RBAC")]
    Unauthorized(StatusCode),
    #[error("the operator answered {0}")]
    Status(StatusCode),
    #[error("nothing from the operator for {}", humantime::format_duration(*.0))]
    Idle(Duration),
    #[error("the snapshot stream broke: {0}")]
    Body(String),
    #[error("a snapshot line exceeds {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot reach the operator: {0}")]
    Request(String),
    #[error("the operator answered {0}")]
    Status(StatusCode),
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} may be read by group or others (mode {mode:03o}) and holds upstream credentials; it is not used (chmod 600 it)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} is not a snapshot: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A JSON error without its message: serde quotes the offending value, and in
/// a snapshot that value may be a credential.
fn json_error(e: &serde_json::Error) -> String {
    format!("{:?} error at line {}, column {}", e.classify(), e.line(), e.column())
}

/// The URL without user info, for logs.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// `base` with `path` appended, so an operator behind a path prefix works.
fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// The default instance name: pod (or host) name plus the start time in unix
/// milliseconds, so a restarted process reports as a new instance and its
/// counters, which start again from zero, are not mistaken for a decrease.
pub fn default_instance(started_at_millis: i64) -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weaver-gateway".to_owned());
    format!("{base}-{started_at_millis}")
}

/// TLS for the gateway's own https clients: the CA bundle in `ca_file`, or
/// the public webpki roots; ring as the crypto provider.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| ClusterError::CaFile { path: path.to_owned(), source })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ClusterError::NoCa { path: path.to_owned() });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn read_token(path: &Path) -> Result<String, TokenError> {
    let text =
        tokio::fs::read_to_string(path).await.map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    Ok(token.to_owned())
}

/// Exponential backoff with jitter: 250 ms doubling to 10 s, each delay drawn
/// from the upper half of its step so replicas do not reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: BACKOFF_MIN }
    }
}

impl Backoff {
    fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let step = u64::try_from(self.step.as_millis()).unwrap_or(u64::MAX);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        // Whole milliseconds keep the logged delay readable.
        Duration::from_millis(rng.random_range(step / 2..=step))
    }

    fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }
}

/// Splits a byte stream into lines; a stream silent for longer than `idle`
/// is an error.
struct Lines<S> {
    body: S,
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline, so a large line arriving
    /// in many chunks is scanned once.
    scanned: usize,
    idle: Duration,
    max: usize,
}

impl<S, E> Lines<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + 'static,
{
    fn new(body: S, idle: Duration, max: usize) -> Self {
        Self { body, buf: BytesMut::new(), scanned: 0, idle, max }
    }

    /// The next line without its line ending; `None` when the stream ends (a
    /// partial last line is dropped: it is an incomplete snapshot).
    async fn next(&mut self) -> Result<Option<Bytes>, StreamError> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                let end = self.scanned + at;
                let mut line = self.buf.split_to(end + 1);
                self.scanned = 0;
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len().saturating_sub(1));
                }
                return Ok(Some(line.freeze()));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(StreamError::TooLarge(self.max));
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => return Err(StreamError::Idle(self.idle)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(StreamError::Body(chain(&e))),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }
}

/// What one snapshot line did.
enum Applied {
    New,
    Same(u64),
    Invalid(String),
}

/// Parses, applies and caches one snapshot line. Blocking: parsing and
/// building the runtime of a large snapshot takes a while, and the cache is
/// written with fsync.
fn apply_line(gw: &Gateway, cache: &Path, line: &[u8]) -> Applied {
    let snapshot: Snapshot = match serde_json::from_slice(line) {
        Ok(s) => s,
        Err(e) => return Applied::Invalid(json_error(&e)),
    };
    let version = snapshot.version;
    if gw.applied_version() == Some(version) {
        return Applied::Same(version);
    }
    gw.apply(snapshot);
    // The operator's bytes are the snapshot as it was parsed; no need to re-serialise.
    if let Err(e) = write_cache(cache, line) {
        tracing::warn!(path = %cache.display(), error = %e, "cannot cache the snapshot; a restart without the operator will not serve it");
    }
    Applied::New
}

/// Writes `bytes` to `path` atomically and readable by this user only: a
/// temporary file created with mode 0600 in the same folder, synced, renamed
/// over the old one, and the folder synced so the rename survives a crash.
pub fn write_cache(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the cache path has no file name"))?;
    let tmp = dir.join(format!(".{}.{:08x}.tmp", name.to_string_lossy(), rand::random::<u32>()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The cached snapshot, if there is one. A file others may read is refused:
/// it holds upstream credentials, and someone may have tampered with it.
pub fn read_cache(path: &Path) -> Result<Option<Snapshot>, CacheError> {
    let io = |source| CacheError::Io { path: path.to_owned(), source };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // The mode of the file opened, not of the path, so a swap in between changes nothing.
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CacheError::Exposed { path: path.to_owned(), mode });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CacheError::Invalid { path: path.to_owned(), reason: json_error(&e) })
}

/// The operator's HTTPS endpoints, with the client that reaches them.
pub struct Operator {
    client: reqwest::Client,
    base: Url,
    snapshots: Url,
    reports: Url,
    token_file: PathBuf,
    idle: Duration,
}

impl Operator {
    pub fn new(base: &Url, ca_file: Option<&Path>, token_file: PathBuf) -> Result<Self, ClusterError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(ca_file)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .user_agent(concat!("llm-weaver-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClusterError::Client)?;
        Ok(Self {
            client,
            base: base.clone(),
            snapshots: endpoint(base, SNAPSHOTS_PATH),
            reports: endpoint(base, REPORTS_PATH),
            token_file,
            idle: IDLE_TIMEOUT,
        })
    }

    /// One connection to the snapshot stream: applies every snapshot that
    /// arrives until the stream ends (`Ok`) or fails.
    async fn follow(
        &self,
        gw: &Arc<Gateway>,
        cache: &Path,
        applied: &Notify,
        backoff: &mut Backoff,
    ) -> Result<(), StreamError> {
        let token = read_token(&self.token_file).await?;
        let request = self
            .client
            .get(self.snapshots.clone())
            .bearer_auth(token)
            .header(header::ACCEPT, "application/x-ndjson")
            .send();
        // No timeout on the whole request (it lasts as long as the operator
        // does), but the headers must come as promptly as any byte.
        let response = tokio::time::timeout(self.idle, request)
            .await
            .map_err(|_| StreamError::Idle(self.idle))?
            .map_err(|e| StreamError::Request(chain(&e.without_url())))?;
        match response.status() {
            s if s.is_success() => {}
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => return Err(StreamError::Unauthorized(s)),
            s => return Err(StreamError::Status(s)),
        }
        tracing::info!(operator = %shown(&self.base), "connected to the operator");
        let mut lines = Lines::new(Box::pin(response.bytes_stream()), self.idle, MAX_SNAPSHOT_BYTES);
        let mut first = true;
        while let Some(line) = lines.next().await? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // keepalive
            }
            if first {
                // The stream works: the next failure starts the backoff afresh.
                backoff.reset();
            }
            let (gw2, cache2) = (gw.clone(), cache.to_owned());
            let outcome = tokio::task::spawn_blocking(move || apply_line(&gw2, &cache2, &line))
                .await
                .unwrap_or_else(|e| Applied::Invalid(format!("applying panicked: {e}")));
            let new = match outcome {
                Applied::New => true,
                Applied::Same(version) => {
                    tracing::debug!(version, "the operator's snapshot is the one in use");
                    false
                }
                Applied::Invalid(reason) => {
                    gw.metrics.snapshot_load_errors.inc();
                    tracing::error!(%reason, "the operator sent a snapshot that cannot be used; the previous one stays in use");
                    false
                }
            };
            // Acknowledge a new version at once, and tell a (re)connected
            // operator which version this gateway serves.
            if new || first {
                applied.notify_one();
            }
            first = false;
        }
        Ok(())
    }

    /// Follows the snapshot stream for ever, reconnecting with backoff. The
    /// last good snapshot stays in use whatever happens here.
    pub async fn follow_forever(self: Arc<Self>, gw: Arc<Gateway>, cache: PathBuf, applied: Arc<Notify>) {
        let mut backoff = Backoff::default();
        loop {
            let ended = self.follow(&gw, &cache, &applied, &mut backoff).await;
            let delay = backoff.next(&mut rand::rng());
            let retry_in = humantime::format_duration(delay);
            let serving = gw.applied_version();
            match ended {
                Ok(()) => tracing::info!(%retry_in, ?serving, "the operator closed the snapshot stream; reconnecting"),
                Err(StreamError::Unauthorized(status)) => tracing::error!(
                    status = status.as_u16(),
                    %retry_in,
                    ?serving,
                    "the operator refused the gateway's token; check the token's audience and the gateway's RBAC"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, %retry_in, ?serving, "operator stream failed; serving the last good snapshot")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Posts the counters so far, with the version in use. Nothing is posted
    /// before a snapshot is applied: the report is also its acknowledgement.
    pub async fn report(&self, gw: &Gateway, instance: &str) -> Result<(), ReportError> {
        let Some(version) = gw.applied_version() else {
            return Ok(());
        };
        let report = metering::report(&gw.registry, instance, gw.started_at, version);
        let token = read_token(&self.token_file).await?;
        let response = self
            .client
            .post(self.reports.clone())
            .bearer_auth(token)
            .json(&report)
            .timeout(REPORT_TIMEOUT)
            .send()
            .await
            .map_err(|e| ReportError::Request(chain(&e.without_url())))?;
        if !response.status().is_success() {
            return Err(ReportError::Status(response.status()));
        }
        Ok(())
    }

    /// Reports every `interval`, and as soon as `now` is notified.
    pub async fn report_forever(
        self: Arc<Self>,
        gw: Arc<Gateway>,
        instance: String,
        interval: Duration,
        now: Arc<Notify>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = now.notified() => ticker.reset(),
            }
            match self.report(&gw, &instance).await {
                // Counters are cumulative: the next report carries these too.
                // Said once at warn when reports start failing, then quietly.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "reports are not being delivered; usage is kept and sent later");
                }
                Err(e) => tracing::debug!(error = %e, "report not delivered"),
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("reports are delivered again");
                }
                Ok(()) => {}
            }
        }
    }
}

/// Cluster mode, set up but not yet following the operator.
pub struct Cluster {
    operator: Arc<Operator>,
    config: Config,
}

impl Cluster {
    /// Builds the client (failing on a CA bundle that cannot be used) and
    /// applies the cached snapshot, if a usable one exists, so the gateway
    /// serves before the operator answers, or without it.
    pub fn prepare(gw: &Gateway, config: Config) -> Result<Self, ClusterError> {
        let operator = Operator::new(&config.operator, config.ca_file.as_deref(), config.token_file.clone())?;
        match read_cache(&config.cache_file) {
            Ok(Some(snapshot)) => {
                let version = snapshot.version;
                gw.apply(snapshot);
                tracing::info!(version, path = %config.cache_file.display(), "serving the cached snapshot until the operator answers");
            }
            Ok(None) => {
                tracing::info!(path = %config.cache_file.display(), "no cached snapshot; not ready until the operator answers")
            }
            Err(e) => tracing::warn!(error = %e, "cached snapshot not used; not ready until the operator answers"),
        }
        Ok(Self { operator: Arc::new(operator), config })
    }

    pub fn operator_url(&self) -> String {
        shown(&self.config.operator)
    }

    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// Starts following the operator and reporting to it.
    pub fn spawn(self, gw: Arc<Gateway>) -> Running {
        let applied = Arc::new(Notify::new());
        let follow =
            tokio::spawn(self.operator.clone().follow_forever(gw.clone(), self.config.cache_file, applied.clone()));
        let report = tokio::spawn(self.operator.clone().report_forever(
            gw.clone(),
            self.config.instance.clone(),
            self.config.report_interval,
            applied,
        ));
        Running { tasks: [follow, report], operator: self.operator, gw, instance: self.config.instance }
    }
}

/// Cluster mode at work.
pub struct Running {
    tasks: [JoinHandle<()>; 2],
    operator: Arc<Operator>,
    gw: Arc<Gateway>,
    instance: String,
}

impl Running {
    /// Stops following the operator and sends a last report, so the traffic
    /// since the previous one is not lost with this instance.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        match tokio::time::timeout(FINAL_REPORT_TIMEOUT, self.operator.report(&self.gw, &self.instance)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "last report not delivered"),
            Err(_) => tracing::debug!("last report timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use futures_util::stream;

    #[test]
    fn backoff_doubles_to_ten_seconds_with_jitter_and_resets() {
        let mut rng = rand::rng();
        let mut b = Backoff::default();
        let steps = [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000];
        for step in steps {
            let step = Duration::from_millis(step);
            let d = b.next(&mut rng);
            assert!(d >= step / 2 && d <= step, "{d:?} outside [{:?}, {step:?}]", step / 2);
        }
        b.reset();
        assert!(b.next(&mut rng) <= BACKOFF_MIN);
    }

    #[test]
    fn endpoints_keep_a_path_prefix() -> anyhow::Result<()> {
        let base: Url = "https://op.example:8443/weaver/".parse()?;
        assert_eq!(endpoint(&base, SNAPSHOTS_PATH).as_str(), "https://op.example:8443/weaver/v1/snapshots");
        let base: Url = "https://op.example".parse()?;
        assert_eq!(endpoint(&base, REPORTS_PATH).as_str(), "https://op.example/v1/reports");
        let with_user: Url = "https://me:secret@op.example/".parse()?;
        assert!(!shown(&with_user).contains("secret"));
        Ok(())
    }

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + use<> {
        stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p.as_bytes()))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn lines_split_across_chunks_and_keepalives() -> anyhow::Result<()> {
        let body = chunks(&["{\"a\"", ":1}\n\n", "{\"b\":2}\r\n{\"c\"", ":3}\n{\"partial"]);
        let mut lines = Lines::new(body, IDLE_TIMEOUT, 1024);
        let mut got = Vec::new();
        while let Some(line) = lines.next().await? {
            got.push(String::from_utf8(line.to_vec())?);
        }
        assert_eq!(got, ["{\"a\":1}", "", "{\"b\":2}", "{\"c\":3}"]);
        Ok(())
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused() {
        let mut lines = Lines::new(chunks(&["0123456789", "0123456789", "\n"]), IDLE_TIMEOUT, 15);
        assert!(matches!(lines.next().await, Err(StreamError::TooLarge(15))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_dead_after_the_idle_timeout() -> anyhow::Result<()> {
        let body = chunks(&["{}\n"]).chain(stream::pending());
        let mut lines = Lines::new(body, IDLE_TIMEOUT, 1024);
        assert_eq!(lines.next().await?.as_deref(), Some(&b"{}"[..]));
        let started = tokio::time::Instant::now();
        assert!(matches!(lines.next().await, Err(StreamError::Idle(_))));
        assert_eq!(started.elapsed(), IDLE_TIMEOUT);
        Ok(())
    }

    #[test]
    fn the_cache_is_private_and_round_trips() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/snapshot.json");
        assert!(read_cache(&path)?.is_none());
        let snapshot = Snapshot { version: 42, ..Snapshot::default() };
        write_cache(&path, &serde_json::to_vec(&snapshot)?)?;
        assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_cache(&path)?, Some(snapshot.clone()));
        // Overwriting leaves no temporary file behind.
        write_cache(&path, &serde_json::to_vec(&snapshot)?)?;
        assert_eq!(std::fs::read_dir(path.parent().context("parent")?)?.count(), 1);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        assert!(matches!(read_cache(&path), Err(CacheError::Exposed { mode: 0o644, .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&path, b"{\"version\": \"sk-secret\"}")?;
        let err = read_cache(&path).err().context("a snapshot with a string version must be refused")?;
        assert!(!err.to_string().contains("sk-secret"), "{err}");
        Ok(())
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n")?;
        assert!(matches!(tls_config(Some(&path)), Err(ClusterError::NoCa { .. })));
        assert!(matches!(tls_config(Some(&dir.path().join("missing.pem"))), Err(ClusterError::CaFile { .. })));
        assert!(tls_config(None).is_ok());
        Ok(())
    }
}
