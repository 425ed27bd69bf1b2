//! `plan`: the candidates for key x model, handed out one attempt at a time in
//! the order the routing strategy gives.

use rand::Rng;
use weaver_crds::snapshot::Candidate;

use crate::api::{ApiError, RequestBody};
use crate::routing;
use crate::state::Runtime;

/// The candidates of one request; [`Plan::next`] gives each at most once.
pub(super) struct Plan<'rt> {
    candidates: &'rt [Candidate],
    /// Bit i: candidate i was handed out (candidates past 128 are never retried).
    tried: u128,
}

pub(super) fn plan<'rt>(rt: &'rt Runtime, key: u32, request: &RequestBody<'_>) -> Result<Plan<'rt>, ApiError> {
    let model = request.model.as_ref();
    let candidates = rt.candidates(key, model).ok_or_else(|| ApiError::model_not_found(model))?;
    let plan = Plan { candidates, tried: 0 };
    if !plan.candidates.iter().any(|c| c.weight > 0) {
        return Err(ApiError::unavailable(
            "no_channel_available",
            format!("No channel can serve `{model}` right now."),
        ));
    }
    Ok(plan)
}

impl Plan<'_> {
    /// The most any candidate would charge for `input` and `output` tokens,
    /// in nano-dollars (what a budget reserves before the first attempt).
    pub fn max_cost(&self, rt: &Runtime, input: u64, output: u64) -> u64 {
        self.candidates
            .iter()
            .filter_map(|c| rt.channels.get(c.channel as usize)?.models.get(c.model as usize))
            .map(|m| m.prices.cost(input, 0, output).0)
            .max()
            .unwrap_or(0)
    }

    /// The next candidate to try.
    pub fn next(&mut self, rng: &mut impl Rng) -> Option<Candidate> {
        let tried = self.tried;
        let untried = |i: usize| i >= 128 || tried & (1 << i) == 0;
        let i = routing::pick(self.candidates, untried, rng)?;
        if i < 128 {
            self.tried |= 1 << i;
        }
        self.candidates.get(i).copied()
    }
}
