//! The gateway's shared state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use weaver_crds::Snapshot;

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::stats::Stats;
use crate::upstream::ClientPool;

/// Operational settings that do not come from manifests.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_body_bytes: 10 * 1024 * 1024, trusted_proxies: Vec::new() }
    }
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    clients: ClientPool,
    pub metrics: Metrics,
    /// Per key and channel counters for the operator (kept in every mode).
    pub stats: Stats,
    pub settings: Settings,
    loaded: AtomicBool,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(settings: Settings) -> Arc<Self> {
        let clients = ClientPool::default();
        let (empty, _) = Runtime::build(Snapshot::default(), &clients);
        Arc::new(Self {
            runtime: ArcSwap::from_pointee(empty),
            clients,
            metrics: Metrics::new(),
            stats: Stats::default(),
            settings,
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// Swaps in a new snapshot. Requests already running finish on the one
    /// they started with; connection pools are kept.
    pub fn apply(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        let (runtime, warnings) = Runtime::build(snapshot, &self.clients);
        for w in warnings {
            tracing::warn!(problem = %w, "snapshot problem");
        }
        self.runtime.store(Arc::new(runtime));
        self.metrics.snapshot_version.set(i64::try_from(version).unwrap_or(i64::MAX));
        self.loaded.store(true, Ordering::Release);
        tracing::info!(version, "snapshot applied");
    }

    /// The current runtime; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The version of the snapshot in use, once one has been applied.
    pub fn applied_version(&self) -> Option<u64> {
        self.loaded.load(Ordering::Acquire).then(|| self.runtime.load().snapshot.version)
    }

    /// Ready to take traffic: a snapshot is loaded and no shutdown has begun.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the gateway as shutting down, so `/readyz` turns load balancers away.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
