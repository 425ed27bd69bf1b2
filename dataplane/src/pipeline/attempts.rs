//! `attempts`: one upstream attempt at a time through the channel's
//! provider adapter, on the member the plan picks, until one answers or the
//! policy says stop. A stream's first chunk is read before the response is
//! committed, so a timeout measures time to first token and a failed attempt
//! can still go to another channel; once a byte went to the client nothing
//! is retried (a stream that breaks later ends with an error event).
//!
//! A failure is retried when its class is in the policy's `retryOn`, the
//! policy allows another attempt, the overall deadline has not passed, a
//! channel is available for it (another one at once; the same one after a
//! jittered backoff) and the retry budget covers it. Every attempt's outcome
//! feeds its channel's passive health (ejection, rate limiting) and latency.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::Context;
use super::plan::Plan;
use crate::api::{ApiError, RequestBody, Rewrite, StreamOptionsEdit};
use crate::metering::Attempt;
use crate::parts::Parts;
use crate::providers::{Answering, ErrorFields, Operation, StreamDecoder, UpstreamBody, UpstreamError};
use crate::routing::metrics::{AttemptLabels, ChannelLabels, ModelLabels, NamespaceLabels, ReasonLabels};
use crate::routing::{DEFAULT_RATE_LIMITED, Lease, Member, Pick, Policy};
use crate::state::{ChannelRuntime, Runtime};

/// Largest upstream error body read; the message is cut shorter still.
const ERROR_BODY_LIMIT: usize = 1024 * 1024;

/// Largest JSON answer to a streamed request that is re-framed as a stream.
const JSON_FOR_STREAM_LIMIT: usize = 16 * 1024 * 1024;

/// A successful attempt's answer.
pub(crate) enum Answer {
    Whole {
        /// The answer in order (a renamed model between two slices of it).
        parts: Parts,
        content_type: HeaderValue,
    },
    Stream {
        /// The chunk read before committing the response.
        first: Bytes,
        body: UpstreamBody,
        decoder: StreamDecoder,
        /// The channel's `total` timeout, from the attempt's start.
        deadline: Instant,
    },
}

/// The last failed attempt.
struct Failed {
    error: UpstreamError,
    /// The member it was made on.
    member: usize,
}

/// Why no further attempt is made.
enum Stop {
    /// No member can serve (or none may take a retry).
    NoMember,
    /// The retry budget is spent.
    Budget,
    /// The overall deadline does not leave room.
    Deadline,
    /// Every member stayed at its caps for the queue timeout.
    Saturated,
}

pub(super) async fn run(
    ctx: &mut Context,
    rt: &Runtime,
    request: &RequestBody<'_>,
    original: &Bytes,
    client_headers: &HeaderMap,
    plan: &mut Plan<'_>,
) -> Result<Answer, ApiError> {
    let operation = ctx.record.endpoint.operation().unwrap_or(Operation::Chat);
    let policy = plan.policy();
    let overall = policy.retry.timeout.map(|t| ctx.started + t);
    policy.budget.deposit(ctx.gw.nanos(ctx.started));
    let mut failed: Option<Failed> = None;
    let mut backoff = None;
    // Attempts that count against `retry.attempts`.
    let mut made = 0;
    // Members that cannot take this request in their format: trying one
    // again would fail the same way.
    let mut untranslatable = 0u128;
    loop {
        if let Some(f) = &failed {
            let retried = f.error.retry_class().is_some_and(|class| policy.retry.on(class));
            let in_time = overall.is_none_or(|d| Instant::now() < d);
            if !(retried && made < policy.retry.attempts && in_time) {
                return Err(give_up(ctx, rt, plan, request, failed, Stop::NoMember));
            }
        }
        let retry = failed.as_ref().map(|f| (f, &mut backoff));
        let (index, lease) = match choose(ctx, plan, retry, untranslatable, overall).await {
            Ok(chosen) => chosen,
            Err(stop) => return Err(give_up(ctx, rt, plan, request, failed, stop)),
        };
        let member = plan.member(index);
        let channel = &rt.channels[member.channel as usize];
        plan.mark_tried(index);
        made += 1;
        count_attempt(ctx, rt, plan, member, failed.as_ref());
        let mut without_stream_options = false;
        let (result, started) = loop {
            let started = Instant::now();
            let attempt =
                Try { channel, member, operation, without_stream_options, started, overall, policy, client_headers };
            match attempt.run(ctx, request, original).await {
                Err(e) if request.stream && !without_stream_options && e.refuses_member("stream_options") => {
                    tracing::warn!(
                        channel = channel.label.as_str(),
                        "upstream refuses `stream_options`; streams on this channel go without it"
                    );
                    channel.state.refuses_stream_options.store(true, Ordering::Relaxed);
                    without_stream_options = true;
                }
                other => break (other, started),
            }
        };
        let now = Instant::now();
        let nanos = ctx.gw.nanos(now);
        let elapsed = now.saturating_duration_since(started);
        match result {
            Ok(answer) => {
                member.upstream.health.succeeded(nanos, &policy.outlier);
                member.upstream.latency.observe(elapsed.as_nanos() as f64, nanos);
                channel.attempts_ok.inc();
                if matches!(answer, Answer::Stream { .. }) {
                    ctx.upstream = Some(lease);
                }
                return Ok(answer);
            }
            Err(error) => {
                drop(lease);
                if let UpstreamError::Translation(_) = error {
                    // The request, not the channel: nothing was sent.
                    tracing::debug!(channel = channel.label.as_str(), error = %error, "request not in this channel's format");
                    if index < 128 {
                        untranslatable |= 1 << index;
                    }
                } else {
                    tracing::warn!(channel = channel.label.as_str(), error = %error, "upstream attempt failed");
                }
                passive_health(ctx, channel, member, policy, &error, elapsed, nanos);
                failed = Some(Failed { error, member: index });
            }
        }
    }
}

