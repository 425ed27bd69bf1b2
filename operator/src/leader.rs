//! Lease-based leader election (`coordination.k8s.io/v1` Lease).
//!
//! Every operator replica watches and compiles, so a failover is warm; only the
//! holder of the Lease writes status and Secrets. The holder advertises its URL in
//! an annotation on the Lease so the other replicas can point callers at it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease annotation holding the leader's advertised URL.
pub const LEADER_URL_ANNOTATION: &str = "llmweaver.io/leader-url";

/// How the election is run.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per replica (the pod name, usually).
    pub identity: String,
    /// How long a lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and the others poll.
    pub renew_every: Duration,
    /// Where the leader can be reached, published for the other replicas.
    pub advertise_url: Option<String>,
}

impl LeaderConfig {
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
    pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(3);

    /// A config with the default timings and no advertised URL.
    pub fn new(namespace: impl Into<String>, lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Self::DEFAULT_LEASE_DURATION,
            renew_every: Self::DEFAULT_RENEW_EVERY,
            advertise_url: None,
        }
    }
}

/// What this replica currently believes about the election.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaderState {
    pub is_leader: bool,
    /// The current holder's advertised URL (ours when we lead), if it published one.
    pub leader_url: Option<String>,
}

/// The election loop has ended, so no further changes will come.
#[derive(Debug, thiserror::Error)]
#[error("the leader election loop has stopped")]
pub struct ElectionStopped;

/// A handle on the election result; cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<LeaderState>,
    // Only `fixed` handles keep their sender here, so that `changed()` waits forever
    // instead of failing at once; for a spawned election the loop owns the sender.
    _fixed: Option<Arc<watch::Sender<LeaderState>>>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.rx.borrow().is_leader
    }

    pub fn state(&self) -> LeaderState {
        self.rx.borrow().clone()
    }

    /// Waits until the state differs from the last one this handle saw.
    pub async fn changed(&mut self) -> Result<(), ElectionStopped> {
        self.rx.changed().await.map_err(|_| ElectionStopped)
    }

    /// For tests and single-replica runs without a cluster lease.
    pub fn fixed(is_leader: bool) -> Self {
        let (tx, rx) = watch::channel(LeaderState { is_leader, leader_url: None });
        Self { rx, _fixed: Some(Arc::new(tx)) }
    }
}

/// What a replica should do with the Lease it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds a valid lease: create it, or take it over.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a valid lease.
    Wait,
}

/// Decides from the Lease as read (`None` when it does not exist) and the wall clock.
/// `default_duration` applies when the Lease carries no duration of its own.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp, default_duration: Duration) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => return Decision::Renew,
        // An empty holder is how a lease is released voluntarily.
        None | Some("") => return Decision::Acquire,
        Some(_) => {}
    }
    // A holder that never recorded a renewal cannot prove its lease is live.
    let Some(last) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Acquire;
    };
    let duration_ms = match spec.lease_duration_seconds {
        Some(secs) if secs > 0 => i64::from(secs) * 1000,
        _ => i64::try_from(default_duration.as_millis()).unwrap_or(i64::MAX),
    };
    let expires_ms = last.0.as_millisecond().saturating_add(duration_ms);
    if now.as_millisecond() >= expires_ms { Decision::Acquire } else { Decision::Wait }
}

/// The advertised URL stored on a Lease, if any.
pub fn leader_url_of(lease: &Lease) -> Option<String> {
    lease.metadata.annotations.as_ref()?.get(LEADER_URL_ANNOTATION).filter(|u| !u.is_empty()).cloned()
}

/// Spawns the election loop; returns immediately.
///
/// The loop stops by itself once every [`Leadership`] handle has been dropped.
pub fn spawn(client: kube::Client, config: LeaderConfig) -> Leadership {
    let (tx, rx) = watch::channel(LeaderState::default());
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    tokio::spawn(run(api, config, tx));
    Leadership { rx, _fixed: None }
}

/// What one tick learned.
enum Observed {
    /// We hold a freshly written lease.
    Leading,
    /// Someone else holds a valid lease.
    Following { leader_url: Option<String> },
    /// Another replica wrote the Lease between our read and our write.
    Conflict,
}

