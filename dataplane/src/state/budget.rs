//! Budgets on the request path: a request reserves its maximum cost from the
//! local slice of its key's budget and of its namespace's (a NamespacePolicy's,
//! shared by every key of the namespace), and settles its actual cost into
//! both when it ends; each slice is leased from the ledger
//! (`weaver_store::ledger`) by a background sync, so no request waits on a
//! database while the slices last. Key and namespace budgets are the same
//! [`BudgetState`], only their ledger id differs ([`BudgetRef::id`]).
//!
//! Per budget, `available` is what may be reserved now: the slice, less what is
//! reserved by requests in flight, less what was spent since the last sync. It
//! is one atomic, so a reservation is a compare-and-swap and no lock is shared
//! between requests. The sync (one at a time per key, under `lease`) settles the
//! spend, renews the slice before it expires, tops it up towards what the key
//! spends, and gives back what an idle key holds. Amounts are nano-dollars,
//! instants unix milliseconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use weaver_crds::snapshot::BudgetSnapshot;
use weaver_store::ledger::{Account, BudgetId, LedgerTotals, SyncRequest, SyncView};
use weaver_store::{Scope, Store, StoreError};

use super::Gateway;
use crate::clock::unix_millis;
use crate::metering::Label;

/// How long a slice stays a replica's without a sync.
pub(crate) const LEASE_TTL_MS: i64 = 30_000;
/// Reservations stop this long before the slice expires, so a replica whose
/// syncs fail never spends a slice the ledger may already have handed on
/// (clock skew between replicas must stay below it).
const EXPIRY_MARGIN_MS: i64 = 10_000;

/// Where slices come from, for this replica.
pub(crate) struct Ledger {
    backend: Backend,
    /// This replica's name in the ledger's leases.
    replica: String,
}

/// The shared ledger in the usage store, or — without a store — one in
/// process (the budget then holds for this replica only).
enum Backend {
    Store(Store),
    Local(Mutex<HashMap<BudgetId, Account>>),
}

impl Ledger {
    /// Leases from `store`'s ledger, or from one in process without a store.
    pub fn new(store: Option<Store>, replica: String) -> Ledger {
        let backend = store.map_or_else(|| Backend::Local(Mutex::default()), Backend::Store);
        Ledger { backend, replica }
    }

    /// The ledger's totals for budget `id` (zeros before any replica used it).
    pub async fn totals(&self, id: &BudgetId) -> Result<LedgerTotals, StoreError> {
        match &self.backend {
            Backend::Store(store) => Ok(store.budget_totals(id).await?.unwrap_or_default()),
            Backend::Local(accounts) => {
                let accounts = accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(accounts.get(id).map(Account::totals).unwrap_or_default())
            }
        }
    }

    async fn sync(&self, id: &BudgetId, request: &SyncRequest) -> Result<SyncView, StoreError> {
        match &self.backend {
            Backend::Store(store) => store.sync_budget(id, request).await,
            Backend::Local(accounts) => {
                let mut accounts = accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(accounts.entry(id.clone()).or_default().sync(request))
            }
        }
    }
}

/// The lease as the last sync left it; only the party holding the lock syncs.
#[derive(Debug, Default)]
struct Lease {
    /// The period the slice belongs to (start, unix ms); `None` before the first sync.
    period_ms: Option<i64>,
    /// The slice the ledger granted this replica.
    slice: u64,
}