/// Finds the member for the next attempt, never one of `never`, and takes
/// its slot. A retry is
/// charged to the budget, and waits the backoff when it goes to a channel
/// this request already tried; when every member is at its caps, waits
/// (boundedly) for the best one.
async fn choose(
    ctx: &Context,
    plan: &Plan<'_>,
    mut retry: Option<(&Failed, &mut Option<backon::ExponentialBackoff>)>,
    never: u128,
    overall: Option<Instant>,
) -> Result<(usize, Lease), Stop> {
    let policy = plan.policy();
    let metrics = &ctx.gw.metrics.routing;
    // Members found full since the last pick (the pick raced another request).
    let mut skip = 0u128;
    let (mut charged, mut waited) = (false, false);
    let mut queue_until = None;
    loop {
        let now = Instant::now();
        let nanos = ctx.gw.nanos(now);
        let pick = plan.pick(retry.is_some(), skip | never, nanos, &mut rand::rng());
        match pick {
            Pick::Exhausted => return Err(Stop::NoMember),
            Pick::Full(i) => {
                let member = plan.member(i);
                let until = *queue_until.get_or_insert(now + member.caps.queue_timeout);
                let until = overall.map_or(until, |d| until.min(d));
                if now >= until {
                    return Err(Stop::Saturated);
                }
                // Listening before looking again: a slot given back in
                // between still wakes this request.
                let mut released = std::pin::pin!(member.upstream.released());
                released.as_mut().enable();
                if member.upstream.full(&member.caps, ctx.gw.nanos(Instant::now())) {
                    // A request-rate cap frees up at a known time; a
                    // concurrency cap when a slot comes back.
                    let rate_wait = member.upstream.rate_wait(&member.caps, nanos);
                    let wake = if rate_wait.is_zero() { until } else { (now + rate_wait).min(until) };
                    let _ = tokio::time::timeout_at(wake, released).await;
                }
                skip = 0;
            }
            Pick::Member(i) => {
                if let Some((_, backoff)) = retry.as_mut() {
                    if !charged {
                        if !policy.budget.try_withdraw(nanos, policy.budget_rule) {
                            let labels = NamespaceLabels { namespace: policy.namespace.clone() };
                            metrics.retry_budget_exhausted.get_or_create(&labels).inc();
                            return Err(Stop::Budget);
                        }
                        charged = true;
                    }
                    if plan.tried(i) && !waited {
                        waited = true;
                        let waits = backoff.get_or_insert_with(|| policy.retry.backoff());
                        let wait = waits.next().unwrap_or(policy.retry.backoff_max);
                        if overall.is_some_and(|d| now + wait >= d) {
                            return Err(Stop::Deadline);
                        }
                        tokio::time::sleep(wait).await;
                        // Things changed while waiting: pick again.
                        continue;
                    }
                }
                let member = plan.member(i);
                match member.upstream.acquire(&member.caps, policy.outlier, nanos) {
                    Some(lease) => return Ok((i, lease)),
                    None => skip |= 1 << i,
                }
            }
        }
    }
}