async fn run(api: Api<Lease>, config: LeaderConfig, tx: watch::Sender<LeaderState>) {
    let renew_every = config.renew_every.max(Duration::from_millis(100));
    // The monotonic instant our leadership ends unless renewed. It is measured from
    // before the renewal request was sent, so it never outlasts the lease the API
    // server recorded.
    let mut held_until: Option<Instant> = None;
    loop {
        if tx.is_closed() {
            tracing::debug!(lease = %config.lease_name, "no one watches the election any more; stopping");
            return;
        }
        let started = Instant::now();
        let next_tick = started + renew_every;
        // A hung request must not keep us leading past the expiry.
        let deadline = held_until.map_or(next_tick, |until| until.min(next_tick));
        match tokio::time::timeout_at(deadline, tick(&api, &config)).await {
            Ok(Ok(Observed::Leading)) => {
                held_until = Some(started + config.lease_duration);
                publish(&tx, &config, LeaderState { is_leader: true, leader_url: config.advertise_url.clone() });
            }
            Ok(Ok(Observed::Following { leader_url })) => {
                held_until = None;
                publish(&tx, &config, LeaderState { is_leader: false, leader_url });
            }
            Ok(Ok(Observed::Conflict)) => {
                tracing::debug!(lease = %config.lease_name, "lease changed under us; retrying next tick");
            }
            Ok(Err(error)) => {
                tracing::warn!(lease = %config.lease_name, %error, "leader election request failed");
            }
            Err(_) => {
                tracing::warn!(lease = %config.lease_name, "leader election request timed out");
            }
        }
        step_down_if_expired(&tx, &config, &mut held_until);
        let wake = held_until.map_or(next_tick, |until| until.min(next_tick));
        tokio::time::sleep_until(wake).await;
        step_down_if_expired(&tx, &config, &mut held_until);
    }
}

fn step_down_if_expired(tx: &watch::Sender<LeaderState>, config: &LeaderConfig, held_until: &mut Option<Instant>) {
    if held_until.is_some_and(|until| Instant::now() >= until) {
        *held_until = None;
        publish(tx, config, LeaderState { is_leader: false, leader_url: None });
    }
}

fn publish(tx: &watch::Sender<LeaderState>, config: &LeaderConfig, next: LeaderState) {
    tx.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        match (current.is_leader, next.is_leader) {
            (false, true) => tracing::info!(lease = %config.lease_name, identity = %config.identity, "became leader"),
            (true, false) => tracing::info!(lease = %config.lease_name, identity = %config.identity, "lost leadership"),
            _ => tracing::debug!(lease = %config.lease_name, leader_url = ?next.leader_url, "leader changed"),
        }
        *current = next;
        true
    });
}

async fn tick(api: &Api<Lease>, config: &LeaderConfig) -> Result<Observed, kube::Error> {
    let now = wall_clock_now();
    let current = api.get_opt(&config.lease_name).await?;
    let decision = decide(current.as_ref(), &config.identity, now, config.lease_duration);
    let written = match (decision, current) {
        (Decision::Wait, Some(lease)) => return Ok(Observed::Following { leader_url: leader_url_of(&lease) }),
        (Decision::Wait, None) => return Ok(Observed::Following { leader_url: None }),
        (Decision::Acquire, None) => api.create(&PostParams::default(), &new_lease(config, now)).await,
        (Decision::Acquire, Some(lease)) => {
            api.replace(&config.lease_name, &PostParams::default(), &take_over(lease, config, now)).await
        }
        (Decision::Renew, Some(lease)) => {
            api.replace(&config.lease_name, &PostParams::default(), &renew(lease, config, now)).await
        }
        // `decide` only says Renew for a Lease that exists.
        (Decision::Renew, None) => api.create(&PostParams::default(), &new_lease(config, now)).await,
    };
    match written {
        Ok(_) => Ok(Observed::Leading),
        // Both mean another replica won the race; the next read tells us who.
        Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => Ok(Observed::Conflict),
        Err(error) => Err(error),
    }
}

