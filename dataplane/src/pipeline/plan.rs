//! `plan`: the route for key x model, handed out one attempt at a time by
//! the policy's strategy (`routing`), with what the strategy needs to know
//! about the request worked out once.

use rand::Rng;
use weaver_crds::routing_policy::Strategy;

use super::admit::demand;
use crate::api::{ApiError, ApiRoute, RequestBody};
use crate::limits::Nanos;
use crate::routing::{self, Member, Pick, Policy, Route};
use crate::state::Runtime;

/// The route of one request, and which of its members it tried.
pub(super) struct Plan<'rt> {
    route: &'rt Route,
    /// Bit i: member i served an attempt of this request.
    tried: u128,
    /// Bit i: member i serves a fallback model the key may not use.
    barred: u128,
    facts: routing::Request,
}

pub(super) fn plan<'rt>(
    rt: &'rt Runtime,
    key: u32,
    request: &RequestBody<'_>,
    endpoint: ApiRoute,
    body_bytes: usize,
) -> Result<Plan<'rt>, ApiError> {
    let model = request.model.as_ref();
    let route = rt.route(key, model).ok_or_else(|| ApiError::model_not_found(model))?;
    if !route.members().iter().any(|m| m.weight > 0) {
        return Err(ApiError::unavailable(
            "no_channel_available",
            format!("No channel can serve `{model}` right now."),
        ));
    }
    // Only what the strategy reads: nothing for most.
    let mut facts = routing::Request::default();
    match route.policy.strategy {
        Strategy::CacheAware => facts.prefix = routing::prefix::prefix_hash(request, route.policy.prefix_messages),
        Strategy::LowestCost => {
            let demand = demand(endpoint, request, body_bytes);
            (facts.input_tokens, facts.output_tokens) = (demand.input, demand.output);
        }
        _ => {}
    }
    Ok(Plan { route, tried: 0, barred: rt.barred_fallbacks(key, route), facts })
}

impl<'rt> Plan<'rt> {
    pub fn policy(&self) -> &'rt Policy {
        &self.route.policy
    }

    pub fn member(&self, i: usize) -> &'rt Member {
        &self.route.members()[i]
    }

    /// The most any candidate would charge for `input` and `output` tokens,
    /// in nano-dollars (what a budget reserves before the first attempt).
    pub fn max_cost(&self, _rt: &Runtime, input: u64, output: u64) -> u64 {
        let candidates = self.route.members().iter().enumerate().filter(|(i, _)| !bit(self.barred, *i));
        candidates.map(|(_, m)| m.prices.max_cost(input, output).0).max().unwrap_or(0)
    }

    /// The member for the next attempt, passing over `skip`. A first attempt
    /// may panic (serve despite health); a retry goes only where the channel
    /// is fine, to one this request has not tried when there is one.
    pub fn pick(&self, retry: bool, skip: u128, now: Nanos, rng: &mut impl Rng) -> Pick {
        let skip = skip | self.barred;
        if !retry {
            return self.route.pick(&self.facts, skip, true, now, rng);
        }
        match self.route.pick(&self.facts, skip | self.tried, false, now, rng) {
            Pick::Member(i) => Pick::Member(i),
            // Tried members too (they cover the untried ones' answer).
            _ => self.route.pick(&self.facts, skip, false, now, rng),
        }
    }

    /// Whether member `i` served an attempt of this request.
    pub fn tried(&self, i: usize) -> bool {
        bit(self.tried, i)
    }

    pub fn mark_tried(&mut self, i: usize) {
        if i < 128 {
            self.tried |= 1 << i;
        }
    }
}

/// Bit `i` of a member set (members past the 128th are in none).
fn bit(set: u128, i: usize) -> bool {
    i < 128 && set & (1 << i) != 0
}