/// Counts a retry and an attempt on a lower tier than the route's first.
fn count_attempt(ctx: &Context, rt: &Runtime, plan: &Plan<'_>, member: &Member, failed: Option<&Failed>) {
    let policy = plan.policy();
    let metrics = &ctx.gw.metrics.routing;
    if let Some(f) = failed {
        let labels = ReasonLabels { namespace: policy.namespace.clone(), reason: f.error.category() };
        metrics.retries.get_or_create(&labels).inc();
    }
    if member.tier > 0 {
        let first = plan.member(0);
        let requested = rt.channels.get(first.channel as usize).and_then(|c| c.models.get(first.model as usize));
        if let Some(model) = requested {
            let labels = ModelLabels { namespace: policy.namespace.clone(), model: model.label.clone() };
            metrics.fallbacks.get_or_create(&labels).inc();
        }
    }
}

/// What a failed attempt says about its channel: a pause the upstream asked
/// for (`Retry-After`, or the default for a 429), a failure that may eject
/// it, or — for the client's own mistakes — that it is up. A timeout also
/// counts as a (long) latency.
fn passive_health(
    ctx: &Context,
    channel: &ChannelRuntime,
    member: &Member,
    policy: &Policy,
    error: &UpstreamError,
    elapsed: Duration,
    now: crate::limits::Nanos,
) {
    let metrics = &ctx.gw.metrics.routing;
    let labels = AttemptLabels {
        namespace: channel.namespace.clone(),
        channel: channel.label.clone(),
        result: error.category(),
    };
    metrics.attempts.get_or_create(&labels).inc();
    let health = &member.upstream.health;
    match error.retry_after() {
        Some(wait) => health.rate_limited(now, wait, &policy.outlier),
        None if error.rate_limited() => health.rate_limited(now, DEFAULT_RATE_LIMITED, &policy.outlier),
        None => {}
    }
    if error.counts_against_channel() {
        if let Some(period) = health.failed(now, &policy.outlier) {
            ejected(ctx, channel, period);
        }
    } else if !error.rate_limited() {
        health.succeeded(now, &policy.outlier);
    }
    if matches!(error, UpstreamError::Timeout(_)) {
        member.upstream.latency.observe(elapsed.as_nanos() as f64, now);
    }
}

impl Context {
    /// Counts a failure of the answering channel after its answer began (a
    /// stream that broke off or ran out of time), with the same ejection
    /// rules as a failed attempt.
    pub(crate) fn answer_broke(&self) {
        let (Some(lease), Some(attempt)) = (&self.upstream, self.record.last_attempt()) else { return };
        let now = self.gw.nanos(Instant::now());
        if let (Some(period), Some(channel)) = (lease.failed(now), self.rt.channels.get(attempt.channel as usize)) {
            ejected(self, channel, period);
        }
    }
}

/// Counts and logs an ejection of `channel` for `period` nanoseconds.
fn ejected(ctx: &Context, channel: &ChannelRuntime, period: crate::limits::Nanos) {
    let labels = ChannelLabels { namespace: channel.namespace.clone(), channel: channel.label.clone() };
    ctx.gw.metrics.routing.ejections.get_or_create(&labels).inc();
    tracing::warn!(
        channel = channel.label.as_str(),
        ejected_for = %humantime::format_duration(Duration::from_millis(period / 1_000_000)),
        "channel ejected from routing after failures"
    );
}

/// The error the client gets when no further attempt is made: the last
/// failure's, or why none was made.
fn give_up(
    ctx: &Context,
    rt: &Runtime,
    plan: &Plan<'_>,
    request: &RequestBody<'_>,
    failed: Option<Failed>,
    stop: Stop,
) -> ApiError {
    if let Some(f) = failed {
        let name = rt.channels.get(plan.member(f.member).channel as usize).map_or("", |c| c.label.as_str());
        return f.error.into_api_error(name);
    }
    let model = &request.model;
    match stop {
        Stop::Saturated => {
            let labels = NamespaceLabels { namespace: plan.policy().namespace.clone() };
            ctx.gw.metrics.routing.saturated.get_or_create(&labels).inc();
            let mut error = ApiError::unavailable(
                "channel_saturated",
                format!("Every channel that serves `{model}` is at its concurrency or rate cap; try again shortly."),
            );
            error.retry_after = Some(1);
            error
        }
        Stop::NoMember | Stop::Budget | Stop::Deadline => {
            ApiError::unavailable("no_channel_available", format!("No channel can serve `{model}` right now."))
        }
    }
}

