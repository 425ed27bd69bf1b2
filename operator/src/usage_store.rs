//! Status usage read from the usage store (`--store`): the records the
//! gateways wrote durably, so a restart or a leader change neither loses nor
//! double-counts anything (the report arithmetic in `usage.rs` can do both,
//! up to one status interval).
//!
//! One status pass costs a handful of grouped queries, whatever the number of
//! objects: one per distinct budget period start among the keys (daily,
//! weekly, monthly and total keys share at most four starts), grouped by key,
//! and one for all channels, grouped by namespace and channel. Period starts
//! fall on UTC day boundaries, so the store answers them from daily rollups
//! (which hold the current day, written with the events) without reading raw
//! events.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use weaver_store::{GroupBy, Store, StoreError, SummaryRow, UsageFilter, UsageStore};

use crate::usage::{Id, Totals};

/// Totals with the errors among their requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// `last_used` is never set: rollups do not keep it.
    pub totals: Totals,
    /// Requests whose outcome was an error (upstream failure or refusal).
    pub errors: u64,
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

/// What the store answered for one status pass.
#[derive(Clone, Debug, Default)]
pub struct StoreTotals {
    /// Per period start (unix seconds), per key: usage since that start.
    keys: HashMap<i64, HashMap<Id, Counted>>,
    /// Per channel, all time.
    channels: HashMap<Id, Counted>,
}

impl StoreTotals {
    /// A key's usage since `period_start`; zero when it has none.
    pub fn key(&self, id: &Id, period_start: i64) -> Counted {
        self.keys.get(&period_start).and_then(|m| m.get(id)).copied().unwrap_or_default()
    }

    /// A channel's usage since records began; zero when it has none.
    pub fn channel(&self, id: &Id) -> Counted {
        self.channels.get(id).copied().unwrap_or_default()
    }
}

/// The operator's handle on the store.
pub struct UsageReader {
    store: Store,
    /// Only this namespace's usage is read (`--watch-namespace`).
    namespace: Option<String>,
    migrated: AtomicBool,
}

impl UsageReader {
    pub fn new(store: Store, namespace: Option<String>) -> Self {
        Self { store, namespace, migrated: AtomicBool::new(false) }
    }

    /// Usage of every key since each of `period_starts` (unix seconds) and of
    /// every channel. The first error ends the pass: a store that is away
    /// would otherwise cost one connection timeout per query.
    pub async fn read(&self, period_starts: &BTreeSet<i64>) -> Result<StoreTotals, StoreError> {
        if !self.migrated.load(Ordering::Relaxed) {
            // The gateways usually migrate first; the operator may start
            // before any of them has, and reading needs the tables.
            self.store.migrate().await?;
            self.migrated.store(true, Ordering::Relaxed);
        }
        let namespaces: Vec<String> = self.namespace.iter().cloned().collect();
        let mut out = StoreTotals::default();
        for start in period_starts {
            let filter = UsageFilter {
                from_ms: Some(start.saturating_mul(1000)),
                namespaces: namespaces.clone(),
                ..UsageFilter::default()
            };
            let rows = self.store.totals(&filter, &[GroupBy::Key]).await?;
            let by_key = rows
                .iter()
                .filter_map(|r| Some((r.group.api_key.clone()?, Counted::from(r))))
                .collect::<HashMap<Id, Counted>>();
            out.keys.insert(*start, by_key);
        }
        let filter = UsageFilter { namespaces, ..UsageFilter::default() };
        let rows = self.store.totals(&filter, &[GroupBy::Namespace, GroupBy::Channel]).await?;
        out.channels = rows
            .iter()
            // Requests that reached no channel are grouped under "".
            .filter(|r| r.group.channel.as_deref().is_some_and(|c| !c.is_empty()))
            .filter_map(|r| Some(((r.group.namespace.clone()?, r.group.channel.clone()?), Counted::from(r))))
            .collect();
        Ok(out)
    }
}
