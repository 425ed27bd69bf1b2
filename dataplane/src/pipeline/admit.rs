//! `admit`: whether this key may make this request now — whether its usage
//! can be kept (a full usage queue and spool refuse with 503 rather than
//! serve unmetered traffic), the key's model allowlist, then its rate limits
//! (`limits`: concurrency, requests and tokens per minute, this replica's
//! share). Everything here is decided before any upstream is called, against
//! per-key atomics in the registry; a refusal is counted by reason.
//!
//! What admission takes is held in the request's [`Admission`] and settled
//! when the context drops (`metering::finish`, which knows the real tokens):
//! the limits' slot and tokens, and the budget reservations (the request's
//! maximum cost, from the key's budget and from its namespace's, taken once a
//! plan knows the prices; each settled at the actual cost).

use weaver_crds::money::Usd;

use super::Context;
use super::plan::Plan;
use crate::api::{ApiError, ApiRoute, RequestBody};
use crate::clock::unix_millis;
use crate::limits::{Demand, Exceeded, Held, KeyLimits, Levels};
use crate::metering::RefusalReason;
use crate::state::budget::{BudgetRef, Shortfall, release_each, reserve_each, try_reserve_each};
use crate::state::{KeyRuntime, Runtime};

/// What admission took for one request; settled when its context drops.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// The key's rate-limit slot and token reservation, when it has limits.
    pub limits: Option<Held>,
    /// The limit levels to report in this request's answer (also for a
    /// refusal); `None` before admission looked at them.
    pub levels: Option<Levels>,
    /// Nano-dollars reserved from the key's budget slice.
    pub budget: Option<u64>,
    /// Nano-dollars reserved from the namespace's budget slice.
    pub namespace_budget: Option<u64>,
}

impl Admission {
    /// Settles what was taken: the concurrency slot comes back and the token
    /// reservation is corrected to `used` tokens (`None`: unknown, the
    /// reservation stands).
    pub fn settle(&mut self, key: &KeyRuntime, used: Option<u64>, now: crate::limits::Nanos) {
        if let (Some(held), Some(limits)) = (self.limits.take(), key.limits.as_ref()) {
            limits.settle(&key.state.limits, held, used, now);
        }
    }

    /// Settles the budget reservations at `cost` nano-dollars; `rt` is the
    /// runtime the request was admitted under (it links the namespace's state).
    pub fn settle_budgets(&mut self, rt: &Runtime, key: &KeyRuntime, cost: u64) {
        if let Some(reserved) = self.budget.take() {
            key.state.budget.settle(reserved, cost);
        }
        if let (Some(reserved), Some(shared)) = (self.namespace_budget.take(), rt.namespace_budget(key)) {
            shared.state.settle(reserved, cost);
        }
    }

    /// Gives the concurrency slot back early (a client that left, while the
    /// rest of the answer is still read for its usage).
    pub fn release_slot(&mut self, key: &KeyRuntime) {
        if let (Some(held), Some(limits)) = (self.limits.as_mut(), key.limits.as_ref()) {
            limits.release_slot(&key.state.limits, held);
        }
    }
}

pub(super) fn admit(
    ctx: &mut Context,
    rt: &Runtime,
    request: &RequestBody<'_>,
    body_bytes: usize,
) -> Result<(), ApiError> {
    let key = &rt.keys[ctx.key as usize];
    if ctx.gw.usage.as_ref().is_some_and(|sink| sink.refuses()) {
        ctx.gw.metrics.refused(key, RefusalReason::metering_unavailable);
        return Err(ApiError::unavailable(
            "metering_unavailable",
            "The gateway cannot record usage right now (its usage store and spool are full); try again shortly.",
        ));
    }
    let model = request.model.as_ref();
    if !rt.model_allowed(ctx.key, model) {
        ctx.gw.metrics.refused(key, RefusalReason::model_not_allowed);
        return Err(ApiError::forbidden("model_not_allowed", format!("This API key may not use the model `{model}`.")));
    }
    if let Some(limits) = &key.limits {
        rate_limits(ctx, key, limits, request, body_bytes)?;
    }
    Ok(())
}