/// One attempt on one member.
struct Try<'a> {
    channel: &'a ChannelRuntime,
    member: &'a Member,
    operation: Operation,
    without_stream_options: bool,
    /// When the attempt began.
    started: Instant,
    /// The request's deadline until its answer begins.
    overall: Option<Instant>,
    policy: &'a Policy,
    client_headers: &'a HeaderMap,
}

impl Try<'_> {
    async fn run(
        &self,
        ctx: &mut Context,
        request: &RequestBody<'_>,
        original: &Bytes,
    ) -> Result<Answer, UpstreamError> {
        ctx.record.attempts.push(Attempt {
            channel: self.member.channel,
            model: self.member.model,
            status: 0,
            error: None,
            counts_against_channel: false,
            first_byte: None,
        });
        let result = self.exchange(ctx, request, original).await;
        let elapsed = ctx.started.elapsed();
        if let Some(attempt) = ctx.record.last_attempt_mut() {
            match &result {
                Ok(_) => {
                    attempt.status = 200;
                    attempt.first_byte = Some(elapsed);
                }
                Err(e) => {
                    attempt.status = e.status();
                    attempt.error = Some(e.category());
                    attempt.counts_against_channel = e.counts_against_channel();
                }
            }
        }
        result
    }

    async fn exchange(
        &self,
        ctx: &mut Context,
        request: &RequestBody<'_>,
        original: &Bytes,
    ) -> Result<Answer, UpstreamError> {
        let channel = self.channel;
        let target = &channel.models[self.member.model as usize];
        let stream = request.stream && self.operation.streams();
        let refused = self.without_stream_options || channel.state.refuses_stream_options.load(Ordering::Relaxed);
        let stream_options = match (stream, refused, channel.stream_usage) {
            (false, _, _) | (true, false, false) => StreamOptionsEdit::Keep,
            (true, true, _) => StreamOptionsEdit::Remove,
            (true, false, true) => StreamOptionsEdit::IncludeUsage,
        };
        // The runtime knows the public name maps to another (`rename`); the
        // client named the public one — or another model, when this is a
        // fallback, which then goes upstream under its own name.
        let model = if target.label.as_str() == request.model.as_ref() {
            target.rename.as_deref().map(|r| r.upstream_json())
        } else {
            Some(&target.upstream_json)
        };
        let body = channel
            .adapter
            .prepare(self.operation, request, original, Rewrite { model, stream_options }, target)
            .map_err(UpstreamError::Translation)?;

        // A non-streamed answer sends its headers only once it is complete, so
        // `total` bounds all of it; `firstByte` is time to first token of a
        // stream. The policy's per-try limit bounds either, and its overall
        // deadline everything until the answer begins.
        let within = |limit: Duration| self.policy.retry.per_try.map_or(limit, |p| limit.min(p));
        let until = |limit: Duration| {
            let at = self.started + limit;
            self.overall.map_or(at, |d| at.min(d))
        };
        let total = self.started + channel.total;
        let (first_byte_deadline, deadline) = if stream {
            (until(within(channel.first_byte.min(channel.total))), until(channel.total))
        } else {
            let whole = until(within(channel.total));
            (whole, whole)
        };
        let limit = round(first_byte_deadline.saturating_duration_since(self.started));
        let sent = channel.adapter.send(
            self.operation,
            target.uri_for(self.operation, stream),
            body,
            &ctx.record.request_id,
            self.client_headers,
        );
        let response =
            tokio::time::timeout_at(first_byte_deadline, sent).await.map_err(|_| UpstreamError::Timeout(limit))??;
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            return Err(status_error(&parts, &mut body, deadline).await);
        }
        let answering = Answering {
            operation: self.operation,
            rename: target.rename.as_ref(),
            model: request.model.as_ref(),
            include_usage: request.include_usage,
            drop_usage_chunk: stream_options == StreamOptionsEdit::IncludeUsage && !request.include_usage,
            request,
        };
        if !stream {
            let whole = read_bounded(&mut body, usize::MAX, deadline).await?;
            let (answer, usage) = channel.adapter.decode_whole(whole, &answering).map_err(error_with_200)?;
            ctx.record.usage = usage;
            ctx.record.capture.whole(&answer, usage.is_some());
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/json"));
            return Ok(Answer::Whole { parts: answer, content_type });
        }
        let decoder = channel.adapter.stream_decoder(&answering);
        let is_event_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !is_event_stream {
            // Some upstreams answer a stream request with plain JSON: an error
            // object with a 200, or the whole completion.
            let whole = read_bounded(&mut body, JSON_FOR_STREAM_LIMIT, deadline).await?;
            let events = channel.adapter.json_for_stream(&whole).map_err(error_with_200)?;
            return Ok(Answer::Stream { first: events, body: UpstreamBody::Local(None), decoder, deadline: total });
        }
        let first = loop {
            match tokio::time::timeout_at(first_byte_deadline, body.frame()).await {
                Err(_) => return Err(UpstreamError::Timeout(limit)),
                Ok(None) => break Bytes::new(),
                Ok(Some(Err(e))) => return Err(UpstreamError::Body(e.to_string())),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        break data;
                    }
                }
            }
        };
        Ok(Answer::Stream { first, body, decoder, deadline: total })
    }
}

