//! `attempts`: one upstream attempt per candidate of the plan, each through
//! its channel's provider adapter. A stream's first chunk is read before the
//! response is committed, so a timeout measures time to first token and a
//! failed attempt can still go to another channel. Typed upstream errors say
//! whether another attempt may follow.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use tokio::time::Instant;
use weaver_crds::snapshot::Candidate;

use super::Context;
use super::plan::Plan;
use crate::api::{ApiError, RequestBody, Rewrite, StreamOptionsEdit};
use crate::metering::Attempt;
use crate::parts::Parts;
use crate::providers::{Answering, ErrorFields, Operation, StreamDecoder, UpstreamBody, UpstreamError};
use crate::state::{ChannelRuntime, Runtime};

/// Attempts per request, until routing policies bring retry settings and a
/// retry budget (a refused `stream_options` is retried once on the same
/// channel and does not count).
const MAX_ATTEMPTS: usize = 1;

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
        /// The channel's `total` timeout.
        deadline: Instant,
    },
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
    let mut candidate = plan.next(&mut rand::rng()).ok_or_else(|| {
        ApiError::unavailable("no_channel_available", format!("No channel can serve `{}` right now.", request.model))
    })?;
    let mut without_stream_options = false;
    loop {
        let channel = &rt.channels[candidate.channel as usize];
        let attempt = Try { channel, candidate, operation, without_stream_options, client_headers };
        let error = match attempt.run(ctx, request, original).await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let name = channel.label.as_str();
        if request.stream && !without_stream_options && error.refuses_member("stream_options") {
            tracing::warn!(channel = name, "upstream refuses `stream_options`; streams on this channel go without it");
            channel.state.refuses_stream_options.store(true, Ordering::Relaxed);
            without_stream_options = true;
            continue;
        }
        tracing::warn!(channel = name, error = %error, "upstream attempt failed");
        without_stream_options = false;
        let next = (error.retryable() && ctx.record.attempts.len() < MAX_ATTEMPTS)
            .then(|| plan.next(&mut rand::rng()))
            .flatten();
        match next {
            Some(next) => candidate = next,
            None => return Err(error.into_api_error(name)),
        }
    }
}

/// One attempt on one candidate.
struct Try<'a> {
    channel: &'a ChannelRuntime,
    candidate: Candidate,
    operation: Operation,
    without_stream_options: bool,
    client_headers: &'a HeaderMap,
}

impl Try<'_> {
    async fn run(
        self,
        ctx: &mut Context,
        request: &RequestBody<'_>,
        original: &Bytes,
    ) -> Result<Answer, UpstreamError> {
        ctx.record.attempts.push(Attempt {
            channel: self.candidate.channel,
            model: self.candidate.model,
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
        let target = &channel.models[self.candidate.model as usize];
        let stream = request.stream && self.operation.streams();
        let refused = self.without_stream_options || channel.state.refuses_stream_options.load(Ordering::Relaxed);
        let stream_options = match (stream, refused, channel.stream_usage) {
            (false, _, _) | (true, false, false) => StreamOptionsEdit::Keep,
            (true, true, _) => StreamOptionsEdit::Remove,
            (true, false, true) => StreamOptionsEdit::IncludeUsage,
        };
        // The runtime knows the public name maps to another (`rename`); the
        // client named the public one.
        let model = target.rename.as_deref().map(|r| r.upstream_json());
        let body = channel
            .adapter
            .prepare(self.operation, request, original, Rewrite { model, stream_options }, target)
            .map_err(UpstreamError::Translation)?;

        let deadline = ctx.started + channel.total;
        // A non-streamed answer sends its headers only once it is complete, so
        // only `total` bounds it; `firstByte` is time to first token of a stream.
        let (first_byte_deadline, limit) = if stream {
            ((ctx.started + channel.first_byte).min(deadline), channel.first_byte.min(channel.total))
        } else {
            (deadline, channel.total)
        };
        let sent = channel.adapter.send(
            self.operation,
            target.uri(self.operation),
            body,
            &ctx.record.request_id,
            self.client_headers,
        );
        let response =
            tokio::time::timeout_at(first_byte_deadline, sent).await.map_err(|_| UpstreamError::Timeout(limit))??;
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            let error = read_bounded(&mut body, ERROR_BODY_LIMIT, deadline).await.unwrap_or_default();
            return Err(UpstreamError::Status {
                status: parts.status,
                error: ErrorFields::parse(&error),
                retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
            });
        }
        let answering = Answering {
            operation: self.operation,
            rename: target.rename.as_ref(),
            model: request.model.as_ref(),
            include_usage: request.include_usage,
            drop_usage_chunk: stream_options == StreamOptionsEdit::IncludeUsage && !request.include_usage,
        };
        let error_with_200 =
            |error: ErrorFields| UpstreamError::Status { status: error.implied_status(), error, retry_after: None };
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
            return Ok(Answer::Stream { first: events, body: UpstreamBody::Local(None), decoder, deadline });
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
        Ok(Answer::Stream { first, body, decoder, deadline })
    }
}

/// Reads a body until it ends, `limit` bytes are in (the rest is left), or
/// the deadline passes.
async fn read_bounded(body: &mut UpstreamBody, limit: usize, deadline: Instant) -> Result<Bytes, UpstreamError> {
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
