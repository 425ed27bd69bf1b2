//! A routing policy as requests use it: built once per snapshot from the
//! snapshot's `PolicySnapshot`, linked to its retry budget in the registry.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use weaver_crds::routing_policy::{RetryOn, Strategy};
use weaver_crds::snapshot::PolicySnapshot;

use super::budget::{BudgetRule, RetryBudget};
use super::health::Outlier;
use crate::metering::Label;

/// One policy (or a namespace's defaults).
#[derive(Debug)]
pub struct Policy {
    pub strategy: Strategy,
    pub retry: Retry,
    pub outlier: Outlier,
    /// `cache-aware`: messages hashed after the leading system ones.
    pub prefix_messages: u32,
    /// `cache-aware`: the load bound, in percent of a fair share.
    pub load_factor_percent: u32,
    pub budget_rule: BudgetRule,
    /// This policy's retry budget on this replica.
    pub budget: Arc<RetryBudget>,
    /// For metrics.
    pub(crate) namespace: Label,
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Bit `RetryOn as u8`: that class is retried.
    retry_on: u8,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Each attempt's limit until a stream's first byte or a whole answer.
    pub per_try: Option<Duration>,
    /// The request's limit until its answer begins.
    pub timeout: Option<Duration>,
}

fn bit(class: RetryOn) -> u8 {
    1 << (class as u8)
}

impl Retry {
    /// Whether failures of `class` are retried.
    pub fn on(&self, class: RetryOn) -> bool {
        self.retry_on & bit(class) != 0
    }

    /// The waits before retries on a channel already tried: exponential from
    /// `backoff_base`, each with up to as much again of jitter, at most
    /// `backoff_max` (backon's, seeded per request).
    pub fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.backoff_base)
            .with_max_delay(self.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

impl Policy {
    /// The runtime form of `p`, counting retries in `budget`.
    pub fn new(p: &PolicySnapshot, budget: Arc<RetryBudget>) -> Self {
        let ms = Duration::from_millis;
        Self {
            strategy: p.strategy,
            retry: Retry {
                attempts: p.retry.attempts.max(1),
                retry_on: p.retry.retry_on.iter().fold(0, |bits, c| bits | bit(*c)),
                backoff_base: ms(p.retry.backoff_base_ms),
                backoff_max: ms(p.retry.backoff_max_ms.max(p.retry.backoff_base_ms)),
                per_try: p.retry.per_try_timeout_ms.map(ms),
                timeout: p.retry.timeout_ms.map(ms),
            },
            outlier: Outlier::from(&p.outlier),
            prefix_messages: p.cache_aware.prefix_messages,
            load_factor_percent: p.cache_aware.load_factor_percent.max(100),
            budget_rule: BudgetRule { percent: p.retry.budget_percent, min_per_second: p.retry.budget_min_per_second },
            budget,
            namespace: Label::new(&p.namespace),
        }
    }

    /// A policy with `strategy` and every other setting at its default.
    pub fn with_strategy(strategy: Strategy) -> Self {
        let snapshot = PolicySnapshot { strategy, ..PolicySnapshot::defaults("") };
        Self::new(&snapshot, Arc::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_retry_every_class_once_with_a_short_jittered_backoff() {
        let p = Policy::with_strategy(Strategy::Weighted);
        assert_eq!(p.retry.attempts, 2);
        assert!(RetryOn::ALL.iter().all(|c| p.retry.on(*c)));
        let waits: Vec<Duration> = p.retry.backoff().take(5).collect();
        assert_eq!(waits.len(), 5);
        assert!(waits[0] >= Duration::from_millis(25) && waits[0] < Duration::from_millis(50), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(500)), "{waits:?}");
        let mut snapshot = PolicySnapshot::defaults("ns");
        snapshot.retry.retry_on = vec![RetryOn::Timeout];
        let p = Policy::new(&snapshot, Arc::default());
        assert!(p.retry.on(RetryOn::Timeout) && !p.retry.on(RetryOn::ServerError));
    }
}
