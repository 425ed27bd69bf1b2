//! Watching the resources and compiling them into snapshots.
//!
//! Every replica watches everything (warm failover) and compiles the same
//! snapshot; a burst of changes is debounced into one compilation, and
//! changes the compiler does not read (status) compile nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, watch};
use weaver_crds::compiler::{Problem, Resources, compile};
use weaver_crds::{ApiKey, Channel, NamespacePolicy, RoutingPolicy, Snapshot};

use crate::metrics::Metrics;

/// The watched objects.
#[derive(Clone)]
pub struct Stores {
    pub channels: Store<Channel>,
    pub api_keys: Store<ApiKey>,
    pub policies: Store<RoutingPolicy>,
    pub namespace_policies: Store<NamespacePolicy>,
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
        let mut seen = Fingerprints::default();
        while let Some(event) = stream.next().await {
            match event {
                // After `reflect`: the store already holds what the event says
                // when the compiler is told.
                Ok(event) => {
                    if seen.changes_input(&event) {
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    reader
}

/// What of an object the compiler reads, hashed: its spec (through
/// `metadata.generation`, which the API server bumps on spec changes only),
/// labels (channel selectors) and annotations. `None` for kinds without a
/// generation (Secrets, whose data the compiler reads): every change of
/// theirs counts, and nothing of them needs keeping.
fn fingerprint<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().generation?;
    predicates::generation.combine(predicates::labels).combine(predicates::annotations).hash_property(obj)
}

/// The [`fingerprint`]s of one watched kind, to tell the watch events that
/// can change the snapshot from those that cannot: above all the status
/// writes of the leader itself, one per object after each new snapshot (at
/// scale, 10,000 ApiKeys' statuses take over a minute to write, and each
/// debounce window of them would otherwise cost a whole compilation).
struct Fingerprints<K: Resource> {
    seen: HashMap<ObjectRef<K>, u64>,
    /// Built during a re-list, replacing `seen` when it is done.
    relisted: HashMap<ObjectRef<K>, u64>,
}

impl<K: Resource> Default for Fingerprints<K>
where
    K::DynamicType: Eq + Hash,
{
    fn default() -> Self {
        Self { seen: HashMap::new(), relisted: HashMap::new() }
    }
}

impl<K> Fingerprints<K>
where
    K: Resource,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    /// Whether `event` may change what the compiler reads. A deletion and
    /// the end of a re-list (which may have dropped objects) always may.
    fn changes_input(&mut self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(obj) => {
                let Some(hash) = fingerprint(obj) else { return true };
                self.seen.insert(ObjectRef::from_obj(obj), hash) != Some(hash)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&ObjectRef::from_obj(obj));
                true
            }
            watcher::Event::Init => {
                self.relisted.clear();
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some(hash) = fingerprint(obj) {
                    self.relisted.insert(ObjectRef::from_obj(obj), hash);
                }
                false
            }
            watcher::Event::InitDone => {
                self.seen = std::mem::take(&mut self.relisted);
                true
            }
        }
    }
}

/// Starts the watches (of one namespace, or all); `changed` fires on every
/// change the compiler may read.
pub fn watch_all(client: &Client, namespace: Option<&str>, changed: Arc<Notify>) -> Stores {
    Stores {
        channels: watch_kind(client, namespace, changed.clone()),
        api_keys: watch_kind(client, namespace, changed.clone()),
        policies: watch_kind(client, namespace, changed.clone()),
        namespace_policies: watch_kind(client, namespace, changed.clone()),
        secrets: watch_kind(client, namespace, changed),
    }
}

impl Stores {
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.channels.wait_until_ready().await?;
        self.api_keys.wait_until_ready().await?;
        self.policies.wait_until_ready().await?;
        self.namespace_policies.wait_until_ready().await?;
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
            namespace_policies: owned(self.namespace_policies.state()),
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
/// when the snapshot or its problems differ from the last one. Every
/// snapshot names `operator_token_sha256` (see `crate::gateway`).
pub async fn compile_loop(
    stores: Stores,
    changed: Arc<Notify>,
    replicas: watch::Receiver<u32>,
    debounce: Duration,
    operator_token_sha256: Option<String>,
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
        compiled.snapshot.operator_token_sha256.clone_from(&operator_token_sha256);
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use serde_json::json;
    use weaver_crds::ApiKey;
    use weaver_crds::api_key::ApiKeyStatus;

    use super::*;

    /// ApiKey `app` as the API server sends it: `generation` counts spec
    /// changes, `resourceVersion` every write.
    fn api_key(generation: i64, resource_version: u32, labels: serde_json::Value) -> serde_json::Result<ApiKey> {
        let metadata = json!({"name": "app", "namespace": "team", "generation": generation,
            "resourceVersion": resource_version.to_string(), "labels": labels});
        let spec = json!({"allowedModels": [format!("gpt-{generation}")]});
        serde_json::from_value(json!({"apiVersion": "llmweaver.io/v1alpha1", "kind": "ApiKey",
            "metadata": metadata, "spec": spec}))
    }

    #[test]
    fn status_writes_change_nothing_the_compiler_reads() -> serde_json::Result<()> {
        let mut seen = Fingerprints::default();
        let first = api_key(1, 10, json!({}))?;
        assert!(seen.changes_input(&watcher::Event::Apply(first.clone())), "a new object");
        // The leader writes status: a new resource version, the same generation.
        let mut written = api_key(1, 11, json!({}))?;
        written.status = Some(ApiKeyStatus { key_prefix: Some("lw-abcd".into()), ..Default::default() });
        assert!(!seen.changes_input(&watcher::Event::Apply(written)), "a status write");
        assert!(seen.changes_input(&watcher::Event::Apply(api_key(2, 12, json!({}))?)), "a spec change");
        assert!(seen.changes_input(&watcher::Event::Apply(api_key(2, 13, json!({"tier": "a"}))?)), "a label");
        let mut annotated = api_key(2, 14, json!({"tier": "a"}))?;
        annotated.metadata.annotations = Some([("llmweaver.io/rotate".to_owned(), "1".to_owned())].into());
        assert!(seen.changes_input(&watcher::Event::Apply(annotated.clone())), "an annotation");
        assert!(!seen.changes_input(&watcher::Event::Apply(annotated.clone())), "the same again");

        // Deleted and created again as it was: both count.
        assert!(seen.changes_input(&watcher::Event::Delete(annotated.clone())));
        assert!(seen.changes_input(&watcher::Event::Apply(annotated.clone())));
        // A re-list may have dropped objects, so its end counts; what it
        // listed is what later events compare with.
        assert!(!seen.changes_input(&watcher::Event::Init));
        assert!(!seen.changes_input(&watcher::Event::InitApply(first.clone())));
        assert!(seen.changes_input(&watcher::Event::InitDone));
        assert!(!seen.changes_input(&watcher::Event::Apply(api_key(1, 15, json!({}))?)), "a status write");
        assert!(seen.changes_input(&watcher::Event::Apply(annotated)), "back to the annotated spec");
        Ok(())
    }

    #[test]
    fn every_secret_change_counts() {
        let secret = |resource_version: &str| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("creds".into()),
                namespace: Some("team".into()),
                resource_version: Some(resource_version.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut seen = Fingerprints::default();
        assert!(seen.changes_input(&watcher::Event::Apply(secret("1"))));
        assert!(seen.changes_input(&watcher::Event::Apply(secret("2"))), "Secrets have no generation");
    }
}
