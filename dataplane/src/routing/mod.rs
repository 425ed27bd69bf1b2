//! Picking a channel among a model's candidates: the lowest priority value
//! with any weight wins; within it, a weighted random draw.

use rand::Rng;
use weaver_crds::snapshot::Candidate;

/// The index of the chosen candidate among those `eligible` says may serve.
pub(crate) fn pick(candidates: &[Candidate], eligible: impl Fn(usize) -> bool, rng: &mut impl Rng) -> Option<usize> {
    let usable = |(i, c): &(usize, &Candidate)| c.weight > 0 && eligible(*i);
    let best = candidates.iter().enumerate().filter(usable).map(|(_, c)| c.priority).min()?;
    let group = || candidates.iter().enumerate().filter(usable).filter(move |(_, c)| c.priority == best);
    let total: u64 = group().map(|(_, c)| u64::from(c.weight)).sum();
    let mut ticket = rng.random_range(0..total);
    for (i, c) in group() {
        let w = u64::from(c.weight);
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cand(channel: u32, weight: u32, priority: i32) -> Candidate {
        Candidate { channel, model: 0, weight, priority }
    }

    #[test]
    fn lower_priority_values_are_preferred_and_zero_weight_drains() {
        let mut rng = StdRng::seed_from_u64(1);
        let cands = [cand(0, 100, 1), cand(1, 0, 0), cand(2, 5, 0)];
        for _ in 0..100 {
            assert_eq!(pick(&cands, |_| true, &mut rng).map(|i| cands[i].channel), Some(2));
        }
        assert_eq!(pick(&[cand(0, 0, 0)], |_| true, &mut rng), None);
        assert_eq!(pick(&cands, |i| i != 2, &mut rng), Some(0), "the next tier once the best is tried");
    }

    proptest! {
        #[test]
        fn a_weighted_split_converges(a in 1u32..1000, b in 1u32..1000, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let cands = [cand(0, a, 0), cand(1, b, 0)];
            let n = 20_000;
            let hits = (0..n).filter(|_| pick(&cands, |_| true, &mut rng).map(|i| cands[i].channel) == Some(0)).count();
            let expected = f64::from(a) / f64::from(a + b);
            let got = hits as f64 / f64::from(n);
            // Binomial standard deviation is at most 0.0036 here; allow 5 sigma.
            prop_assert!((got - expected).abs() < 0.018, "expected {expected}, got {got}");
        }
    }
}
