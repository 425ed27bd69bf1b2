//! `GET /admin/v1/keys/{namespace}/{name}`: one ApiKey's budget and what it
//! spent in the current budget period.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Serialize;
use weaver_crds::api_key::BudgetPeriod;
use weaver_crds::budget::period_start;
use weaver_crds::money::Usd;
use weaver_crds::snapshot::BudgetSnapshot;
use weaver_store::ledger::LedgerTotals;
use weaver_store::{Scope, UsageStore};

use crate::UsageApi;
use crate::auth::{Authorize, Resource};
use crate::error::ApiError;
use crate::params::Params;

/// What the usage API needs to know about one ApiKey.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's budget (amount in nano-dollars, period), if it has one.
    pub budget: Option<BudgetSnapshot>,
    /// The budget ledger's view of the current period, where the embedding
    /// binary enforces budgets.
    pub ledger: Option<LedgerAmounts>,
}

/// Where a budget stands in the ledger, in nano-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerAmounts {
    /// Spend settled by the gateways.
    pub settled: u64,
    /// Slices leased to gateways and not spent yet.
    pub leased: u64,
    /// Held by requests in flight on the answering gateway (part of its slice).
    pub reserved: u64,
}

impl LedgerAmounts {
    /// The ledger's `totals` for the key's current period, with `reserved`
    /// held by requests in flight on the answering process (0 where none run,
    /// as in the operator).
    pub fn new(totals: &LedgerTotals, reserved: u64) -> Self {
        LedgerAmounts { settled: totals.settled_nanos, leased: totals.leased_nanos, reserved }
    }
}

/// Looks keys up in whatever the embedding binary holds (the gateway's live
/// snapshot; the operator's ApiKey cache). Async so it may ask an API server.
pub trait KeyDirectory: Send + Sync + 'static {
    /// `Ok(None)` when the key does not exist (404).
    fn key(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Option<KeyInfo>, ApiError>> + Send;
}

/// The answer. Open for more members; clients ignore members they do not know.
#[derive(Serialize)]
struct KeyStatus {
    namespace: String,
    name: String,
    /// `null` for a key without a budget.
    budget: Option<BudgetStatus>,
    usage: PeriodUsage,
}

#[derive(Serialize)]
struct BudgetStatus {
    limit_usd: String,
    period: BudgetPeriod,
    /// Start of the current period, RFC 3339 (UTC calendar; `total` starts at the epoch).
    period_start: String,
    /// `limit - spent`, never below zero.
    remaining_usd: String,
    /// Settled, leased and reserved amounts, where the ledger is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger: Option<LedgerStatus>,
}

#[derive(Serialize)]
struct LedgerStatus {
    settled_usd: String,
    leased_usd: String,
    reserved_usd: String,
}

/// Usage since the start of the current period (for a key without a budget:
/// since the epoch, all of it).
#[derive(Serialize)]
struct PeriodUsage {
    since: String,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: String,
}

pub(crate) async fn handle<S: UsageStore + Clone + 'static, A: Authorize, K: KeyDirectory>(
    State(api): State<Arc<UsageApi<S, A, K>>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let requested = [namespace.clone()];
    api.authorized(&headers, Resource::Key { name: &name }, &requested).await?;
    Params::parse(query.as_deref()).check(&[])?;
    let Some(info) = api.keys.key(&namespace, &name).await? else {
        return Err(ApiError::not_found("key_not_found", format!("no ApiKey {namespace}/{name}")));
    };
    let now_s = jiff::Timestamp::now().as_second();
    let start_s = period_start(info.budget.map(|b| b.period), now_s);
    let since_ms = start_s.saturating_mul(1000);
    let usage = api
        .store
        .usage(&Scope::key(namespace.as_str(), name.as_str()), since_ms)
        .await
        .map_err(ApiError::from_store)?;
    let rfc3339 = jiff::Timestamp::from_second(start_s).map(|t| t.to_string()).unwrap_or_default();
    let budget = info.budget.map(|b| BudgetStatus {
        limit_usd: b.amount.to_string(),
        period: b.period,
        period_start: rfc3339.clone(),
        remaining_usd: Usd(b.amount.0.saturating_sub(usage.cost_nanos)).to_string(),
        ledger: info.ledger.map(|l| LedgerStatus {
            settled_usd: Usd(l.settled).to_string(),
            leased_usd: Usd(l.leased).to_string(),
            reserved_usd: Usd(l.reserved).to_string(),
        }),
    });
    let usage = PeriodUsage {
        since: rfc3339,
        requests: usage.requests,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: Usd(usage.cost_nanos).to_string(),
    };
    Ok(Json(KeyStatus { namespace, name, budget, usage }).into_response())
}
