//! The budget ledger: how replicas share one budget without a database round trip
//! per request.
//!
//! A budget is an ApiKey's or a namespace's ([`Scope`]); both go through the
//! same code and tables (a namespace's row has the key name `""`).
//!
//! Per budget and period the ledger holds the limit, the spend replicas settled, and
//! leases: slices of what is left, one per replica. A replica spends from its slice
//! locally (reserve before a request, settle after) and calls [`Store::sync_budget`]
//! now and then — one transaction that settles what it spent, gives back what it
//! does not need, reclaims the slices of replicas whose lease expired, and grants a
//! new slice from what is left. Slices are granted only from `limit - settled -
//! leased`, so as long as replicas spend only from their own unexpired slice,
//! settled spend never exceeds the limit. The accounting is the pure
//! [`Account::sync`], property-tested; the stores only load and save it.
//!
//! Amounts are nano-dollars; instants unix milliseconds (the caller's clock).

use std::collections::BTreeMap;

use sqlx::Row as _;
use weaver_crds::api_key::BudgetPeriod;
use weaver_crds::budget::period_start;

use crate::{Scope, Store, StoreError, UsageStore as _};

/// Which budget: an ApiKey's or a namespace's, in the period starting at
/// `period_ms` (unix ms; 0 for a budget that never resets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetId {
    pub scope: Scope,
    pub period_ms: i64,
}

impl BudgetId {
    /// A budget of `period` (its `scope`'s), in the period holding `now_ms`
    /// (unix ms; periods on the UTC calendar). The gateways that enforce a
    /// budget and everything that reads it (the usage API) name the ledger
    /// row alike through this.
    pub fn new(scope: Scope, period: BudgetPeriod, now_ms: i64) -> BudgetId {
        BudgetId { scope, period_ms: period_start(Some(period), now_ms.div_euclid(1000)).saturating_mul(1000) }
    }

    /// ApiKey `namespace/name`'s budget (see [`BudgetId::new`]).
    pub fn key(namespace: &str, name: &str, period: BudgetPeriod, now_ms: i64) -> BudgetId {
        BudgetId::new(Scope::key(namespace, name), period, now_ms)
    }

    /// The ledger's key columns: namespace, and the key's name (`""` for a
    /// namespace's budget; no ApiKey can be named `""`).
    fn columns(&self) -> (&str, &str) {
        (self.scope.namespace_name(), self.scope.key_name().unwrap_or(""))
    }
}

/// One replica's call to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// The limit in force (a changed budget takes effect with the next call).
    pub limit_nanos: u64,
    /// The calling replica.
    pub replica: String,
    /// Spent from this replica's slice since its last call: moves from leased to settled.
    pub spent_nanos: u64,
    /// Unspent slice to give back.
    pub release_nanos: u64,
    /// More slice wanted (granted as far as what is left allows).
    pub want_nanos: u64,
    pub now_ms: i64,
    /// How long the slice stays this replica's without another call.
    pub ttl_ms: i64,
}

/// What the ledger says after a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncView {
    /// Newly granted by this call.
    pub granted_nanos: u64,
    /// This replica's whole slice now (what it may spend beyond what it settled).
    pub slice_nanos: u64,
    /// When the slice expires unless renewed, unix ms.
    pub expires_ms: i64,
    pub totals: LedgerTotals,
}

/// A budget's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub limit_nanos: u64,
    pub settled_nanos: u64,
    /// Held by replicas as slices, not spent yet (as far as the ledger knows).
    pub leased_nanos: u64,
}

impl LedgerTotals {
    /// What no replica holds and nobody spent.
    pub fn unleased_nanos(&self) -> u64 {
        self.limit_nanos.saturating_sub(self.settled_nanos).saturating_sub(self.leased_nanos)
    }
}

/// A replica's slice as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub granted_nanos: u64,
    pub expires_ms: i64,
}

/// One budget's state: the pure accounting the stores persist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub limit_nanos: u64,
    pub settled_nanos: u64,
    /// By replica.
    pub leases: BTreeMap<String, Lease>,
}

impl Account {
    pub fn totals(&self) -> LedgerTotals {
        LedgerTotals {
            limit_nanos: self.limit_nanos,
            settled_nanos: self.settled_nanos,
            leased_nanos: self.leases.values().map(|l| l.granted_nanos).sum(),
        }
    }

