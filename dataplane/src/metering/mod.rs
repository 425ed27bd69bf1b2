//! Metering: one usage record per request that reached authentication, with
//! every upstream attempt, finished exactly once when the request's context
//! drops (also when the client goes away mid-stream). Finishing settles what
//! admission took (the key's concurrency slot; its token reservation,
//! corrected to the tokens the record shows) and feeds the
//! per-key and per-channel totals the operator's reports carry, the
//! Prometheus metrics, and — with a store — the usage store's batch writer
//! (a bounded queue; never a wait); none takes a process-wide lock.

mod capture;
mod estimate;
mod gen_ai;
mod metrics;
mod redact;
mod reports;
mod usage;

use std::net::IpAddr;
use std::time::Duration;

use smallvec::SmallVec;
use weaver_store::{AttemptRecord, Name, Outcome, WriterHandle};

pub(crate) use capture::{BodyLog, Capture};
pub(crate) use estimate::Said;
pub(crate) use gen_ai::provider_name as gen_ai_provider_name;
pub(crate) use metrics::{Label, Metrics, RefusalReason, RouteSeries};
pub(crate) use reports::report;
pub(crate) use usage::{OpenAiUsage, ResponsesUsage, Usage};

/// Input tokens of a chat request, counted with the gateway's tokenizer
/// (see `estimate`), and whether part of it was extrapolated.
pub(crate) fn count_input_tokens(chat_request: &[u8]) -> (u64, bool) {
    estimate::input(chat_request, chat_request.len())
}

use crate::api::ApiRoute;
use crate::clock::{unix_millis, unix_seconds};
use crate::limits::Nanos;
use crate::pipeline::Admission;
use crate::state::{ChannelRuntime, KeyRuntime, ModelRuntime, Runtime};
use gen_ai::{DurationLabels, GenAiLabels, TokenUsageLabels};
use metrics::{Direction, RequestLabels, RouteLabels, Scope, TokenLabels, with_series};

/// Status recorded for requests the client abandoned (nginx's convention).
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// Where finished records go: the usage store's writer.
pub(crate) struct UsageSink {
    pub writer: WriterHandle,
    /// This gateway in the records.
    pub replica: Name,
    /// Serve requests while records cannot be kept (the queue and the spool
    /// are full), instead of refusing them with 503.
    pub fail_open: bool,
}

impl UsageSink {
    /// Whether a new request must be refused: records could not be kept.
    pub fn refuses(&self) -> bool {
        !self.fail_open && self.writer.is_full()
    }
}

/// One upstream attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    /// Index into the runtime's channels, and into that channel's models.
    pub channel: u32,
    pub model: u32,
    /// The upstream's status, or the gateway's for a failure without one
    /// (502 unreachable, 504 timed out).
    pub status: u16,
    /// Low-cardinality reason of a failure.
    pub error: Option<&'static str>,
    /// The failure is the channel's fault (health, reports).
    pub counts_against_channel: bool,
    /// From the start of the request to the attempt's first byte.
    pub first_byte: Option<Duration>,
}

/// What is known about one request; the pipeline's stages fill it in.
#[derive(Debug)]
pub(crate) struct UsageRecord {
    pub endpoint: ApiRoute,
    /// Index into the runtime's keys, once authenticated.
    pub key: Option<u32>,
    /// The HTTP status the client got (499 until an answer is complete).
    pub status: u16,
    /// Inline for the usual one or two attempts.
    pub attempts: SmallVec<[Attempt; 2]>,
    /// Tokens of the answering attempt, when the upstream reported them.
    pub usage: Option<Usage>,
    /// The bodies as far as they are kept: to count tokens the upstream did
    /// not report, and for keys that log bodies.
    pub capture: Capture,
    /// The client's address (behind trusted proxies, the forwarded one).
    pub client: IpAddr,
    /// When the request arrived, in unix milliseconds.
    pub time: i64,
    /// The request id, made by the gateway.
    pub request_id: http::HeaderValue,
    /// The client's own id for the request, when it sent one.
    pub client_request_id: Option<http::HeaderValue>,
    /// The model the client asked for, kept only when the request was
    /// refused before any channel was tried (the record has no route to
    /// name it); see [`requested_model`].
    pub requested_model: Option<Box<str>>,
}

