//! The request pipeline: one ordered list of stages over a per-request
//! [`Context`], each stage one module.
//!
//! 1. [`authenticate`] — run by the API dispatcher before any handler: key,
//!    client address.
//! 2. [`admit`] — may this key make this request now (model access, rate
//!    limits; budget reservations belong here too); what it takes is held
//!    in the context's [`Admission`] and settled when the context drops.
//! 3. [`plan`] — the candidates for key x model, in the policy's order.
//! 4. [`attempts`] — one upstream attempt per candidate through the channel's
//!    provider adapter; a stream's first chunk is peeked before the response
//!    is committed, so a failed attempt can still go elsewhere.
//! 5. [`respond`] — the answer, relayed (streams) or whole; the record is
//!    finished when the context drops, which for a stream is when its body
//!    ends or the client goes away.

mod admit;
mod attempts;
pub(crate) mod authenticate;
mod plan;
mod respond;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use tokio::time::Instant;

pub(crate) use admit::Admission;
pub(crate) use attempts::{error_with_200, read_bounded, status_error};
pub(crate) use authenticate::Caller;

use crate::api::{self, ApiError, ApiRoute, RequestBody, Response};
use crate::metering::{self, Capture, UsageRecord};
use crate::routing::Lease;
use crate::state::{Gateway, Runtime};

/// Everything one request carries through the stages.
pub(crate) struct Context {
    pub gw: Arc<Gateway>,
    /// The live configuration the request started with (kept to its end, even
    /// across a snapshot swap).
    pub rt: Arc<Runtime>,
    /// Index into the runtime's keys.
    pub key: u32,
    pub started: Instant,
    /// The request's span (request id), entered by work done outside the
    /// handler, such as a stream's relay.
    pub span: tracing::Span,
    pub record: UsageRecord,
    /// What admission took (rate-limit slot and reservation), settled on drop.
    pub admission: Admission,
    /// The answering attempt's slot on its channel, given back when the
    /// context drops (for a stream: when the relay ends).
    pub upstream: Option<Lease>,
}

impl Context {
    pub fn new(gw: Arc<Gateway>, caller: Caller) -> Self {
        gw.metrics.in_flight.inc();
        let capture = Capture::new(caller.log);
        let record = UsageRecord::new(
            caller.endpoint,
            Some(caller.key),
            caller.client,
            caller.request_id,
            caller.client_request_id,
            capture,
        );
        Self {
            gw,
            rt: caller.rt,
            key: caller.key,
            started: caller.started,
            span: tracing::Span::current(),
            record,
            admission: Admission::default(),
            upstream: None,
        }
    }

    /// The key's rate-limit headers for this request's answer (nothing for a
    /// key without limits): the levels admission saw, or — for an answer
    /// given before admission looked — the levels now, taking nothing.
    pub fn write_limit_headers(&self, headers: &mut HeaderMap) {
        let Some(key) = self.rt.keys.get(self.key as usize) else { return };
        let Some(limits) = &key.limits else { return };
        let levels =
            self.admission.levels.unwrap_or_else(|| limits.levels(&key.state.limits, self.gw.nanos(self.started)));
        headers.reserve(limits.header_count());
        limits.write_headers(&levels, headers);
    }

    /// How many headers [`write_limit_headers`](Self::write_limit_headers) adds.
    pub fn limit_header_count(&self) -> usize {
        self.rt.keys.get(self.key as usize).and_then(|k| k.limits.as_ref()).map_or(0, |l| l.header_count())
    }

    /// Gives the request's concurrency slot back before the context drops.
    pub fn release_concurrency(&mut self) {
        if let Some(key) = self.rt.keys.get(self.key as usize) {
            self.admission.release_slot(key);
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.gw.metrics.in_flight.dec();
        let _entered = self.span.enter();
        let elapsed = self.started.elapsed();
        let now = self.gw.nanos(self.started + elapsed);
        let settled = metering::Settle { admission: &mut self.admission, now };
        metering::finish(&self.gw.metrics, self.gw.usage.as_ref(), &self.rt, &self.record, settled, elapsed);
    }
}

/// Runs a chat, embeddings, Messages or token-counting request through the stages.
pub(crate) async fn serve<B>(gw: Arc<Gateway>, caller: Caller, headers: &HeaderMap, body: B) -> Response
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut ctx = Context::new(gw, caller);
    let answer = stages(&mut ctx, headers, body).await;
    respond::respond(ctx, answer)
}

async fn stages<B>(ctx: &mut Context, headers: &HeaderMap, body: B) -> Result<attempts::Answer, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let rt = ctx.rt.clone();
    let bytes = api::read_body(body, headers, ctx.gw.settings.max_body_bytes).await?;
    ctx.record.capture.request(&bytes);
    let request = RequestBody::parse(&bytes)?;
    // A refusal before any channel is tried still records the model asked for.
    let refused = |ctx: &mut Context, e: ApiError| {
        ctx.record.requested_model = Some(metering::requested_model(&request.model));
        e
    };
    let valid = match ctx.record.endpoint {
        ApiRoute::ChatCompletions | ApiRoute::CountTokens => request.require_messages(),
        ApiRoute::Messages => request.require_messages().and_then(|()| request.require_max_tokens()),
        _ => Ok(()),
    };
    valid.and_then(|()| admit::admit(ctx, &rt, &request, bytes.len())).map_err(|e| refused(ctx, e))?;
    let mut plan = plan::plan(&rt, ctx.key, &request, ctx.record.endpoint, bytes.len()).map_err(|e| refused(ctx, e))?;
    admit::reserve_budget(ctx, &rt, &plan, &request, bytes.len()).await.map_err(|e| refused(ctx, e))?;
    attempts::run(ctx, &rt, &request, &bytes, headers, &mut plan).await
}
