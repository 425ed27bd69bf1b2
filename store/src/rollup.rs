//! Rollup deltas: what one batch of newly inserted records adds to the hourly and
//! daily rollup rows. Computed here rather than in SQL so both databases share one
//! definition (and the latency bucket function lives in one place, the sketch's).

use std::collections::BTreeMap;

use weaver_crds::protocol::LatencySketch;

use crate::StoreError;
use crate::query::{Rollup, floor_day, floor_hour};
use crate::record::UsageRecord;

/// The identity of one rollup row. Ordered, so every writer upserts rows in the same
/// order and two replicas' transactions cannot deadlock on each other's rows.
/// Borrowed from the batch's records: a rollup row costs no string copies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RollupKey<'a> {
    pub bucket_ms: i64,
    pub namespace: &'a str,
    pub api_key: &'a str,
    pub model: &'a str,
    /// '' when no channel answered.
    pub channel: &'a str,
}

/// What a batch adds to one rollup row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// Nano-dollars.
    pub cost_nanos: u64,
    /// Request durations, milliseconds.
    pub latency: LatencySketch,
}

impl Totals {
    fn add(&mut self, r: &UsageRecord) {
        self.requests += 1;
        self.errors += u64::from(r.outcome.is_error());
        self.input_tokens = self.input_tokens.saturating_add(r.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.output_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(r.cached_input_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(r.cost_nanos);
        // Durations beyond 2^53 ms do not exist; the sketch's top bucket is ~17 min.
        self.latency.record(r.duration_ms as f64);
    }

    fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_input_tokens = self.cached_input_tokens.saturating_add(other.cached_input_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.latency.merge(&other.latency);
    }
}

/// Rollup rows with what a batch adds to each, in key order.
pub(crate) type Deltas<'a> = BTreeMap<RollupKey<'a>, Totals>;

/// The hourly and the daily rollup rows a set of records touches. Each
/// record is added once, to its hour; the days are summed from the hours (a
/// batch touches far fewer hour rows than it has records).
pub(crate) fn deltas<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> [(Rollup, Deltas<'a>); 2] {
    let mut hourly = Deltas::new();
    for r in records {
        let key = RollupKey {
            bucket_ms: floor_hour(r.time),
            namespace: &r.namespace,
            api_key: &r.api_key,
            model: &r.model,
            channel: r.channel.as_deref().unwrap_or_default(),
        };
        hourly.entry(key).or_default().add(r);
    }
    let mut daily = Deltas::new();
    for (k, t) in &hourly {
        daily.entry(RollupKey { bucket_ms: floor_day(k.bucket_ms), ..k.clone() }).or_default().merge(t);
    }
    [(Rollup::Hourly, hourly), (Rollup::Daily, daily)]
}

/// A sketch as a dense count list (index = bucket), the form both databases store.
pub(crate) fn dense(sketch: &LatencySketch) -> Vec<u64> {
    let len = sketch.counts.last().map_or(0, |(b, _)| usize::from(*b) + 1);
    let mut out = vec![0; len];
    for (b, n) in &sketch.counts {
        out[usize::from(*b)] = *n;
    }
    out
}

/// A dense sketch as text: `{1,0,2}` (a Postgres array literal) or `[1,0,2]` (JSON).
pub(crate) fn dense_text(sketch: &LatencySketch, open: char, close: char) -> String {
    let mut text = String::with_capacity(64);
    text.push(open);
    for (i, n) in dense(sketch).iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&n.to_string());
    }
    text.push(close);
    text
}

/// Narrows an unsigned amount to a signed database column.
pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// Widens a database column back; negative values mean a damaged row.
pub(crate) fn to_u64(column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { column, value: value.to_string() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::record::{Outcome, tests::sample};

    #[test]
    fn one_row_per_bucket_and_dimensions() {
        let mut a = sample();
        a.time = 10 * crate::query::DAY_MS + 5;
        let mut b = a.clone();
        b.time += crate::query::HOUR_MS;
        b.outcome = Outcome::UpstreamError;
        let mut c = a.clone();
        c.channel = None;
        let [(first, hourly), (second, daily)] = deltas([&a, &b, &c]);
        assert!(matches!((first, second), (Rollup::Hourly, Rollup::Daily)));
        assert_eq!(hourly.len(), 3);
        assert_eq!(daily.len(), 2);
        let with_channel = daily.values().find(|t| t.requests == 2).cloned().unwrap_or_default();
        assert_eq!((with_channel.errors, with_channel.cost_nanos), (1, 2 * a.cost_nanos));
        assert_eq!(with_channel.latency.count(), 2);
    }

    #[test]
    fn dense_sketches_put_counts_at_their_bucket() {
        let sketch = LatencySketch { counts: vec![(0, 2), (3, 1)] };
        assert_eq!(dense(&sketch), vec![2, 0, 0, 1]);
        assert_eq!(dense_text(&sketch, '{', '}'), "{2,0,0,1}");
        assert_eq!(dense_text(&LatencySketch::default(), '[', ']'), "[]");
    }
}
