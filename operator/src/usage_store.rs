//! Status usage read from the usage store (`--store`): the records the
//! gateways wrote durably, so a restart or a leader change neither loses nor
//! double-counts anything (the report arithmetic in `usage.rs` can do both,
//! up to one status interval).
//!
//! One status pass costs one grouped query, whatever the number of objects:
//! today's usage (UTC) grouped by key and channel, from the daily rollups
//! (written with the events, so today's row is current). Usage before today
//! changes only when a gateway replays its spool late, so it is read less
//! often (`--store-history-refresh`, and at every UTC midnight): one query per
//! distinct budget period start among the keys (daily, weekly, monthly and
//! total keys share at most four), grouped by key, and one for all channels.
//! Period starts fall on UTC midnights, so no query reads raw events. A
//! namespace's usage (NamespacePolicy status) is the sum of its keys', kept
//! under [`namespace_id`](crate::usage::namespace_id).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weaver_store::{GroupBy, Store, StoreError, SummaryRow, UsageFilter, UsageStore};

use crate::usage::{Id, Totals, add_namespace_totals};

/// Totals with the errors among their requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// `last_used` is never set: rollups do not keep it.
    pub totals: Totals,
    /// Requests whose outcome was an error (upstream failure or refusal).
    pub errors: u64,
}

impl Counted {
    fn add(&mut self, other: &Counted) {
        self.totals.requests += other.totals.requests;
        self.totals.input_tokens += other.totals.input_tokens;
        self.totals.output_tokens += other.totals.output_tokens;
        self.totals.cost += other.totals.cost;
        self.errors += other.errors;
    }
}

impl From<&SummaryRow> for Counted {
    fn from(r: &SummaryRow) -> Self {
        Counted {
            totals: Totals {
                requests: r.requests,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost: r.cost_nanos,
                last_used: None,
            },
            errors: r.errors,
        }
    }
}

/// Usage before one UTC day: per period start, per key; per channel.
#[derive(Debug, Default)]
struct History {
    /// The day it ends at (exclusive), unix seconds.
    day: i64,
    read_at: Option<Instant>,
    keys: HashMap<i64, HashMap<Id, Counted>>,
    channels: HashMap<Id, Counted>,
}

/// What the store answered for one status pass.
#[derive(Clone, Debug, Default)]
pub struct StoreTotals {
    /// Start of today (UTC), unix seconds.
    day: i64,
    history: Arc<History>,
    /// Today's usage per key and per channel.
    keys: HashMap<Id, Counted>,
    channels: HashMap<Id, Counted>,
}

impl StoreTotals {
    /// A key's usage since `period_start` (a UTC midnight at or before
    /// today's), or a namespace's under [`namespace_id`](crate::usage::namespace_id); zero when it has none.
    pub fn key(&self, id: &Id, period_start: i64) -> Counted {
        let mut c = self.keys.get(id).copied().unwrap_or_default();
        if period_start < self.day
            && let Some(before) = self.history.keys.get(&period_start).and_then(|m| m.get(id))
        {
            c.add(before);
        }
        c
    }

    /// A channel's usage since records began; zero when it has none.
    pub fn channel(&self, id: &Id) -> Counted {
        let mut c = self.channels.get(id).copied().unwrap_or_default();
        if let Some(before) = self.history.channels.get(id) {
            c.add(before);
        }
        c
    }
}

/// The operator's handle on the store.
pub struct UsageReader {
    store: Store,
    /// Only this namespace's usage is read (`--watch-namespace`).
    namespace: Option<String>,
    /// How long usage before today is reused.
    history_refresh: Duration,
    migrated: AtomicBool,
    history: Mutex<Arc<History>>,
}

const DAY: i64 = 86_400;

impl UsageReader {
    pub fn new(store: Store, namespace: Option<String>, history_refresh: Duration) -> Self {
        Self {
            store,
            namespace,
            history_refresh,
            migrated: AtomicBool::new(false),
            history: Mutex::new(Arc::new(History::default())),
        }
    }

