//! Budget alerts: a key's (or a namespace's) spend crossing a threshold of its
//! budget (50, 80 and 100 % unless the budget names others) is announced once
//! per budget period, as a Kubernetes Event on the ApiKey (or
//! NamespacePolicy), a `tracing` event and the counter
//! `weaver_operator_budget_alerts_total{namespace,threshold}`.
//!
//! "Once" survives restarts and leader changes because the highest threshold
//! announced, with its period start, is kept in the object's status
//! (`status.budgetAlert`), and announcements go out only after that status was
//! written: a failed write announces nothing (the next pass tries again), a
//! failed Event is lost rather than repeated.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use weaver_crds::api_key::BudgetPeriod;
use weaver_crds::money::Usd;

use crate::context::Context;
use crate::metrics::ErrorCategory;

/// The Event reason of every budget alert.
pub const REASON: &str = "BudgetThresholdCrossed";

/// The last threshold announced (percent) and the start of the period (unix
/// seconds) it was announced in.
pub type Announced = (u32, i64);

/// The thresholds (percent, ascending) that `spent` of `budget` (nano-dollars)
/// has newly crossed in the period starting at `period_start`: those above
/// the last one announced in this same period (an announcement from an
/// earlier period counts for nothing) and at or below the spend. Spend
/// jumping past several thresholds at once crosses each of them.
pub fn crossed(thresholds: &[u32], spent: u64, budget: u64, period_start: i64, last: Option<Announced>) -> Vec<u32> {
    if budget == 0 {
        return Vec::new();
    }
    let floor = last.filter(|(_, start)| *start == period_start).map_or(0, |(t, _)| t);
    // In u128 and without division, so 99.99 % never rounds up to 100 %.
    let reached = |t: u32| u128::from(spent) * 100 >= u128::from(t) * u128::from(budget);
    thresholds.iter().copied().filter(|t| *t > floor && reached(*t)).collect()
}

/// Whichever of two announcements is later: a newer period wins, then the
/// higher threshold.
pub fn latest(a: Option<Announced>, b: Option<Announced>) -> Option<Announced> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (a.1, a.0) >= (b.1, b.0) { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One threshold crossing to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// Percent of the budget.
    pub threshold: u32,
    /// Nano-dollars spent in the period.
    pub spent: u64,
    /// Nano-dollars.
    pub budget: u64,
    pub period: BudgetPeriod,
    /// Unix seconds.
    pub period_start: i64,
}

impl Alert {
    /// What the Event and the log say.
    pub fn message(&self) -> String {
        let percent = u128::from(self.spent) * 100 / u128::from(self.budget.max(1));
        let period = match self.period {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        };
        let since = k8s_openapi::jiff::Timestamp::from_second(self.period_start)
            .map_or_else(|_| self.period_start.to_string(), |t| t.to_string());
        format!(
            "Spent {} USD of the {} USD budget ({percent}%), crossing {}%, in the {period} period since {since}.",
            Usd(self.spent),
            Usd(self.budget),
            self.threshold
        )
    }
}

/// Announces crossings that the status of `obj` (an ApiKey or a
/// NamespacePolicy) now records.
pub async fn announce<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, alerts: &[Alert]) {
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&());
    for alert in alerts {
        ctx.metrics.budget_alert(&namespace, alert.threshold);
        let message = alert.message();
        if alert.threshold >= 100 {
            tracing::warn!(
                kind = %kind,
                namespace = %namespace,
                name = %name,
                threshold = alert.threshold,
                spent_nanos = alert.spent,
                budget_nanos = alert.budget,
                period_start = alert.period_start,
                "{message}"
            );
        } else {
            tracing::info!(
                kind = %kind,
                namespace = %namespace,
                name = %name,
                threshold = alert.threshold,
                spent_nanos = alert.spent,
                budget_nanos = alert.budget,
                period_start = alert.period_start,
                "{message}"
            );
        }
        let event = Event {
            type_: if alert.threshold >= 100 { EventType::Warning } else { EventType::Normal },
            reason: REASON.to_owned(),
            note: Some(message),
            action: "Meter".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
            ctx.metrics.error(ErrorCategory::event);
            tracing::warn!(namespace = %namespace, name = %name, error = %e, "budget alert Event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const USD: u64 = 1_000_000_000;

    #[test]
    fn each_threshold_fires_once_per_period() {
        let t = [50, 80, 100];
        let today = 20 * DAY;
        assert_eq!(crossed(&t, USD * 49 / 100, USD, today, None), Vec::<u32>::new());
        assert_eq!(crossed(&t, USD / 2, USD, today, None), vec![50]);
        // Announced 50 today: 50 does not fire again, 80 does when reached.
        assert_eq!(crossed(&t, USD * 7 / 10, USD, today, Some((50, today))), Vec::<u32>::new());
        assert_eq!(crossed(&t, USD * 8 / 10, USD, today, Some((50, today))), vec![80]);
        // A jump past several thresholds crosses each.
        assert_eq!(crossed(&t, 3 * USD, USD, today, Some((50, today))), vec![80, 100]);
        assert_eq!(crossed(&t, 3 * USD, USD, today, Some((100, today))), Vec::<u32>::new());
        // Just short of 100 % is not 100 %.
        assert_eq!(crossed(&t, USD - 1, USD, today, Some((80, today))), Vec::<u32>::new());
    }

    #[test]
    fn a_new_period_starts_over() {
        let t = [50, 100];
        let (yesterday, today) = (19 * DAY, 20 * DAY);
        // Yesterday's 100 % announcement counts for nothing today.
        assert_eq!(crossed(&t, USD / 2, USD, today, Some((100, yesterday))), vec![50]);
        assert_eq!(crossed(&t, 0, USD, today, Some((100, yesterday))), Vec::<u32>::new());
        // The later announcement wins when status and memory disagree.
        assert_eq!(latest(Some((100, yesterday)), Some((50, today))), Some((50, today)));
        assert_eq!(latest(Some((50, today)), Some((80, today))), Some((80, today)));
        assert_eq!(latest(None, Some((80, today))), Some((80, today)));
    }

    #[test]
    fn no_budget_no_alerts() {
        assert!(crossed(&[50], 10, 0, 0, None).is_empty());
    }

    #[test]
    fn messages_say_spend_budget_percent_and_period() {
        let a = Alert {
            threshold: 50,
            spent: 550_000_000,
            budget: USD,
            period: BudgetPeriod::Monthly,
            period_start: 1_793_491_200,
        };
        assert_eq!(
            a.message(),
            "Spent 0.55 USD of the 1.00 USD budget (55%), crossing 50%, in the monthly period since 2026-11-01T00:00:00Z."
        );
    }
}