/// One key's budget state on this replica; lives in the registry, so it
/// survives snapshot swaps (a changed budget applies at the next sync).
#[derive(Debug, Default)]
pub(crate) struct BudgetState {
    /// What may be reserved now; below zero when requests cost more than they
    /// reserved (then nothing is reserved until a sync covers it).
    available: AtomicI64,
    /// Spent since the last sync.
    spent: AtomicU64,
    /// Reserved by requests in flight.
    reserved: AtomicU64,
    /// The largest reservation asked for since the last sync (slice sizing).
    largest: AtomicU64,
    /// Reservations are taken only before this instant (unix ms).
    valid_until: AtomicI64,
    /// Until this instant (unix ms) a request the slice cannot cover, reserving
    /// at least `refused_from`, is refused without asking the ledger again: it
    /// just said the budget cannot cover that much.
    spent_until: AtomicI64,
    refused_from: AtomicU64,
    lease: tokio::sync::Mutex<Lease>,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl BudgetState {
    /// Reserves `amount` from the local slice; false when the slice (or its
    /// validity) does not cover it — then a sync may top it up.
    pub fn try_reserve(&self, amount: u64, now_ms: i64) -> bool {
        self.largest.fetch_max(amount, Ordering::Relaxed);
        now_ms < self.valid_until.load(Ordering::Acquire) && self.add_available(0, Some(amount))
    }

    /// Whether the ledger said lately that the budget cannot cover `amount`.
    pub fn recently_refused(&self, amount: u64, now_ms: i64) -> bool {
        now_ms < self.spent_until.load(Ordering::Relaxed) && amount >= self.refused_from.load(Ordering::Relaxed)
    }

    /// Remembers for `for_ms` that the budget could not cover `amount`, so
    /// refusals of as much or more do not each cost a ledger call (smaller
    /// requests still ask).
    pub fn mark_refused(&self, amount: u64, now_ms: i64, for_ms: i64) {
        if now_ms >= self.spent_until.swap(now_ms + for_ms, Ordering::Relaxed) {
            self.refused_from.store(amount, Ordering::Relaxed);
        } else {
            self.refused_from.fetch_min(amount, Ordering::Relaxed);
        }
    }

    /// Ends a reservation of `reserved` that cost `cost`: the rest becomes
    /// available again, the cost is settled at the next sync.
    pub fn settle(&self, reserved: u64, cost: u64) {
        self.spent.fetch_add(cost, Ordering::AcqRel);
        self.reserved.fetch_sub(reserved, Ordering::AcqRel);
        self.available.fetch_add(signed(reserved) - signed(cost), Ordering::AcqRel);
    }

    /// Nano-dollars reserved by requests in flight on this replica.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// What may be reserved now, and what is reserved by requests in flight.
    #[cfg(test)]
    pub fn local(&self) -> (i64, u64) {
        (self.available.load(Ordering::Acquire), self.reserved.load(Ordering::Acquire))
    }

    /// Whether the background sync should call the ledger: spend to settle, or
    /// a slice to renew before it lapses (halfway through its validity). A key
    /// that runs short between syncs tops up on the request path instead.
    pub fn needs_sync(&self, now_ms: i64) -> bool {
        let valid_until = self.valid_until.load(Ordering::Relaxed);
        let holds_slice = self.available.load(Ordering::Relaxed) > 0 || self.reserved.load(Ordering::Relaxed) > 0;
        self.spent.load(Ordering::Relaxed) > 0
            || (holds_slice && valid_until - now_ms < (LEASE_TTL_MS - EXPIRY_MARGIN_MS) / 2)
    }

    /// Whether this replica has spend to settle or holds any slice.
    pub fn holds_any(&self) -> bool {
        self.spent.load(Ordering::Relaxed) > 0
            || self.available.load(Ordering::Relaxed) != 0
            || self.reserved.load(Ordering::Relaxed) > 0
    }

    /// Calls the ledger once for this key: settles the spend, gives back or
    /// asks for slice so that about `target` is available (at least `need`,
    /// which is then reserved for the caller), renews the lease; true when
    /// `need` is reserved (the caller settles it like any reservation). On a
    /// new period, the old period's slice is given back first. On failure
    /// the local state is as before (nothing is lost: the spend is settled by
    /// the next successful sync).
    pub async fn sync(&self, ledger: &Ledger, id: &BudgetId, sync: &Sync) -> Result<bool, StoreError> {
        let mut lease = self.lease.lock().await;
        let spent = self.spent.swap(0, Ordering::AcqRel);
        let restore = |release: u64| {
            self.spent.fetch_add(spent, Ordering::AcqRel);
            self.available.fetch_add(signed(release), Ordering::AcqRel);
        };
        let largest = self.largest.swap(0, Ordering::Relaxed);
        if let Some(old) = lease.period_ms.filter(|p| *p != id.period_ms) {
            // The period rolled over: settle and give back everything of the old
            // one; reservations still running settle into the new period.
            let old_id = BudgetId { period_ms: old, ..id.clone() };
            let release = lease.slice.saturating_sub(spent);
            if let Err(e) = ledger.sync(&old_id, &sync.request(&ledger.replica, spent, release, 0)).await {
                restore(0);
                return Err(e);
            }
            self.available.fetch_sub(signed(release), Ordering::AcqRel);
            *lease = Lease::default();
            let target = if sync.give_back { 0 } else { sync.target(0, largest) };
            return self.grant(&mut lease, ledger, id, sync, (0, 0), target).await;
        }
        let target = if sync.give_back { 0 } else { sync.target(spent, largest) };
        // Give back only what exceeds the target, and take it out of reach first.
        let release = u64::try_from(self.available.load(Ordering::Acquire) - signed(target)).unwrap_or(0);
        if release > 0 {
            self.available.fetch_sub(signed(release), Ordering::AcqRel);
        }
        let granted = self.grant(&mut lease, ledger, id, sync, (spent, release), target).await;
        if granted.is_err() {
            restore(release);
        }
        granted
    }

    /// The ledger call proper: settles `spent`, gives back `release` (already
    /// out of `available`), asks for what brings `available` to `target`, and
    /// reserves `sync.need` for the caller out of the result.
    async fn grant(
        &self,
        lease: &mut Lease,
        ledger: &Ledger,
        id: &BudgetId,
        sync: &Sync,
        (spent, release): (u64, u64),
        target: u64,
    ) -> Result<bool, StoreError> {
        let available = self.available.load(Ordering::Acquire);
        // A caller's `need` is asked for even when `available` seems to cover
        // it: requests reserving while the ledger answers may take that.
        let want = u64::try_from(signed(target.max(sync.need)) - available).unwrap_or(0).max(sync.need);
        let view = ledger.sync(id, &sync.request(&ledger.replica, spent, release, want)).await?;
        // What the slice should be if the ledger kept ours; less when it had
        // expired (the ledger handed it on), so take the difference back.
        let expected = lease.slice.saturating_sub(spent).saturating_sub(release) + view.granted_nanos;
        let correction = signed(view.slice_nanos) - signed(expected);
        lease.slice = view.slice_nanos;
        lease.period_ms = Some(id.period_ms);
        let valid_until = view.expires_ms - EXPIRY_MARGIN_MS;
        self.valid_until.store(valid_until, Ordering::Release);
        let need = (sync.need > 0 && sync.now_ms < valid_until).then_some(sync.need);
        Ok(self.add_available(signed(view.granted_nanos) + correction, need))
    }

    /// Adds `delta` to what is available and, when the sum covers `need`,
    /// reserves `need` out of it in the same compare-and-swap (true then). A
    /// sync passes its caller's need: the request that waited on it gets what
    /// it brought, rather than losing it to requests that reserve in between
    /// and being refused by a budget with room left.
    fn add_available(&self, delta: i64, need: Option<u64>) -> bool {
        let mut current = self.available.load(Ordering::Acquire);
        loop {
            let total = current.saturating_add(delta);
            let take = need.is_some_and(|n| total >= signed(n));
            let next = if take { total - need.map_or(0, signed) } else { total };
            // Nothing to write when the sum stays (a reservation that does not
            // fit, or one that takes exactly what was added).
            let written = next == current
                || self
                    .available
                    .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
                    .map_err(|seen| current = seen)
                    .is_ok();
            if written {
                if let Some(n) = need.filter(|_| take) {
                    self.reserved.fetch_add(n, Ordering::Relaxed);
                }
                return take;
            }
        }
    }
}

/// Why a budget did not cover a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shortfall {
    /// Spent, or held by requests in flight (here or on other replicas).
    Exceeded,
    /// This replica's slice cannot cover it and the ledger could not be asked
    /// (the usage store is unreachable or too slow): whether the budget could
    /// is unknown.
    Unavailable,
}