    /// The store itself, for the usage API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn filter(&self, from_s: Option<i64>, to_s: Option<i64>) -> UsageFilter {
        UsageFilter {
            from_ms: from_s.map(|s| s.saturating_mul(1000)),
            to_ms: to_s.map(|s| s.saturating_mul(1000)),
            namespaces: self.namespace.iter().cloned().collect(),
            ..UsageFilter::default()
        }
    }

    /// Usage of every key since each of `period_starts` (UTC midnights, unix
    /// seconds) and of every channel, as of `now` (unix seconds). The first
    /// error ends the pass: a store that is away would otherwise cost one
    /// connection timeout per query.
    pub async fn read(&self, period_starts: &BTreeSet<i64>, now: i64) -> Result<StoreTotals, StoreError> {
        if !self.migrated.load(Ordering::Relaxed) {
            // The gateways usually migrate first; the operator may start
            // before any of them has, and reading needs the tables.
            self.store.migrate().await?;
            self.migrated.store(true, Ordering::Relaxed);
        }
        let day = now - now.rem_euclid(DAY);
        let history = self.history(period_starts, day).await?;
        let mut out = StoreTotals { day, history, ..StoreTotals::default() };
        let rows = self.store.totals(&self.filter(Some(day), None), &[GroupBy::Key, GroupBy::Channel]).await?;
        for r in &rows {
            let Some((ns, key)) = r.group.api_key.clone() else { continue };
            let counted = Counted::from(r);
            // Requests that reached no channel are grouped under "".
            if let Some(channel) = r.group.channel.clone().filter(|c| !c.is_empty()) {
                out.channels.entry((ns.clone(), channel)).or_default().add(&counted);
            }
            out.keys.entry((ns, key)).or_default().add(&counted);
        }
        add_namespace_totals(&mut out.keys, Counted::add);
        Ok(out)
    }

    /// Usage before `day`, re-read when it is older than the refresh
    /// interval, ends at another day, or lacks a period start.
    async fn history(&self, period_starts: &BTreeSet<i64>, day: i64) -> Result<Arc<History>, StoreError> {
        let cached = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let fresh = cached.day == day
            && cached.read_at.is_some_and(|t| t.elapsed() < self.history_refresh)
            && period_starts.iter().filter(|s| **s < day).all(|s| cached.keys.contains_key(s));
        if fresh {
            return Ok(cached);
        }
        let mut history = History { day, read_at: Some(Instant::now()), ..History::default() };
        for start in period_starts.iter().filter(|s| **s < day) {
            let rows = self.store.totals(&self.filter(Some(*start), Some(day)), &[GroupBy::Key]).await?;
            let mut by_key = rows.iter().filter_map(|r| Some((r.group.api_key.clone()?, Counted::from(r)))).collect();
            add_namespace_totals(&mut by_key, Counted::add);
            history.keys.insert(*start, by_key);
        }
        let rows = self.store.totals(&self.filter(None, Some(day)), &[GroupBy::Namespace, GroupBy::Channel]).await?;
        history.channels = rows
            .iter()
            .filter(|r| r.group.channel.as_deref().is_some_and(|c| !c.is_empty()))
            .filter_map(|r| Some(((r.group.namespace.clone()?, r.group.channel.clone()?), Counted::from(r))))
            .collect();
        let history = Arc::new(history);
        *self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = history.clone();
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(requests: u64, cost: u64) -> Counted {
        Counted { totals: Totals { requests, cost, ..Totals::default() }, errors: 1 }
    }

    #[test]
    fn periods_add_the_days_before_today_they_cover() {
        let today = 20 * DAY;
        let (month, week) = (10 * DAY, 18 * DAY);
        let id: Id = ("ns".into(), "k".into());
        let history = History {
            day: today,
            read_at: None,
            keys: HashMap::from([
                (month, HashMap::from([(id.clone(), counted(10, 1_000))])),
                (week, HashMap::from([(id.clone(), counted(2, 200))])),
            ]),
            channels: HashMap::from([(id.clone(), counted(7, 70))]),
        };
        let totals = StoreTotals {
            day: today,
            history: Arc::new(history),
            keys: HashMap::from([(id.clone(), counted(1, 5))]),
            channels: HashMap::from([(id.clone(), counted(1, 5))]),
        };
        assert_eq!(
            totals.key(&id, month),
            Counted { totals: Totals { requests: 11, cost: 1_005, ..Totals::default() }, errors: 2 }
        );
        assert_eq!(totals.key(&id, week).totals.requests, 3);
        // A daily period starts today: nothing before it counts.
        assert_eq!(totals.key(&id, today).totals.requests, 1);
        assert_eq!(totals.channel(&id).totals.cost, 75);
        assert_eq!(totals.key(&("ns".into(), "other".into()), month), Counted::default());
    }

    #[test]
    fn a_namespace_is_the_sum_of_its_keys_and_not_of_requests_without_one() {
        let mut keys = HashMap::from([
            (("ns".into(), "a".into()), counted(1, 10)),
            (("ns".into(), "b".into()), counted(2, 20)),
            (("other".into(), "a".into()), counted(4, 40)),
            ((String::new(), String::new()), counted(8, 80)),
        ]);
        add_namespace_totals(&mut keys, Counted::add);
        let ns = crate::usage::namespace_id("ns");
        assert_eq!(keys[&ns], Counted { totals: Totals { requests: 3, cost: 30, ..Totals::default() }, errors: 2 });
        assert_eq!(keys[&crate::usage::namespace_id("other")].totals.requests, 4);
        assert_eq!(keys[&(String::new(), String::new())].totals.requests, 8, "unauthenticated requests stay apart");
    }
}