    /// Applies one replica's call, in this order: the limit in force; other
    /// slices past their expiry return to the budget; what the caller spent is
    /// settled (from its slice; spend beyond the slice — after the slice expired
    /// under it — is settled all the same, because it happened); the caller's
    /// release; a new grant from what is left; the caller's expiry renewed.
    pub fn sync(&mut self, request: &SyncRequest) -> SyncView {
        self.limit_nanos = request.limit_nanos;
        let now = request.now_ms;
        self.leases.retain(|replica, lease| replica == &request.replica || lease.expires_ms > now);
        let mine = self.leases.remove(&request.replica).filter(|l| l.expires_ms > now).unwrap_or_default();
        let mut slice = mine.granted_nanos;
        slice -= request.spent_nanos.min(slice);
        self.settled_nanos = self.settled_nanos.saturating_add(request.spent_nanos);
        slice -= request.release_nanos.min(slice);
        let left =
            self.limit_nanos.saturating_sub(self.settled_nanos).saturating_sub(self.totals().leased_nanos + slice);
        let granted = request.want_nanos.min(left);
        slice += granted;
        let expires_ms = now.saturating_add(request.ttl_ms);
        if slice > 0 {
            self.leases.insert(request.replica.clone(), Lease { granted_nanos: slice, expires_ms });
        }
        SyncView { granted_nanos: granted, slice_nanos: slice, expires_ms, totals: self.totals() }
    }
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

fn to_u64(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { column, value: value.to_string() })
}

/// The same statements for both databases (`$n` placeholders work in both).
const UPSERT_LEDGER: &str = "INSERT INTO budget_ledger \
    (namespace, name, period_ms, limit_nanos, settled_nanos, leased_nanos, updated_ms) VALUES ($1, $2, $3, $4, $6, 0, $5) \
    ON CONFLICT (namespace, name, period_ms) DO UPDATE SET limit_nanos = excluded.limit_nanos \
    RETURNING settled_nanos";
const SELECT_LEASES: &str = "SELECT replica, granted_nanos, expires_ms FROM budget_leases \
    WHERE namespace = $1 AND name = $2 AND period_ms = $3";
const DELETE_LEASES: &str = "DELETE FROM budget_leases WHERE namespace = $1 AND name = $2 AND period_ms = $3";
const INSERT_LEASE: &str = "INSERT INTO budget_leases \
    (namespace, name, period_ms, replica, granted_nanos, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)";
const UPDATE_LEDGER: &str = "UPDATE budget_ledger SET settled_nanos = $4, leased_nanos = $5, updated_ms = $6 \
    WHERE namespace = $1 AND name = $2 AND period_ms = $3";
const SELECT_TOTALS: &str = "SELECT limit_nanos, settled_nanos, leased_nanos FROM budget_ledger \
    WHERE namespace = $1 AND name = $2 AND period_ms = $3";