/// After the ledger could not cover a request, how long further requests as
/// large that the slice cannot cover are refused without asking it again.
const REFUSAL_BACKOFF_MS: i64 = 100;

/// One budget of the live runtime: a key's own or its namespace's.
#[derive(Clone, Copy)]
pub(crate) struct BudgetRef<'a> {
    /// This replica's slice of it (in the registry).
    pub state: &'a BudgetState,
    pub budget: &'a BudgetSnapshot,
    pub namespace: &'a Label,
    /// The key's name; `None` for the namespace's budget.
    pub key: Option<&'a Label>,
}

impl BudgetRef<'_> {
    /// The ledger's id of this budget in the period holding `now_ms`.
    pub fn id(&self, now_ms: i64) -> BudgetId {
        let scope = match self.key {
            Some(name) => Scope::key(self.namespace.as_str(), name.as_str()),
            None => Scope::namespace(self.namespace.as_str()),
        };
        BudgetId::new(scope, self.budget.period, now_ms)
    }

    /// Reserves `amount` nano-dollars from the local slice, topping it up
    /// from the ledger when it is short (the only time a request waits on
    /// the ledger). When the budget cannot cover it, what this replica holds
    /// is given back, so leftovers scattered over replicas can serve the next
    /// request elsewhere, and requests as large are refused for a moment
    /// without asking the ledger again.
    pub async fn reserve(&self, ledger: &Ledger, amount: u64, now_ms: i64, replicas: u32) -> Result<(), Shortfall> {
        let state = self.state;
        if state.try_reserve(amount, now_ms) {
            return Ok(());
        }
        if state.recently_refused(amount, now_ms) {
            return Err(Shortfall::Exceeded);
        }
        let mut sync = Sync { limit_nanos: self.budget.amount.0, now_ms, need: amount, replicas, give_back: false };
        let id = self.id(now_ms);
        let unreachable = match state.sync(ledger, &id, &sync).await {
            Ok(true) => return Ok(()),
            Ok(_) => false,
            Err(err) => {
                tracing::warn!(category = err.category(), %err, "budget ledger unreachable; the request cannot be covered");
                true
            }
        };
        // Requests that ended meanwhile may have freed enough.
        if state.try_reserve(amount, now_ms) {
            return Ok(());
        }
        if unreachable {
            return Err(Shortfall::Unavailable);
        }
        sync.give_back = true;
        sync.need = 0;
        if let Err(err) = state.sync(ledger, &id, &sync).await {
            tracing::debug!(category = err.category(), %err, "budget slice not given back");
        }
        state.mark_refused(amount, now_ms, REFUSAL_BACKOFF_MS);
        Err(Shortfall::Exceeded)
    }
}

