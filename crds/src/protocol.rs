//! The wire contract between the operator and gateways, besides the snapshot:
//! what a gateway reports back. Pure data plus the mergeable latency sketch.
//!
//! Transport (HTTPS, `Authorization: Bearer <projected ServiceAccount token>`):
//! - `GET /v1/snapshots` — newline-delimited JSON, one [`Snapshot`] per line:
//!   the current one at once, then every new version as soon as it is built.
//! - `POST /v1/reports` — a [`GatewayReport`]; also the acknowledgement of the
//!   version the gateway applied.

use serde::{Deserialize, Serialize};

/// Path of the snapshot stream.
pub const SNAPSHOTS_PATH: &str = "/v1/snapshots";
/// Path gateways post reports to.
pub const REPORTS_PATH: &str = "/v1/reports";
/// Token audience the operator accepts (projected ServiceAccount tokens).
pub const TOKEN_AUDIENCE: &str = "llm-weaver";

/// What one gateway instance observed since it started. Counters are
/// cumulative for the instance, so a lost report loses nothing and the
/// receiver turns them into deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReport {
    /// Unique per process start (pod name + start time).
    pub instance: String,
    /// When the instance started (unix milliseconds), so a receiver can tell
    /// whether it has seen all of its counters.
    #[serde(default)]
    pub started_at: i64,
    /// The snapshot version the gateway serves with.
    pub applied_version: u64,
    pub channels: Vec<ChannelReport>,
    pub keys: Vec<KeyReport>,
}

/// Upstream outcomes for one channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelReport {
    pub namespace: String,
    pub name: String,
    pub requests: u64,
    /// Upstream failures: unreachable, timed out, 5xx, refused credentials.
    pub failures: u64,
    /// Time to the upstream's first byte.
    pub latency: LatencySketch,
    #[serde(default)]
    pub input_tokens: u64,
    /// Of `input_tokens`, those the upstream served from its prompt cache
    /// (their share shows how well `cache-aware` routing keeps caches warm).
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// Nano-dollars.
    #[serde(default)]
    pub cost: u64,
    /// The latest active health check probe (with `healthCheck` only).
    /// Probes are not in the counters above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
}

/// A gateway's latest health check probe of one channel, and its verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// When the probe finished (unix milliseconds).
    pub at: i64,
    /// Whether the upstream answered this probe.
    pub succeeded: bool,
    /// The verdict after the thresholds: `false` while the checks keep the
    /// channel out of routing on this gateway.
    pub healthy: bool,
    /// How long the probe took, in milliseconds.
    pub latency_ms: u64,
    /// Why it failed: the upstream's status and error category (never a
    /// credential or a body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Traffic of one client key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    pub namespace: String,
    pub name: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Nano-dollars.
    pub cost: u64,
    /// Unix seconds of the last request.
    pub last_used: Option<i64>,
}

/// Buckets per doubling: bucket bounds grow by 2^(1/4), so a percentile read
/// from the sketch is within ~19% of the true value.
const PER_DOUBLING: f64 = 4.0;
/// 1 ms .. ~2^20 ms (17 min).
const BUCKETS: usize = 80;

/// A latency histogram with fixed logarithmic buckets (milliseconds). Sketches
/// from many replicas merge by adding counts, so percentiles across replicas
/// are right, unlike averaging each replica's percentiles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySketch {
    /// Sparse: `(bucket, count)`, bucket ascending.
    pub counts: Vec<(u16, u64)>,
}

fn bucket_of(ms: f64) -> u16 {
    if ms <= 1.0 {
        return 0;
    }
    let b = (ms.log2() * PER_DOUBLING).ceil();
    (b as usize).min(BUCKETS - 1) as u16
}

/// Upper bound of a bucket, in milliseconds.
fn upper_bound(bucket: u16) -> f64 {
    2f64.powf(f64::from(bucket) / PER_DOUBLING)
}

impl LatencySketch {
    pub fn record(&mut self, ms: f64) {
        self.add(bucket_of(ms), 1);
    }

    fn add(&mut self, bucket: u16, n: u64) {
        match self.counts.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => self.counts[i].1 += n,
            Err(i) => self.counts.insert(i, (bucket, n)),
        }
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        for (b, n) in &other.counts {
            self.add(*b, *n);
        }
    }

    /// `self - earlier`, for sketches of the same cumulative series.
    pub fn since(&self, earlier: &LatencySketch) -> LatencySketch {
        let mut out = LatencySketch::default();
        for (b, n) in &self.counts {
            let before = earlier.counts.iter().find(|(eb, _)| eb == b).map_or(0, |(_, c)| *c);
            if *n > before {
                out.add(*b, n - before);
            }
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// The `q`-quantile (0..=1) in milliseconds: the upper bound of the bucket
    /// holding it. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(*b));
            }
        }
        self.counts.last().map(|(b, _)| upper_bound(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let mut s = LatencySketch::default();
        for ms in 1..=1000 {
            s.record(f64::from(ms));
        }
        let p95 = s.quantile(0.95).unwrap_or_default();
        assert!((950.0..=950.0 * 1.19).contains(&p95), "p95 {p95}");
        assert_eq!(LatencySketch::default().quantile(0.5), None);
    }

    proptest! {
        #[test]
        fn merged_sketches_equal_one_sketch_of_all_samples(a in proptest::collection::vec(0.1f64..100_000.0, 0..200),
                                                          b in proptest::collection::vec(0.1f64..100_000.0, 0..200)) {
            let (mut sa, mut sb, mut all) = (LatencySketch::default(), LatencySketch::default(), LatencySketch::default());
            for x in &a { sa.record(*x); all.record(*x); }
            for x in &b { sb.record(*x); all.record(*x); }
            let mut merged = sa.clone();
            merged.merge(&sb);
            prop_assert_eq!(&merged, &all);
            prop_assert_eq!(merged.since(&sa), sb);
        }
    }
}
