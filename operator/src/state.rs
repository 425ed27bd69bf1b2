//! Watching the resources and compiling them into snapshots.
//!
//! Every replica watches everything (warm failover) and compiles the same
//! snapshot; a burst of changes is debounced into one compilation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, watch};
use weaver_crds::compiler::{Problem, Resources, compile};
use weaver_crds::{ApiKey, Channel, RoutingPolicy, Snapshot};

use crate::metrics::Metrics;

/// The watched objects.
#[derive(Clone)]
pub struct Stores {
    pub channels: Store<Channel>,
    pub api_keys: Store<ApiKey>,
    pub policies: Store<RoutingPolicy>,
    pub secrets: Store<Secret>,
}

/// A compiled snapshot, ready to send.
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: Snapshot,
    /// The snapshot as one line of the stream.
    pub line: Bytes,
    pub problems: Vec<Problem>,
    /// Each RoutingPolicy's channels, by (namespace, name).
    pub resolved: std::collections::BTreeMap<(String, String), Vec<String>>,
}

fn watch_kind<K>(client: &Client, namespace: Option<&str>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let api = match namespace {
        Some(ns) => Api::<K>::namespaced(client.clone(), ns),
        None => Api::<K>::all(client.clone()),
    };
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    reader
}

/// Starts the watches (of one namespace, or all); `changed` fires on every change.
pub fn watch_all(client: &Client, namespace: Option<&str>, changed: Arc<Notify>) -> Stores {
    Stores {
        channels: watch_kind(client, namespace, changed.clone()),
        api_keys: watch_kind(client, namespace, changed.clone()),
        policies: watch_kind(client, namespace, changed.clone()),
        secrets: watch_kind(client, namespace, changed),
    }
}

impl Stores {
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.channels.wait_until_ready().await?;
        self.api_keys.wait_until_ready().await?;
        self.policies.wait_until_ready().await?;
        self.secrets.wait_until_ready().await
    }

    fn resources(&self) -> Resources {
        fn owned<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
            v.into_iter().map(|a| (*a).clone()).collect()
        }
        Resources {
            channels: owned(self.channels.state()),
            api_keys: owned(self.api_keys.state()),
            routing_policies: owned(self.policies.state()),
            secrets: owned(self.secrets.state()),
        }
    }
}

/// Versions are milliseconds since the epoch (bumped past the previous one),
/// so they keep increasing across operator restarts and between replicas.
fn next_version(previous: u64) -> u64 {
    let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
    now.max(previous + 1)
}

/// Compiles whenever `changed` fires (debounced), publishing a new version only
/// when the snapshot or its problems differ from the last one.
pub async fn compile_loop(
    stores: Stores,
    changed: Arc<Notify>,
    replicas: watch::Receiver<u32>,
    debounce: Duration,
    metrics: Arc<Metrics>,
    publish: watch::Sender<Arc<Published>>,
) {
    if stores.wait_until_ready().await.is_err() {
        return;
    }
    let mut replicas = replicas;
    loop {
        // Let a burst settle: compile once nothing changed for `debounce`,
        // but at the latest 10 debounce windows after the first change, so a
        // steady trickle cannot postpone a snapshot forever.
        let settle_by = Instant::now() + debounce * 10;
        loop {
            let quiet = tokio::time::sleep(debounce);
            tokio::select! {
                () = quiet => break,
                () = changed.notified() => {
                    if Instant::now() >= settle_by {
                        break;
                    }
                }
            }
        }
        let started = Instant::now();
        let current = publish.borrow().clone();
        let mut compiled = compile(&stores.resources(), 0);
        compiled.snapshot.gateway_replicas = (*replicas.borrow_and_update()).max(1);
        metrics.compiles.inc();
        metrics.problems.set(i64::try_from(compiled.problems.len()).unwrap_or(i64::MAX));
        let mut previous = current.snapshot.clone();
        previous.version = 0;
        if current.line.is_empty() || previous != compiled.snapshot || current.problems != compiled.problems {
            compiled.snapshot.version = next_version(current.snapshot.version);
            match serde_json::to_vec(&compiled.snapshot) {
                Ok(mut line) => {
                    line.push(b'\n');
                    metrics.snapshot_bytes.set(i64::try_from(line.len()).unwrap_or(i64::MAX));
                    metrics.snapshot_version.set(i64::try_from(compiled.snapshot.version).unwrap_or(i64::MAX));
                    metrics.compile_seconds.observe(started.elapsed().as_secs_f64());
                    tracing::info!(
                        version = compiled.snapshot.version,
                        bytes = line.len(),
                        problems = compiled.problems.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "snapshot published"
                    );
                    publish.send_replace(Arc::new(Published {
                        snapshot: compiled.snapshot,
                        line: Bytes::from(line),
                        problems: compiled.problems,
                        resolved: compiled.resolved,
                    }));
                }
                Err(e) => tracing::error!(error = %e, "snapshot does not serialise"),
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            Ok(()) = replicas.changed() => {}
        }
    }
}