/// Reserves `amount` from each budget present, in order (a key's own, then
/// its namespace's). When one cannot cover it, the reservations already taken
/// are given back and that budget (its position in `budgets`) is the error:
/// a request holds all of its budgets or none.
pub(crate) async fn reserve_each(
    budgets: &[Option<BudgetRef<'_>>],
    ledger: &Ledger,
    amount: u64,
    now_ms: i64,
    replicas: u32,
) -> Result<(), (usize, Shortfall)> {
    for (i, budget) in budgets.iter().enumerate() {
        let Some(budget) = budget else { continue };
        if let Err(shortfall) = budget.reserve(ledger, amount, now_ms, replicas).await {
            release_each(&budgets[..i], amount);
            return Err((i, shortfall));
        }
    }
    Ok(())
}

/// [`reserve_each`] from the local slices alone, without waiting on the
/// ledger: true when every budget present covered `amount`, else nothing is
/// held.
pub(crate) fn try_reserve_each(budgets: &[Option<BudgetRef<'_>>], amount: u64, now_ms: i64) -> bool {
    for (i, budget) in budgets.iter().enumerate() {
        if budget.is_some_and(|b| !b.state.try_reserve(amount, now_ms)) {
            release_each(&budgets[..i], amount);
            return false;
        }
    }
    true
}

/// Gives back a reservation of `amount` that cost nothing, in each budget present.
pub(crate) fn release_each(budgets: &[Option<BudgetRef<'_>>], amount: u64) {
    for taken in budgets.iter().flatten() {
        taken.state.settle(amount, 0);
    }
}

/// How often the background sync looks at every budget.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Budgets synced at once (each sync is one ledger transaction).
const SYNC_CONCURRENCY: usize = 8;

/// Settles spend and renews slices of every key and namespace budget, each
/// second, until `stop` resolves; then settles, once more, what this replica
/// spent and gives back every slice it holds, so a replica that shuts down (a
/// rolling update) leaves no spend unsettled and no slice idle until it
/// expires. A round under way when `stop` resolves finishes first: a ledger
/// transaction cut off would lose the spend it settles.
pub(crate) async fn run_sync(gw: Arc<Gateway>, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => sync_round(&gw, false).await,
            () = &mut stop => break,
        }
    }
    sync_round(&gw, true).await;
}

/// One ledger call for each budget that needs one (`last`: each that holds
/// spend or slice, giving the slice back).
async fn sync_round(gw: &Gateway, last: bool) {
    let rt = gw.live();
    let now_ms = unix_millis();
    let due = rt.budgets().filter(|b| if last { b.state.holds_any() } else { b.state.needs_sync(now_ms) });
    futures_util::stream::iter(due)
        .for_each_concurrent(SYNC_CONCURRENCY, |b| {
            let replicas = rt.snapshot.gateway_replicas;
            async move {
                let sync = Sync { limit_nanos: b.budget.amount.0, now_ms, need: 0, replicas, give_back: last };
                if let Err(err) = b.state.sync(&gw.ledger, &b.id(now_ms), &sync).await {
                    tracing::warn!(namespace = b.namespace.as_str(), key = b.key.map_or("", Label::as_str),
                        category = err.category(), %err, "budget ledger sync failed; spend stays local until the next one");
                }
            }
        })
        .await;
}

/// The parameters of one sync.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sync {
    pub limit_nanos: u64,
    pub now_ms: i64,
    /// Available wanted at least (a request waiting on this sync).
    pub need: u64,
    /// Gateway replicas sharing the budget.
    pub replicas: u32,
    /// Give back everything not reserved: this replica could not cover a
    /// request, and what it holds may complete another replica's slice (near
    /// a budget's end, leftovers scattered over replicas would otherwise each
    /// be too small for any request).
    pub give_back: bool,
}

