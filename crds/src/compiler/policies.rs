//! A RoutingPolicy's settings, with every default filled in. What the schema
//! cannot check (a duration that does not parse in an object stored under an
//! older CRD, a backoff whose base exceeds its maximum) is reported, and the
//! default (or the nearest sane value) is used: a policy keeps routing.

use kube::ResourceExt;

use super::{Kind, ProblemReason, Problems, namespace_of};
use crate::common::DurationString;
use crate::routing_policy::{RetryOn, RoutingPolicy};
use crate::snapshot::PolicySnapshot;

pub(super) fn compile_policy(p: &RoutingPolicy, problems: &mut Problems) -> PolicySnapshot {
    let spec = &p.spec;
    let mut out = PolicySnapshot::defaults(namespace_of(p));
    out.name = Some(p.name_any());
    out.strategy = spec.strategy;
    let mut invalid = |message: String| problems.push(Kind::RoutingPolicy, p, ProblemReason::InvalidField, message);
    let mut millis = |d: &Option<DurationString>, field: &str, default: u64| match d {
        None => default,
        Some(text) => text.millis().unwrap_or_else(|e| {
            invalid(format!("{field}: {e}"));
            default
        }),
    };
    if let Some(r) = &spec.retry {
        let retry = &mut out.retry;
        retry.attempts = r.attempts.clamp(1, 10);
        if !r.retry_on.is_empty() {
            retry.retry_on = RetryOn::ALL.into_iter().filter(|c| r.retry_on.contains(c)).collect();
        }
        if let Some(b) = &r.backoff {
            retry.backoff_base_ms = millis(&b.base, "retry.backoff.base", retry.backoff_base_ms);
            retry.backoff_max_ms = millis(&b.max, "retry.backoff.max", retry.backoff_max_ms);
        }
        let positive = |ms: u64| (ms > 0).then_some(ms);
        retry.per_try_timeout_ms = positive(millis(&r.per_try_timeout, "retry.perTryTimeout", 0));
        retry.timeout_ms = positive(millis(&r.timeout, "retry.timeout", 0));
        if let Some(b) = &r.budget {
            retry.budget_percent = b.percent.unwrap_or(retry.budget_percent);
            retry.budget_min_per_second = b.min_per_second.unwrap_or(retry.budget_min_per_second);
        }
    }
    if let Some(o) = &spec.outlier_detection {
        let outlier = &mut out.outlier;
        outlier.consecutive_failures = o.consecutive_failures.unwrap_or(outlier.consecutive_failures);
        outlier.failure_rate_percent = o.failure_rate_percent.or(outlier.failure_rate_percent);
        outlier.min_requests = o.min_requests.unwrap_or(outlier.min_requests).max(1);
        outlier.interval_ms = millis(&o.interval, "outlierDetection.interval", outlier.interval_ms).max(1);
        outlier.base_ejection_ms =
            millis(&o.base_ejection_time, "outlierDetection.baseEjectionTime", outlier.base_ejection_ms);
        outlier.max_ejection_ms =
            millis(&o.max_ejection_time, "outlierDetection.maxEjectionTime", outlier.max_ejection_ms);
        outlier.panic_threshold_percent = o.panic_threshold_percent.unwrap_or(0).min(100);
    }
    if let Some(c) = &spec.cache_aware {
        let cache = &mut out.cache_aware;
        cache.prefix_messages = c.prefix_messages.unwrap_or(cache.prefix_messages);
        cache.load_factor_percent = c.load_factor_percent.unwrap_or(cache.load_factor_percent).max(100);
    }
    if out.retry.backoff_base_ms > out.retry.backoff_max_ms {
        problems.push(
            Kind::RoutingPolicy,
            p,
            ProblemReason::InvalidField,
            "retry.backoff.base is longer than retry.backoff.max; max is used for both".to_owned(),
        );
        out.retry.backoff_base_ms = out.retry.backoff_max_ms;
    }
    if out.outlier.base_ejection_ms > out.outlier.max_ejection_ms {
        problems.push(
            Kind::RoutingPolicy,
            p,
            ProblemReason::InvalidField,
            "outlierDetection.baseEjectionTime is longer than maxEjectionTime; maxEjectionTime is used for both"
                .to_owned(),
        );
        out.outlier.base_ejection_ms = out.outlier.max_ejection_ms;
    }
    out
}