fn wall_clock_now() -> Timestamp {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    // A clock outside jiff's range is broken beyond repair; the epoch makes every
    // lease look live, which errs towards not taking over.
    i64::try_from(micros).ok().and_then(|m| Timestamp::from_microsecond(m).ok()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn lease_seconds(config: &LeaderConfig) -> i32 {
    let secs = config.lease_duration.as_secs_f64().ceil();
    // Clamped, so the cast cannot truncate.
    secs.clamp(1.0, f64::from(i32::MAX)) as i32
}

fn set_leader_url(meta: &mut ObjectMeta, url: Option<&String>) {
    match url {
        Some(url) => {
            meta.annotations.get_or_insert_with(BTreeMap::new).insert(LEADER_URL_ANNOTATION.to_owned(), url.clone());
        }
        // A stale URL from the previous holder would send callers to the wrong replica.
        None => {
            if let Some(annotations) = meta.annotations.as_mut() {
                annotations.remove(LEADER_URL_ANNOTATION);
            }
        }
    }
}

fn new_lease(config: &LeaderConfig, now: Timestamp) -> Lease {
    let mut metadata = ObjectMeta {
        name: Some(config.lease_name.clone()),
        namespace: Some(config.namespace.clone()),
        ..ObjectMeta::default()
    };
    set_leader_url(&mut metadata, config.advertise_url.as_ref());
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(lease_seconds(config)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// The lease as we write it to take it over; its resourceVersion is kept, so the
/// write fails with a conflict when someone else got there first.
fn take_over(mut lease: Lease, config: &LeaderConfig, now: Timestamp) -> Lease {
    set_leader_url(&mut lease.metadata, config.advertise_url.as_ref());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let had_holder = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
    let transitions = spec.lease_transitions.unwrap_or(0);
    spec.lease_transitions = Some(if had_holder { transitions.saturating_add(1) } else { transitions });
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(lease_seconds(config));
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    lease
}

fn renew(mut lease: Lease, config: &LeaderConfig, now: Timestamp) -> Lease {
    set_leader_url(&mut lease.metadata, config.advertise_url.as_ref());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.lease_duration_seconds = Some(lease_seconds(config));
    spec.renew_time = Some(MicroTime(now));
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const DEFAULT: Duration = Duration::from_secs(15);

    fn at(secs: i64) -> Timestamp {
        // Seconds around Nov 2023, well inside jiff's range.
        Timestamp::UNIX_EPOCH + jiff_secs(1_700_000_000 + secs)
    }

    fn jiff_secs(secs: i64) -> k8s_openapi::jiff::SignedDuration {
        k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta { name: Some("op".into()), resource_version: Some("7".into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                lease_duration_seconds: duration,
                lease_transitions: Some(2),
                ..Default::default()
            }),
        }
    }

    fn config() -> LeaderConfig {
        LeaderConfig { advertise_url: Some("https://10.0.0.5:8443".into()), ..LeaderConfig::new("ns", "op", "me") }
    }

    #[test]
    fn missing_lease_is_acquired() {
        assert_eq!(decide(None, "me", at(0), DEFAULT), Decision::Acquire);
        let no_spec = Lease { metadata: ObjectMeta::default(), spec: None };
        assert_eq!(decide(Some(&no_spec), "me", at(0), DEFAULT), Decision::Acquire);
    }

    #[test]
    fn own_lease_is_renewed_even_when_late() {
        assert_eq!(decide(Some(&lease(Some("me"), Some(0), Some(15))), "me", at(5), DEFAULT), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("me"), Some(0), Some(15))), "me", at(500), DEFAULT), Decision::Renew);
    }

    #[test]
    fn live_foreign_lease_is_respected_until_it_expires() {
        let l = lease(Some("other"), Some(0), Some(15));
        assert_eq!(decide(Some(&l), "me", at(0), DEFAULT), Decision::Wait);
        assert_eq!(decide(Some(&l), "me", at(14), DEFAULT), Decision::Wait);
        assert_eq!(decide(Some(&l), "me", at(15), DEFAULT), Decision::Acquire);
        assert_eq!(decide(Some(&l), "me", at(60), DEFAULT), Decision::Acquire);
    }

    #[test]
    fn lease_without_duration_uses_the_default() {
        let l = lease(Some("other"), Some(0), None);
        assert_eq!(decide(Some(&l), "me", at(14), DEFAULT), Decision::Wait);
        assert_eq!(decide(Some(&l), "me", at(15), DEFAULT), Decision::Acquire);
        assert_eq!(decide(Some(&l), "me", at(5), Duration::from_secs(3)), Decision::Acquire);
    }

    #[test]
    fn released_or_never_renewed_lease_is_acquired() {
        assert_eq!(decide(Some(&lease(None, Some(0), Some(15))), "me", at(1), DEFAULT), Decision::Acquire);
        assert_eq!(decide(Some(&lease(Some(""), Some(0), Some(15))), "me", at(1), DEFAULT), Decision::Acquire);
        assert_eq!(decide(Some(&lease(Some("other"), None, Some(15))), "me", at(1), DEFAULT), Decision::Acquire);
    }

    #[test]
    fn acquire_time_counts_when_renew_time_is_missing() {
        let mut l = lease(Some("other"), None, Some(15));
        if let Some(spec) = l.spec.as_mut() {
            spec.acquire_time = Some(MicroTime(at(0)));
        }
        assert_eq!(decide(Some(&l), "me", at(10), DEFAULT), Decision::Wait);
        assert_eq!(decide(Some(&l), "me", at(20), DEFAULT), Decision::Acquire);
    }

    #[test]
    fn take_over_keeps_resource_version_and_counts_the_transition() -> TestResult {
        let taken = take_over(lease(Some("other"), Some(0), Some(30)), &config(), at(40));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
        let spec = taken.spec.as_ref().ok_or("no spec")?;
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.renew_time, Some(MicroTime(at(40))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(40))));
        assert_eq!(leader_url_of(&taken).as_deref(), Some("https://10.0.0.5:8443"));
        // Taking a released lease is not a transition between holders.
        let released = take_over(lease(None, Some(0), Some(15)), &config(), at(40));
        assert_eq!(released.spec.ok_or("no spec")?.lease_transitions, Some(2));
        Ok(())
    }

    #[test]
    fn renew_moves_only_the_renew_time() -> TestResult {
        let mut held = lease(Some("me"), Some(0), Some(15));
        if let Some(spec) = held.spec.as_mut() {
            spec.acquire_time = Some(MicroTime(at(-100)));
        }
        let renewed = renew(held, &config(), at(3));
        let spec = renewed.spec.as_ref().ok_or("no spec")?;
        assert_eq!(spec.renew_time, Some(MicroTime(at(3))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(-100))));
        assert_eq!(spec.lease_transitions, Some(2));
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("7"));
        Ok(())
    }

    #[test]
    fn a_previous_holders_url_is_not_inherited() {
        let mut theirs = lease(Some("other"), Some(0), Some(15));
        set_leader_url(&mut theirs.metadata, Some(&"https://old:8443".to_owned()));
        assert_eq!(leader_url_of(&theirs).as_deref(), Some("https://old:8443"));
        let config = LeaderConfig::new("ns", "op", "me");
        let ours = take_over(theirs, &config, at(100));
        assert_eq!(leader_url_of(&ours), None);
    }

    #[test]
    fn new_lease_starts_at_zero_transitions() -> TestResult {
        let created = new_lease(&config(), at(0));
        let spec = created.spec.as_ref().ok_or("no spec")?;
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(decide(Some(&created), "someone-else", at(14), DEFAULT), Decision::Wait);
        Ok(())
    }

    #[test]
    fn sub_second_durations_round_up() {
        let config = LeaderConfig { lease_duration: Duration::from_millis(1500), ..config() };
        assert_eq!(lease_seconds(&config), 2);
        let config = LeaderConfig { lease_duration: Duration::ZERO, ..config };
        assert_eq!(lease_seconds(&config), 1);
    }

    #[tokio::test]
    async fn fixed_leadership_reports_and_never_changes() {
        let mut leader = Leadership::fixed(true);
        assert!(leader.is_leader());
        assert_eq!(leader.state(), LeaderState { is_leader: true, leader_url: None });
        assert!(!Leadership::fixed(false).is_leader());
        let waited = tokio::time::timeout(Duration::from_millis(20), leader.changed()).await;
        assert!(waited.is_err(), "a fixed leadership must not report changes");
    }
}