/// The error an upstream's non-success answer describes (its body read up
/// to [`ERROR_BODY_LIMIT`] until `deadline`).
pub(crate) async fn status_error(
    parts: &http::response::Parts,
    body: &mut UpstreamBody,
    deadline: Instant,
) -> UpstreamError {
    let error = read_bounded(body, ERROR_BODY_LIMIT, deadline).await.unwrap_or_default();
    UpstreamError::Status {
        status: parts.status,
        error: ErrorFields::parse(&error),
        retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
    }
}

/// The error an error object sent with a 200 describes.
pub(crate) fn error_with_200(error: ErrorFields) -> UpstreamError {
    UpstreamError::Status { status: error.implied_status(), error, retry_after: None }
}

/// Reads a body until it ends, `limit` bytes are in (the rest is left), or
/// the deadline passes.
pub(crate) async fn read_bounded(
    body: &mut UpstreamBody,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, UpstreamError> {
    let read = async {
        // Most answers arrive in one frame: keep it; copy only when more follow.
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut len = 0;
        while len < limit {
            let Some(frame) = body.frame().await else { break };
            let frame = frame.map_err(|e| UpstreamError::Body(e.to_string()))?;
            let Ok(mut data) = frame.into_data() else { continue };
            data.truncate(limit - len);
            len += data.len();
            match (&first, &mut more) {
                (None, _) => first = Some(data),
                (Some(head), None) => {
                    let mut joined = BytesMut::with_capacity(len.max(head.len() * 2));
                    joined.extend_from_slice(head);
                    joined.extend_from_slice(&data);
                    more = Some(joined);
                }
                (Some(_), Some(joined)) => joined.extend_from_slice(&data),
            }
        }
        Ok(more.map(BytesMut::freeze).or(first).unwrap_or_default())
    };
    let total = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout_at(deadline, read).await.map_err(|_| UpstreamError::Timeout(round(total)))?
}

/// A timeout as people read it (whole milliseconds).
fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

impl ErrorFields {
    /// The status an error object implies when it came with a 200.
    fn implied_status(&self) -> StatusCode {
        // Google's error object names the HTTP status it stands for.
        if let Some(status) =
            self.code.as_deref().and_then(|c| c.parse::<u16>().ok()).filter(|c| (400..600).contains(c))
            && let Ok(status) = StatusCode::from_u16(status)
        {
            return status;
        }
        let says = |word: &str| [&self.kind, &self.code].iter().any(|f| f.as_deref().is_some_and(|v| v.contains(word)));
        if says("overloaded") {
            // Anthropic's overloaded_error, which a 529 carries.
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        } else if says("quota") || says("rate_limit") {
            StatusCode::TOO_MANY_REQUESTS
        } else if says("authentication") || says("api_key") {
            StatusCode::UNAUTHORIZED
        } else if says("invalid_request") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}