impl Sync {
    fn request(&self, replica: &str, spent: u64, release: u64, want: u64) -> SyncRequest {
        SyncRequest {
            limit_nanos: self.limit_nanos,
            replica: replica.to_owned(),
            spent_nanos: spent,
            release_nanos: release,
            want_nanos: want,
            now_ms: self.now_ms,
            ttl_ms: LEASE_TTL_MS,
        }
    }

    /// How much to keep available: what the key spent over the last sync
    /// interval, twice (so the background sync tops up before it runs dry), and
    /// room for four of its largest reservations, but never more than a fair
    /// share of the budget, so other replicas are not starved near its end.
    fn target(&self, recent_spend: u64, largest: u64) -> u64 {
        let share = self.limit_nanos / (4 * u64::from(self.replicas.max(1)));
        recent_spend.saturating_mul(2).max(largest.saturating_mul(4)).min(share.max(largest))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn id() -> BudgetId {
        BudgetId { scope: Scope::key("team-a", "checkout"), period_ms: 0 }
    }

    fn sync(limit: u64, now_ms: i64, need: u64) -> Sync {
        Sync { limit_nanos: limit, now_ms, need, replicas: 1, give_back: false }
    }

    #[tokio::test]
    async fn reservations_come_from_the_slice_and_settle_into_the_ledger() {
        let ledger = Ledger::new(None, "r0".into());
        let state = BudgetState::default();
        assert!(!state.try_reserve(100, 0), "no slice before the first sync");
        assert!(
            state.sync(&ledger, &id(), &sync(1_000, 0, 100)).await.unwrap(),
            "the sync reserved what its caller needs"
        );
        assert_eq!(state.local(), (150, 100));
        assert!(state.try_reserve(150, 1));
        // The slice: four of the largest reservation, at most a quarter of the budget.
        assert!(!state.try_reserve(1, 1), "only what the slice holds");
        state.settle(100, 40);
        state.settle(150, 150);
        assert_eq!(state.local().1, 0);
        state.sync(&ledger, &id(), &sync(1_000, 2, 0)).await.unwrap();
        let totals = ledger.totals(&id()).await.unwrap();
        assert_eq!(totals.settled_nanos, 190, "exactly what the requests cost");
        assert!(totals.settled_nanos + totals.leased_nanos <= 1_000);
    }

    #[tokio::test]
    async fn the_budget_refuses_once_spent_and_a_new_period_starts_over() {
        let ledger = Ledger::new(None, "r0".into());
        let state = BudgetState::default();
        let mut spent = 0;
        for now in 0..100 {
            if !state.try_reserve(60, now) && !state.sync(&ledger, &id(), &sync(1_000, now, 60)).await.unwrap() {
                break;
            }
            state.settle(60, 50);
            spent += 50;
        }
        assert!((940..=1_000).contains(&spent), "used to the last reservation that fits: {spent}");
        state.sync(&ledger, &id(), &sync(1_000, 200, 0)).await.unwrap();
        assert_eq!(ledger.totals(&id()).await.unwrap().settled_nanos, spent);
        let next = BudgetId { period_ms: 86_400_000, ..id() };
        assert!(state.sync(&ledger, &next, &sync(1_000, 300, 60)).await.unwrap(), "a new period has its whole budget");
    }

    #[tokio::test]
    async fn a_slice_past_its_validity_is_not_spent() {
        let ledger = Ledger::new(None, "r0".into());
        let state = BudgetState::default();
        assert!(state.sync(&ledger, &id(), &sync(1_000, 0, 100)).await.unwrap());
        assert_eq!(state.local(), (0, 100), "the grant is exactly the reservation: held, nothing left over");
        state.settle(100, 0);
        assert!(state.try_reserve(10, LEASE_TTL_MS - EXPIRY_MARGIN_MS - 1));
        assert!(!state.try_reserve(10, LEASE_TTL_MS - EXPIRY_MARGIN_MS), "too close to the lease's expiry");
    }

    /// Many requests at once on a key whose budget has plenty left: each
    /// slice runs short often, and requests reserve while others' syncs wait
    /// on the ledger (a real one, SQLite); none is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_budget_with_room_refuses_no_request_under_contention() {
        use weaver_store::UsageStore as _;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("usage.db").display());
        let store = Store::connect(&url, weaver_store::StoreOptions::default()).unwrap();
        store.migrate().await.unwrap();
        let ledger = Arc::new(Ledger::new(Some(store), "r0".into()));
        let state = Arc::new(BudgetState::default());
        let budget = BudgetSnapshot {
            amount: weaver_crds::money::Usd(u64::MAX / 4),
            period: weaver_crds::api_key::BudgetPeriod::Total,
            reserve_output_tokens: None,
        };
        let (name, namespace) = (Label::new("checkout"), Label::new("team-a"));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (ledger, state, budget, name, namespace) =
                    (ledger.clone(), state.clone(), budget, name.clone(), namespace.clone());
                tokio::spawn(async move {
                    let key = BudgetRef { state: &state, budget: &budget, namespace: &namespace, key: Some(&name) };
                    let mut refused = 0;
                    for i in 0..300 {
                        match key.reserve(&ledger, 100 + i % 7, 0, 1).await {
                            Ok(()) => state.settle(100 + i % 7, 90),
                            Err(_) => refused += 1,
                        }
                        tokio::task::yield_now().await;
                    }
                    refused
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 0, "requests refused by a budget with room");
        }
    }

    #[tokio::test]
    async fn a_slice_the_ledger_cannot_top_up_is_unavailable_not_exceeded() {
        // Nothing listens on port 1: every ledger call fails at once.
        let options =
            weaver_store::StoreOptions { acquire_timeout: std::time::Duration::from_millis(200), ..Default::default() };
        let store = Store::connect("postgres://weaver@127.0.0.1:1/weaver", options).unwrap();
        let ledger = Ledger::new(Some(store), "r0".into());
        let (state, name, namespace) = (BudgetState::default(), Label::new("checkout"), Label::new("team-a"));
        let budget = BudgetSnapshot {
            amount: weaver_crds::money::Usd(1_000),
            period: weaver_crds::api_key::BudgetPeriod::Total,
            reserve_output_tokens: None,
        };
        let key = BudgetRef { state: &state, budget: &budget, namespace: &namespace, key: Some(&name) };
        assert_eq!(key.reserve(&ledger, 100, 0, 1).await, Err(Shortfall::Unavailable));
        assert_eq!(state.local(), (0, 0), "nothing held");
        assert_eq!(
            key.reserve(&ledger, 100, 1, 1).await,
            Err(Shortfall::Unavailable),
            "asked again: no refusal remembered"
        );
    }

    mod shared_with_a_namespace {
        use proptest::prelude::*;
        use weaver_crds::api_key::BudgetPeriod;
        use weaver_crds::money::Usd;

        use super::*;

        const KEYS: usize = 3;
        /// Each key's own budget is larger than the namespace's share of it:
        /// the namespace's budget is what runs out.
        const KEY_LIMIT: u64 = 1_500;
        const NAMESPACE_LIMIT: u64 = 2_000;

        #[derive(Clone, Debug)]
        enum Op {
            /// Key `k` admits a request of `amount` (from both budgets or neither).
            Reserve { k: usize, amount: u64 },
            /// The oldest request in flight ends, costing `share`% of its reservation.
            Finish { share: u64 },
            /// The background sync runs.
            Sync,
            /// Time passes (less than a lease).
            Wait { ms: i64 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..KEYS, 1..300u64).prop_map(|(k, amount)| Op::Reserve { k, amount }),
                3 => (0..=100u64).prop_map(|share| Op::Finish { share }),
                1 => Just(Op::Sync),
                1 => (0..5_000i64).prop_map(|ms| Op::Wait { ms }),
            ]
        }

        struct Bed {
            ledger: Ledger,
            namespace: Label,
            names: Vec<Label>,
            key_budget: BudgetSnapshot,
            namespace_budget: BudgetSnapshot,
            keys: Vec<BudgetState>,
            shared: BudgetState,
        }

        impl Bed {
            fn new() -> Self {
                let budget =
                    |n| BudgetSnapshot { amount: Usd(n), period: BudgetPeriod::Total, reserve_output_tokens: None };
                Bed {
                    ledger: Ledger::new(None, "r0".into()),
                    namespace: Label::new("team-a"),
                    names: (0..KEYS).map(|k| Label::new(&format!("key-{k}"))).collect(),
                    key_budget: budget(KEY_LIMIT),
                    namespace_budget: budget(NAMESPACE_LIMIT),
                    keys: (0..KEYS).map(|_| BudgetState::default()).collect(),
                    shared: BudgetState::default(),
                }
            }

            fn own(&self, k: usize) -> BudgetRef<'_> {
                BudgetRef {
                    state: &self.keys[k],
                    budget: &self.key_budget,
                    namespace: &self.namespace,
                    key: Some(&self.names[k]),
                }
            }

            fn shared(&self) -> BudgetRef<'_> {
                BudgetRef { state: &self.shared, budget: &self.namespace_budget, namespace: &self.namespace, key: None }
            }

            /// What the gateway's background sync does.
            async fn sync_all(&self, now_ms: i64) {
                for b in (0..KEYS).map(|k| self.own(k)).chain([self.shared()]) {
                    if b.state.needs_sync(now_ms) {
                        let sync =
                            Sync { limit_nanos: b.budget.amount.0, now_ms, need: 0, replicas: 1, give_back: false };
                        b.state.sync(&self.ledger, &b.id(now_ms), &sync).await.unwrap();
                    }
                }
            }

            async fn settled(&self, b: BudgetRef<'_>) -> u64 {
                self.ledger.totals(&b.id(0)).await.unwrap().settled_nanos
            }
        }

        proptest! {
            /// Keys that each reserve from their own budget and from their
            /// namespace's never overspend either, whatever the interleaving,
            /// and settle into both exactly what their requests cost.
            #[test]
            fn neither_budget_is_overspent(ops in proptest::collection::vec(op(), 1..200)) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let bed = Bed::new();
                    let mut now = 0i64;
                    let mut in_flight: Vec<(usize, u64)> = Vec::new();
                    let mut spent = [0u64; KEYS];
                    for op in ops {
                        match op {
                            Op::Reserve { k, amount } => {
                                let budgets = [Some(bed.own(k)), Some(bed.shared())];
                                if reserve_each(&budgets, &bed.ledger, amount, now, 1).await.is_ok() {
                                    in_flight.push((k, amount));
                                }
                            }
                            Op::Finish { share } => {
                                if !in_flight.is_empty() {
                                    let (k, reserved) = in_flight.remove(0);
                                    let cost = reserved * share / 100;
                                    bed.own(k).state.settle(reserved, cost);
                                    bed.shared().state.settle(reserved, cost);
                                    spent[k] += cost;
                                }
                            }
                            Op::Sync => bed.sync_all(now).await,
                            Op::Wait { ms } => {
                                // The sync runs every second while time passes.
                                for _ in 0..ms / 1_000 {
                                    now += 1_000;
                                    bed.sync_all(now).await;
                                }
                                now += ms % 1_000;
                            }
                        }
                        prop_assert!(spent.iter().sum::<u64>() <= NAMESPACE_LIMIT, "namespace overspent: {spent:?}");
                        prop_assert!(spent.iter().all(|s| *s <= KEY_LIMIT), "a key overspent: {spent:?}");
                    }
                    for (k, reserved) in in_flight.drain(..) {
                        bed.own(k).state.settle(reserved, 0);
                        bed.shared().state.settle(reserved, 0);
                    }
                    bed.sync_all(now).await;
                    prop_assert_eq!(bed.settled(bed.shared()).await, spent.iter().sum::<u64>());
                    for (k, s) in spent.iter().enumerate() {
                        prop_assert_eq!(bed.settled(bed.own(k)).await, *s);
                    }
                    Ok(())
                })?;
            }
        }

        #[tokio::test]
        async fn the_namespace_refuses_once_its_keys_together_spent_it() {
            let bed = Bed::new();
            let mut spent = 0;
            for i in 0..100u64 {
                let k = (i % KEYS as u64) as usize;
                let budgets = [Some(bed.own(k)), Some(bed.shared())];
                match reserve_each(&budgets, &bed.ledger, 60, i as i64, 1).await {
                    Ok(()) => {
                        bed.own(k).state.settle(60, 50);
                        bed.shared().state.settle(60, 50);
                        spent += 50;
                    }
                    Err((refused, shortfall)) => {
                        assert_eq!(
                            (refused, shortfall),
                            (1, Shortfall::Exceeded),
                            "the namespace's budget refuses, not the key's"
                        );
                        assert_eq!(bed.own(k).state.local().1, 0, "the key's reservation was given back");
                        break;
                    }
                }
            }
            // Each key alone could have spent 1,500; together they stop near 2,000.
            assert!((1_900..=NAMESPACE_LIMIT).contains(&spent), "spent {spent}");
            bed.sync_all(1_000).await;
            assert_eq!(bed.settled(bed.shared()).await, spent);
        }
    }
}