/// Loads the account, applies [`Account::sync`], saves it: one transaction,
/// serialised per budget by the ledger row the first statement writes (a row lock
/// in Postgres, the database write lock in SQLite).
macro_rules! sync_in {
    ($pool:expr, $id:expr, $request:expr, $opening:expr) => {{
        let (id, request) = ($id, $request);
        let (namespace, name) = id.columns();
        let mut tx = $pool.begin().await?;
        let settled: i64 = sqlx::query_scalar(UPSERT_LEDGER)
            .bind(namespace)
            .bind(name)
            .bind(id.period_ms)
            .bind(to_i64("limit_nanos", request.limit_nanos)?)
            .bind(request.now_ms)
            .bind(to_i64("settled_nanos", $opening)?)
            .fetch_one(&mut *tx)
            .await?;
        let mut account = Account {
            limit_nanos: request.limit_nanos,
            settled_nanos: to_u64("settled_nanos", settled)?,
            leases: BTreeMap::new(),
        };
        let rows = sqlx::query(SELECT_LEASES).bind(namespace).bind(name).bind(id.period_ms).fetch_all(&mut *tx).await?;
        for row in rows {
            let lease = Lease {
                granted_nanos: to_u64("granted_nanos", row.try_get("granted_nanos")?)?,
                expires_ms: row.try_get("expires_ms")?,
            };
            account.leases.insert(row.try_get("replica")?, lease);
        }
        let view = account.sync(request);
        sqlx::query(DELETE_LEASES).bind(namespace).bind(name).bind(id.period_ms).execute(&mut *tx).await?;
        for (replica, lease) in &account.leases {
            sqlx::query(INSERT_LEASE)
                .bind(namespace)
                .bind(name)
                .bind(id.period_ms)
                .bind(replica)
                .bind(to_i64("granted_nanos", lease.granted_nanos)?)
                .bind(lease.expires_ms)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(UPDATE_LEDGER)
            .bind(namespace)
            .bind(name)
            .bind(id.period_ms)
            .bind(to_i64("settled_nanos", view.totals.settled_nanos)?)
            .bind(to_i64("leased_nanos", view.totals.leased_nanos)?)
            .bind(request.now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(view)
    }};
}

macro_rules! totals_in {
    ($pool:expr, $id:expr) => {{
        let id = $id;
        let (namespace, name) = id.columns();
        let row =
            sqlx::query(SELECT_TOTALS).bind(namespace).bind(name).bind(id.period_ms).fetch_optional($pool).await?;
        row.map(|row| {
            Ok(LedgerTotals {
                limit_nanos: to_u64("limit_nanos", row.try_get("limit_nanos")?)?,
                settled_nanos: to_u64("settled_nanos", row.try_get("settled_nanos")?)?,
                leased_nanos: to_u64("leased_nanos", row.try_get("leased_nanos")?)?,
            })
        })
        .transpose()
    }};
}

impl Store {
    /// One replica's call to the ledger of budget `id` (see the module doc): a
    /// single transaction, safe from any number of replicas at once.
    ///
    /// A period's ledger opens with what was already spent in it (the usage
    /// records since the period start: the key's, or every key's of the
    /// namespace), so a budget added or raised mid-period counts the spend
    /// before it.
    pub async fn sync_budget(&self, id: &BudgetId, request: &SyncRequest) -> Result<SyncView, StoreError> {
        let opening = match self.budget_totals(id).await? {
            Some(_) => 0,
            None => self.usage(&id.scope, id.period_ms).await?.cost_nanos,
        };
        match self {
            Store::Postgres(s) => sync_in!(s.pool(), id, request, opening),
            Store::Sqlite(s) => sync_in!(s.pool(), id, request, opening),
        }
    }

    /// The ledger's totals for budget `id`; `None` before any replica used it.
    pub async fn budget_totals(&self, id: &BudgetId) -> Result<Option<LedgerTotals>, StoreError> {
        match self {
            Store::Postgres(s) => totals_in!(s.pool(), id),
            Store::Sqlite(s) => totals_in!(s.pool(), id),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: i64 = 10_000;

    fn call(replica: usize, spent: u64, release: u64, want: u64, now: i64, limit: u64) -> SyncRequest {
        SyncRequest {
            limit_nanos: limit,
            replica: format!("r{replica}"),
            spent_nanos: spent,
            release_nanos: release,
            want_nanos: want,
            now_ms: now,
            ttl_ms: TTL,
        }
    }

    #[test]
    fn grants_come_only_from_what_is_left() {
        let mut a = Account::default();
        assert_eq!(a.sync(&call(0, 0, 0, 600, 0, 1000)).granted_nanos, 600);
        assert_eq!(a.sync(&call(1, 0, 0, 600, 0, 1000)).granted_nanos, 400, "the rest, not more");
        let v = a.sync(&call(0, 500, 100, 0, 1, 1000));
        assert_eq!((v.slice_nanos, v.totals.settled_nanos, v.totals.leased_nanos), (0, 500, 400));
        assert_eq!(a.sync(&call(2, 0, 0, 600, 2, 1000)).granted_nanos, 100, "released slices are granted again");
        // r1's slice expires: it returns to the budget.
        let v = a.sync(&call(2, 0, 0, 600, 1 + TTL, 1000));
        assert_eq!((v.granted_nanos, v.slice_nanos), (400, 500));
        // A lowered limit stops new grants but takes nothing back.
        let v = a.sync(&call(3, 0, 0, 100, 3 + TTL, 700));
        assert_eq!((v.granted_nanos, v.totals.unleased_nanos()), (0, 0));
    }

    /// A simulated replica: its slice as it believes it, what it reserved for
    /// requests in flight, and what it spent since its last call.
    #[derive(Clone, Debug, Default)]
    struct Replica {
        slice: u64,
        expires: i64,
        in_flight: Vec<u64>,
        spent: u64,
    }

    impl Replica {
        fn available(&self, now: i64) -> u64 {
            if now >= self.expires {
                return 0;
            }
            self.slice.saturating_sub(self.spent).saturating_sub(self.in_flight.iter().sum())
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A request reserves `amount` from replica `r`'s slice, if it fits.
        Reserve { r: usize, amount: u64 },
        /// The oldest request of replica `r` ends, costing `share`% of its reservation.
        Finish { r: usize, share: u64 },
        /// Replica `r` calls the ledger, wanting `want` more.
        Sync { r: usize, want: u64, release: bool },
        /// Time passes. Live replicas renew before their slice expires while they
        /// have requests in flight or spend to settle (the gateway's sync loop
        /// runs far more often than the lease lasts); idle ones may let it expire.
        Wait { ms: i64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 1..400u64).prop_map(|(r, amount)| Op::Reserve { r, amount }),
            (0..3usize, 0..=100u64).prop_map(|(r, share)| Op::Finish { r, share }),
            (0..3usize, 0..800u64, any::<bool>()).prop_map(|(r, want, release)| Op::Sync { r, want, release }),
            (0..(2 * TTL)).prop_map(|ms| Op::Wait { ms }),
        ]
    }

    const LIMIT: u64 = 2000;

    fn sync(ledger: &mut Account, replicas: &mut [Replica], r: usize, want: u64, release: bool, now: i64) {
        let rep = &mut replicas[r];
        let release = if release { rep.available(now) } else { 0 };
        let view = ledger.sync(&call(r, rep.spent, release, want, now, LIMIT));
        rep.spent = 0;
        rep.slice = view.slice_nanos;
        rep.expires = view.expires_ms;
    }

    proptest! {
        /// Whatever the interleaving of reserve, settle, lease, release and expiry
        /// across three replicas, neither settled spend nor spend at all (settled
        /// or not yet) exceeds the budget, and reservations in flight stay covered.
        #[test]
        fn settled_spend_never_exceeds_the_budget(ops in proptest::collection::vec(op(), 1..300)) {
            let mut ledger = Account::default();
            let mut replicas = vec![Replica::default(); 3];
            let mut now = 0i64;
            let mut spent_total = 0u64;
            for op in ops {
                match op {
                    Op::Reserve { r, amount } => {
                        if replicas[r].available(now) >= amount {
                            replicas[r].in_flight.push(amount);
                        }
                    }
                    Op::Finish { r, share } => {
                        if !replicas[r].in_flight.is_empty() {
                            let reserved = replicas[r].in_flight.remove(0);
                            let cost = reserved * share / 100;
                            replicas[r].spent += cost;
                            spent_total += cost;
                        }
                    }
                    Op::Sync { r, want, release } => sync(&mut ledger, &mut replicas, r, want, release, now),
                    Op::Wait { ms } => {
                        let until = now + ms;
                        for r in 0..replicas.len() {
                            let busy = !replicas[r].in_flight.is_empty() || replicas[r].spent > 0;
                            if busy && replicas[r].expires <= until {
                                sync(&mut ledger, &mut replicas, r, 0, false, now);
                            }
                        }
                        now = until.min(now + TTL - 1);
                    }
                }
                let totals = ledger.totals();
                prop_assert!(totals.settled_nanos <= LIMIT, "{totals:?}");
                prop_assert!(spent_total <= LIMIT, "spent {spent_total}");
                prop_assert!(totals.settled_nanos + totals.leased_nanos <= LIMIT, "{totals:?}");
                for rep in &replicas {
                    if now < rep.expires {
                        prop_assert!(rep.in_flight.iter().sum::<u64>() + rep.spent <= rep.slice, "{rep:?}");
                    }
                }
            }
        }
    }
}