/// The longest requested model name a record keeps, in bytes: a client's
/// string goes into the usage store, and model names are far shorter.
const REQUESTED_MODEL_MAX_BYTES: usize = 256;

/// A requested model name as a refused request's record keeps it: at most
/// [`REQUESTED_MODEL_MAX_BYTES`] bytes, cut on a character boundary.
pub(crate) fn requested_model(model: &str) -> Box<str> {
    let mut end = model.len().min(REQUESTED_MODEL_MAX_BYTES);
    while !model.is_char_boundary(end) {
        end -= 1;
    }
    model[..end].into()
}

impl UsageRecord {
    pub fn new(
        endpoint: ApiRoute,
        key: Option<u32>,
        client: IpAddr,
        request_id: http::HeaderValue,
        client_request_id: Option<http::HeaderValue>,
        capture: Capture,
    ) -> Self {
        Self {
            endpoint,
            key,
            status: CLIENT_CLOSED,
            attempts: SmallVec::new(),
            usage: None,
            capture,
            client,
            time: unix_millis(),
            request_id,
            client_request_id,
            requested_model: None,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self.status {
            CLIENT_CLOSED => Outcome::ClientAborted,
            200..=299 => Outcome::Ok,
            _ if self.attempts.is_empty() => Outcome::Rejected,
            _ => Outcome::UpstreamError,
        }
    }

    /// The attempt that produced the answer (or the last one tried).
    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    pub fn last_attempt_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut()
    }

    /// Tokens the request used, to settle its reservation: the usage when
    /// known; none at all when no upstream answered (nothing ran); `None`
    /// (unknown: the reservation stands) for an answer without usage.
    fn tokens_used(&self) -> Option<u64> {
        match self.usage {
            Some(u) => Some(u.input.saturating_add(u.output)),
            None if self.attempts.iter().all(|a| a.first_byte.is_none()) => Some(0),
            None => None,
        }
    }
}

/// What a finished request gives back: what its admission took, settled at
/// `now` (on the gateway's limiter clock).
pub(crate) struct Settle<'a> {
    pub admission: &'a mut Admission,
    pub now: Nanos,
}

