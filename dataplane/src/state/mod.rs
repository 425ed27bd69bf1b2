//! The gateway's shared state: the live configuration behind an `ArcSwap`
//! (loaded once per request), the upstream connection pools and the registry
//! that outlive it, metrics, and operational settings.

pub(crate) mod budget;
mod clients;
mod registry;
mod runtime;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::time::Instant;
use weaver_crds::Snapshot;

pub(crate) use budget::Ledger;
pub(crate) use clients::{ClientPool, HttpClient};
pub(crate) use registry::{Id, Registry};
pub(crate) use runtime::{ChannelRuntime, Digest, KeyRuntime, ModelRuntime, Runtime};

use crate::clock::unix_millis;
use crate::limits::Nanos;
use crate::metering::{Label, Metrics, UsageSink};

/// Operational settings that do not come from manifests.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Name the answering channel in an `x-weaver-channel` response header.
    pub channel_header: bool,
}

/// One gateway process.
pub struct Gateway {
    live: ArcSwap<Runtime>,
    clients: ClientPool,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    /// Where usage records go, when a store is configured.
    pub(crate) usage: Option<UsageSink>,
    /// Where budget slices are leased from.
    pub(crate) ledger: Ledger,
    pub(crate) settings: Settings,
    /// Unix milliseconds when this instance began counting.
    pub(crate) started_at: i64,
    /// Zero of the rate limiters' clock (monotonic).
    epoch: Instant,
    loaded: AtomicBool,
    draining: AtomicBool,
    /// The version of each snapshot applied, for the tasks that follow the
    /// configuration (active health checks).
    applied: tokio::sync::watch::Sender<u64>,
}

impl Gateway {
    pub(crate) fn new(settings: Settings, metrics: Metrics, usage: Option<UsageSink>, ledger: Ledger) -> Arc<Self> {
        let clients = ClientPool::default();
        let registry = Registry::default();
        let (empty, _) = Runtime::build(Snapshot::default(), &clients, &registry, &metrics);
        Arc::new(Self {
            live: ArcSwap::from_pointee(empty),
            clients,
            registry,
            metrics,
            usage,
            ledger,
            settings,
            started_at: unix_millis(),
            epoch: Instant::now(),
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Swaps in a new snapshot. Requests already running finish on the one
    /// they started with; connection pools and registry entries are kept, and
    /// entries of objects that disappeared are pruned.
    pub(crate) fn apply(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        let (runtime, warnings) = Runtime::build(snapshot, &self.clients, &self.registry, &self.metrics);
        for w in warnings {
            tracing::warn!(problem = %w, "snapshot problem");
        }
        let channels: HashSet<&Id> = runtime.channels.iter().map(|c| &c.state.id).collect();
        let keys: HashSet<&Id> = runtime.keys.iter().map(|k| &k.state.id).collect();
        let namespaces: HashSet<&Label> = runtime.namespaces.iter().map(|n| &n.state.id).collect();
        self.registry.retain(&channels, &keys, &namespaces);
        self.registry.retain_budgets(&runtime.policy_ids.iter().collect());
        self.live.store(Arc::new(runtime));
        self.metrics.snapshot_version.set(i64::try_from(version).unwrap_or(i64::MAX));
        self.loaded.store(true, Ordering::Release);
        self.applied.send_replace(version);
        tracing::info!(version, "snapshot applied");
    }

    /// Wakes at every snapshot applied from now on.
    pub(crate) fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// `at` on the rate limiters' clock: nanoseconds since the gateway started.
    pub(crate) fn nanos(&self, at: Instant) -> Nanos {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The live runtime; hold it for the whole request.
    pub(crate) fn live(&self) -> Arc<Runtime> {
        self.live.load_full()
    }

    /// The version of the snapshot in use, once one has been applied.
    pub fn applied_version(&self) -> Option<u64> {
        self.loaded.load(Ordering::Acquire).then(|| self.live.load().snapshot.version)
    }

    /// Ready to take traffic: a snapshot is loaded and no shutdown has begun.
    pub(crate) fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the gateway as shutting down, so `/readyz` turns load balancers away.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
