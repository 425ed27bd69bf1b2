//! What every task of the operator shares; nothing global.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::watch;
use weaver_crds::compiler::Kind;

use crate::alerts::Announced;
use crate::auth::Authenticator;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::state::{Published, Stores};
use crate::usage::{Id, UsageBook};
use crate::usage_store::UsageReader;

/// The field manager for everything the operator writes (server-side apply).
pub const MANAGER: &str = "llm-weaver";

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub authenticator: Authenticator,
    pub usage: Mutex<UsageBook>,
    pub published: watch::Receiver<Arc<Published>>,
    /// Live gateway count, fed back into the snapshot.
    pub replicas: watch::Sender<u32>,
    /// Passes reports on to the leader.
    pub forward: Forwarder,
    pub gateway_timeout: Duration,
    /// With `--store`: status usage comes from the usage store.
    pub store: Option<UsageReader>,
    /// Budget alerts this replica announced, per ApiKey or NamespacePolicy:
    /// status may lag behind in the watch cache for a pass, and must not make
    /// them fire twice.
    pub alerts: Mutex<HashMap<(Kind, Id), Announced>>,
}

impl Context {
    pub fn usage(&self) -> std::sync::MutexGuard<'_, UsageBook> {
        self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn alerts(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, Id), Announced>> {
        self.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reaches the leader at the address it advertises (usually its pod IP),
/// verifying its certificate for a name the certificate carries: the shared
/// serving certificate covers the Service names, not pod addresses.
pub struct Forwarder {
    ca: reqwest::Certificate,
    tls_name: String,
    cached: Mutex<Option<(String, reqwest::Client)>>,
}

impl Forwarder {
    pub fn new(ca: reqwest::Certificate, tls_name: String) -> Self {
        Self { ca, tls_name, cached: Mutex::new(None) }
    }

    /// The reports URL at the leader and a client that reaches it.
    pub fn target(&self, leader_url: &str) -> Result<(String, reqwest::Client), reqwest::Error> {
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((url, client)) = cached.as_ref().filter(|(u, _)| u == leader_url) {
            return Ok((self.reports_url(url), client.clone()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.clone())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let authority = leader_url.trim_start_matches("https://").trim_end_matches('/');
        if let Ok(addr) = authority.parse::<std::net::SocketAddr>() {
            builder = builder.resolve(&self.tls_name, addr);
        }
        let client = builder.build()?;
        *cached = Some((leader_url.to_owned(), client.clone()));
        Ok((self.reports_url(leader_url), client))
    }

    fn reports_url(&self, leader_url: &str) -> String {
        let authority = leader_url.trim_start_matches("https://").trim_end_matches('/');
        let base = match authority.parse::<std::net::SocketAddr>() {
            Ok(addr) => format!("https://{}:{}", self.tls_name, addr.port()),
            Err(_) => format!("https://{authority}"),
        };
        format!("{base}{}", weaver_crds::protocol::REPORTS_PATH)
    }
}