/// Completes a record: settles what admission took (the key's concurrency
/// slot, its token reservation corrected to the tokens used), totals for the
/// reports, Prometheus series, the usage store (when there is one), a log line.
pub(crate) fn finish(
    metrics: &Metrics,
    sink: Option<&UsageSink>,
    rt: &Runtime,
    record: &UsageRecord,
    settle: Settle<'_>,
    elapsed: Duration,
) {
    let key = record.key.and_then(|k| rt.keys.get(k as usize));
    if let Some(k) = key {
        settle.admission.settle(k, record.tokens_used(), settle.now);
    }
    let last = record.last_attempt();
    let route = last.and_then(|a| {
        let channel = rt.channels.get(a.channel as usize)?;
        Some((channel, channel.models.get(a.model as usize)?))
    });
    // Counted only here, and only when the upstream reported nothing for an
    // answer it gave: never on the path where usage is reported.
    let estimate = if record.usage.is_none() { record.capture.estimate() } else { None };
    let usage_known = record.usage.is_some() || estimate.is_some();
    let usage = record.usage.or(estimate.map(|e| e.usage)).unwrap_or_default();
    let cost = route.map_or(0, |(_, m)| {
        m.prices.cost_with_cache_writes(usage.input, usage.cached_input, usage.cache_write, usage.output).0
    });
    if let Some(k) = key {
        settle.admission.settle_budgets(rt, k, cost);
        k.state.totals.add(usage.input, usage.output, cost);
        k.state.last_used.store(unix_seconds(), std::sync::atomic::Ordering::Relaxed);
    }
    let answering = record.attempts.len().checked_sub(1);
    for (i, attempt) in record.attempts.iter().enumerate() {
        let Some(channel) = rt.channels.get(attempt.channel as usize) else { continue };
        let state = &channel.state;
        if Some(i) == answering {
            state.totals.add(usage.input, usage.output, cost);
            state.cached_input_tokens.fetch_add(usage.cached_input, std::sync::atomic::Ordering::Relaxed);
        } else {
            state.totals.add(0, 0, 0);
        }
        if attempt.counts_against_channel {
            state.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(ttfb) = attempt.first_byte {
            state.record_latency(ttfb.as_secs_f64() * 1000.0);
        }
    }

    // The route's kept series; its `Scope` ones only where that label set is
    // the same on every request of the route (see `RouteSeries`).
    let scoped = route
        .filter(|(c, _)| !metrics.per_key && key.is_some_and(|k| k.namespace == c.namespace))
        .map(|(_, m)| &m.series);
    let scope = || Scope {
        namespace: key.map_or_else(Label::none, |k| k.namespace.clone()),
        key: metrics.per_key.then(|| key.map_or_else(Label::none, |k| k.name.clone())),
        model: route.map_or_else(Label::none, |(_, m)| m.label.clone()),
        channel: route.map_or_else(Label::none, |(c, _)| c.label.clone()),
    };
    let answered = scoped.filter(|_| record.status == 200).map(|s| &s.answered);
    with_series(
        &metrics.requests,
        answered,
        || RequestLabels { scope: scope(), code: record.status },
        |c| {
            c.inc();
        },
    );
    if let Some((c, m)) = route {
        let labels = || RouteLabels { model: m.label.clone(), channel: c.label.clone() };
        if let Some(ttfb) = last.and_then(|a| a.first_byte) {
            with_series(&metrics.first_token, Some(&m.series.first_token), labels, |h| h.observe(ttfb.as_secs_f64()));
        }
        with_series(&metrics.duration, Some(&m.series.duration), labels, |h| h.observe(elapsed.as_secs_f64()));
        for (direction, n) in [
            (Direction::input, usage.input),
            (Direction::cached_input, usage.cached_input),
            (Direction::cache_write, usage.cache_write),
            (Direction::output, usage.output),
            (Direction::reasoning, usage.reasoning),
        ] {
            if n > 0 {
                let kept = scoped.map(|s| &s.tokens[direction as usize]);
                with_series(
                    &metrics.tokens,
                    kept,
                    || TokenLabels { scope: scope(), direction },
                    |c| {
                        c.inc_by(n);
                    },
                );
            }
        }
        if cost > 0 {
            with_series(&metrics.cost, scoped.map(|s| &s.cost), scope, |c| {
                c.inc_by(cost as f64 / 1e9);
            });
        }
        if let Some(operation) = gen_ai::operation_name(record.endpoint) {
            record_gen_ai(metrics, record, (c, m), operation, usage_known.then_some(usage), elapsed);
        }
    }
    if let Some(sink) = sink {
        let resolved = Resolved { key, route, usage, estimated: estimate.is_some(), cost_nanos: cost };
        let stored = stored_record(sink, rt, record, resolved, elapsed);
        if sink.writer.try_record(stored).is_err() {
            metrics.usage_records_lost.inc();
            tracing::error!("usage record lost: the usage queue is full or closed");
        }
    }
    tracing::debug!(
        client = %record.client,
        endpoint = record.endpoint.path(),
        status = record.status,
        outcome = ?record.outcome(),
        attempts = record.attempts.len(),
        input_tokens = usage.input,
        output_tokens = usage.output,
        usage_known = record.usage.is_some(),
        estimated = estimate.is_some(),
        estimate_extrapolated = estimate.is_some_and(|e| e.scaled),
        cost_nanos = cost,
        duration_ms = elapsed.as_millis() as u64,
        "request finished"
    );
}

/// The GenAI semantic-convention series of an inference request that reached
/// a channel: its duration (with `error_type` when it failed), its time to
/// first token when it succeeded, and its tokens when they are known.
fn record_gen_ai(
    metrics: &Metrics,
    record: &UsageRecord,
    (channel, model): (&ChannelRuntime, &ModelRuntime),
    operation: &'static str,
    usage: Option<Usage>,
    elapsed: Duration,
) {
    let series = &model.series.gen_ai[gen_ai::operation_index(operation)];
    let base = || GenAiLabels {
        operation,
        provider: channel.gen_ai_provider,
        request_model: model.label.clone(),
        response_model: model.upstream.clone(),
    };
    let last = record.last_attempt();
    let error_type = match record.status {
        200..=299 => "",
        CLIENT_CLOSED => "cancelled",
        _ => last.and_then(|a| a.error).unwrap_or("_OTHER"),
    };
    let gen_ai = &metrics.gen_ai;
    if error_type.is_empty()
        && let Some(ttfb) = last.and_then(|a| a.first_byte)
    {
        let kept = Some(&series.time_to_first_token);
        with_series(&gen_ai.time_to_first_token, kept, base, |h| h.observe(ttfb.as_secs_f64()));
    }
    if let Some(u) = usage {
        // Embeddings have no output tokens to count.
        let output = (operation != "embeddings").then_some(("output", u.output, &series.output));
        for (token_type, n, kept) in std::iter::once(("input", u.input, &series.input)).chain(output) {
            let labels = || TokenUsageLabels { base: base(), token_type };
            with_series(&gen_ai.token_usage, Some(kept), labels, |h| h.observe(n as f64));
        }
    }
    // Failures' series differ by `error_type`; they are not the hot path.
    let kept = error_type.is_empty().then_some(&series.duration);
    let labels = || DurationLabels { base: base(), error_type };
    with_series(&gen_ai.request_duration, kept, labels, |h| h.observe(elapsed.as_secs_f64()));
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The store's form of a record (names resolved through the runtime).
/// What `finish` already looked up in the runtime for a record.
struct Resolved<'rt> {
    key: Option<&'rt KeyRuntime>,
    /// The answering (last) attempt's channel and model.
    route: Option<(&'rt ChannelRuntime, &'rt ModelRuntime)>,
    /// Reported, or counted by the gateway (`estimated`).
    usage: Usage,
    estimated: bool,
    cost_nanos: u64,
}

fn stored_record(
    sink: &UsageSink,
    rt: &Runtime,
    record: &UsageRecord,
    Resolved { key, route, usage, estimated, cost_nanos }: Resolved<'_>,
    elapsed: Duration,
) -> weaver_store::UsageRecord {
    let bodies = record.capture.logs_bodies().then(|| {
        // The channels' credentials are redacted from logged bodies too (an
        // upstream error may echo what it was sent).
        let credentials: SmallVec<[&str; 2]> = record
            .attempts
            .iter()
            .filter_map(|a| rt.snapshot.channels.get(a.channel as usize)?.credential.as_ref())
            .map(|c| c.0.as_str())
            .collect();
        record.capture.bodies(&credentials)
    });
    // The snapshot's names are shared with the record, not copied.
    let name = |c: u32| rt.channels.get(c as usize).map(|c| Name::from(&c.label)).unwrap_or_default();
    weaver_store::UsageRecord {
        request_id: record.request_id.to_str().unwrap_or_default().to_owned(),
        // Sane ids are ASCII, so `to_str` does not fail.
        client_request_id: record.client_request_id.as_ref().and_then(|v| Some(v.to_str().ok()?.to_owned())),
        time: record.time,
        namespace: key.map(|k| Name::from(&k.namespace)).unwrap_or_default(),
        api_key: key.map(|k| Name::from(&k.name)).unwrap_or_default(),
        channel: route.map(|(c, _)| Name::from(&c.label)),
        model: route
            .map(|(_, m)| Name::from(&m.label))
            .or_else(|| record.requested_model.as_deref().map(Name::from))
            .unwrap_or_default(),
        upstream_model: route.map(|(_, m)| Name::from(&m.upstream)).unwrap_or_default(),
        status: record.status,
        outcome: record.outcome(),
        input_tokens: usage.input,
        output_tokens: usage.output,
        cached_input_tokens: usage.cached_input,
        cache_write_tokens: usage.cache_write,
        reasoning_tokens: usage.reasoning,
        estimated,
        cost_nanos,
        duration_ms: millis(elapsed),
        ttft_ms: record.last_attempt().and_then(|a| a.first_byte).map(millis),
        replica: sink.replica.clone(),
        attempts: record
            .attempts
            .iter()
            .map(|a| AttemptRecord {
                channel: name(a.channel),
                status: a.status,
                error: a.error.map(str::to_owned),
                ttft_ms: a.first_byte.map(millis),
            })
            .collect(),
        bodies: bodies.flatten(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_requested_model_is_kept_whole_or_cut_on_a_character() {
        assert_eq!(&*super::requested_model("gpt-4o"), "gpt-4o");
        let long = "é".repeat(200);
        let kept = super::requested_model(&long);
        assert_eq!((kept.len(), kept.chars().all(|c| c == 'é')), (256, true));
        assert_eq!(super::requested_model(&format!("x{long}")).len(), 255, "not inside a character");
    }
}