fn rate_limits(
    ctx: &mut Context,
    key: &KeyRuntime,
    limits: &KeyLimits,
    request: &RequestBody<'_>,
    body_bytes: usize,
) -> Result<(), ApiError> {
    let demand = demand(ctx.record.endpoint, request, body_bytes);
    let now = ctx.gw.nanos(ctx.started);
    match limits.admit(&key.state.limits, demand, now) {
        Ok(held) => {
            ctx.admission.levels = Some(held.levels);
            ctx.admission.limits = Some(held);
            Ok(())
        }
        Err(refusal) => {
            ctx.admission.levels = Some(refusal.levels);
            let exceeded = refusal.exceeded;
            let reason = match exceeded {
                Exceeded::Concurrency { .. } => RefusalReason::concurrency,
                Exceeded::Requests { .. } => RefusalReason::rate_limit_requests,
                Exceeded::Tokens { .. } => RefusalReason::rate_limit_tokens,
            };
            ctx.gw.metrics.refused(key, reason);
            tracing::debug!(reason = ?reason, key = key.name.as_str(), "rate limit refused a request");
            Err(ApiError::rate_limited(exceeded.kind(), exceeded.message(), exceeded.retry_after_secs()))
        }
    }
}

/// Reserves the request's maximum cost — input tokens at most the body's
/// bytes (a token is at least one byte of text), output at most the client's
/// limit (else the key's `reserve_output_tokens`), at the dearest
/// candidate's prices — from the key's own budget, then from its namespace's
/// (each from its local slice, topped up from the ledger when short). 429
/// `budget_exceeded`, naming the budget, when either cannot cover it (the
/// key's is asked first), before any upstream call; a refusal by the
/// namespace's budget gives the key's reservation back. 503
/// `budget_unavailable` when a slice ran short and the ledger could not be
/// asked.
pub(super) async fn reserve_budget(
    ctx: &mut Context,
    rt: &Runtime,
    plan: &Plan<'_>,
    request: &RequestBody<'_>,
    body_bytes: usize,
) -> Result<(), ApiError> {
    let key = &rt.keys[ctx.key as usize];
    let (own, shared) = (key.own_budget(), rt.namespace_budget(key));
    if own.is_none() && shared.is_none() {
        return Ok(());
    }
    let output = match ctx.record.endpoint {
        ApiRoute::Embeddings => 0,
        endpoint => {
            let limit = max_output_tokens(request).unwrap_or(key.reserve_output_tokens);
            limit.saturating_mul(choices(endpoint, request))
        }
    };
    let amount = plan.max_cost(rt, body_bytes as u64, output);
    let (now_ms, replicas) = (unix_millis(), rt.snapshot.gateway_replicas);
    let budgets = [own, shared];
    let outcome = if try_reserve_each(&budgets, amount, now_ms) {
        Ok(())
    } else {
        // A slice ran short: the ledger is asked in a task of its own, so a
        // client leaving meanwhile (hyper then drops this future) neither
        // aborts the ledger's transaction, losing the spend it settles, nor
        // strands a reservation that no request will settle.
        let (gw, rt, index) = (ctx.gw.clone(), ctx.rt.clone(), ctx.key as usize);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let key = &rt.keys[index];
            let budgets = [key.own_budget(), rt.namespace_budget(key)];
            let outcome = reserve_each(&budgets, &gw.ledger, amount, now_ms, replicas).await;
            if let Err(Ok(())) = tx.send(outcome) {
                release_each(&budgets, amount);
            }
        });
        rx.await.unwrap_or(Err((0, Shortfall::Unavailable)))
    };
    match outcome {
        Ok(()) => {
            ctx.admission.budget = own.map(|_| amount);
            ctx.admission.namespace_budget = shared.map(|_| amount);
            Ok(())
        }
        Err((i, shortfall)) => match (budgets.get(i).copied().flatten(), shortfall) {
            (Some(refused), Shortfall::Exceeded) => Err(refuse_budget(ctx, key, refused, amount)),
            _ => {
                ctx.gw.metrics.refused(key, RefusalReason::budget_unavailable);
                let mut error = ApiError::unavailable(
                    "budget_unavailable",
                    "The gateway cannot reach its budget ledger to cover this request (its usage store is \
                         unreachable or slow); try again shortly.",
                );
                error.retry_after = Some(1);
                Err(error)
            }
        },
    }
}

fn refuse_budget(ctx: &Context, key: &KeyRuntime, refused: BudgetRef<'_>, amount: u64) -> ApiError {
    let period = format!("{:?}", refused.budget.period).to_lowercase();
    let limit = refused.budget.amount;
    let (reason, budget) = match refused.key {
        Some(_) => (RefusalReason::budget_exceeded, format!("This API key's {period} budget of ${limit}")),
        None => (
            RefusalReason::namespace_budget_exceeded,
            format!(
                "The {period} budget of ${limit} that the keys of namespace {} share (its NamespacePolicy)",
                refused.namespace.as_str()
            ),
        ),
    };
    ctx.gw.metrics.refused(key, reason);
    ApiError::budget_exceeded(format!(
        "{budget} cannot cover this request (up to ${} reserved); it is spent or held by requests in flight.",
        Usd(amount)
    ))
}

/// What a request of `body_bytes` asks of a key's token rate limits:
/// its estimated input, and its output limit times the completions it asks for.
pub(super) fn demand(endpoint: ApiRoute, request: &RequestBody<'_>, body_bytes: usize) -> Demand {
    match endpoint {
        ApiRoute::Embeddings => Demand::embeddings(body_bytes),
        _ => Demand::chat(body_bytes, max_output_tokens(request), choices(endpoint, request)),
    }
}

/// How many completions a request asks for: a chat completion's `n` (each
/// completion may produce up to the output limit; OpenAI's API reference,
/// "Create chat completion", `n`), else 1. Not capped at OpenAI's 128:
/// self-hosted upstreams take more. A value that is not a positive integer
/// counts as 1 (the upstream refuses it).
fn choices(endpoint: ApiRoute, request: &RequestBody<'_>) -> u64 {
    match endpoint {
        ApiRoute::ChatCompletions => {
            request.get("n").and_then(|raw| raw.get().parse::<u64>().ok()).filter(|n| *n > 0).unwrap_or(1)
        }
        _ => 1,
    }
}

/// The client's output limit: `max_completion_tokens`, else the older
/// `max_tokens`, else the Responses API's `max_output_tokens` (a `null` or
/// a non-number counts as not given).
pub(super) fn max_output_tokens(request: &RequestBody<'_>) -> Option<u64> {
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .into_iter()
        .find_map(|name| request.get(name).and_then(|raw| raw.get().parse::<u64>().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_output(body: &[u8]) -> Option<u64> {
        RequestBody::parse(body).ok().and_then(|r| max_output_tokens(&r))
    }

    #[test]
    fn a_chat_completion_asking_for_n_choices_demands_n_times_its_output() {
        let demand_of = |endpoint, body: &[u8]| {
            let request = RequestBody::parse(body).unwrap_or_else(|e| panic!("{e:?}"));
            demand(endpoint, &request, body.len()).output
        };
        let body = br#"{"model":"m","n":3,"max_tokens":10}"#;
        assert_eq!(demand_of(ApiRoute::ChatCompletions, body), 30);
        assert_eq!(demand_of(ApiRoute::Messages, body), 10, "Anthropic's Messages API has no `n`");
        for n in [r#"0"#, r#"-2"#, r#""3""#, r#"1.5"#, r#"null"#] {
            let body = format!(r#"{{"model":"m","n":{n},"max_tokens":10}}"#);
            assert_eq!(demand_of(ApiRoute::ChatCompletions, body.as_bytes()), 10, "n = {n} counts as one");
        }
    }

    #[test]
    fn the_output_limit_is_max_completion_tokens_then_max_tokens() {
        assert_eq!(max_output(br#"{"model":"m","max_tokens":100}"#), Some(100));
        assert_eq!(max_output(br#"{"model":"m","max_tokens":100,"max_completion_tokens":50}"#), Some(50));
        assert_eq!(max_output(br#"{"model":"m","max_completion_tokens":null,"max_tokens":7}"#), Some(7));
        assert_eq!(max_output(br#"{"model":"m","max_tokens":"many"}"#), None);
        assert_eq!(max_output(br#"{"model":"m"}"#), None);
    }
}
