//! The request pipeline: one ordered list of stages over a per-request
//! [`Context`], each stage one module.
//!
//! 1. [`authenticate`] — run by the API dispatcher before any handler: key,
//!    client address.
//! 2. [`admit`] — may this key make this request now (model access; rate
//!    limits and budget reservations belong here).
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

use http::HeaderMap;
use hyper::body::Incoming;
use tokio::time::Instant;

pub(crate) use authenticate::Caller;

use crate::api::{self, ApiError, RequestBody, Response};
use crate::metering::{self, Capture, UsageRecord};
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
}

impl Context {
    pub fn new(gw: Arc<Gateway>, caller: Caller) -> Self {
        gw.metrics.in_flight.inc();
        let capture = Capture::new(caller.log);
        let record = UsageRecord::new(caller.endpoint, Some(caller.key), caller.client, caller.request_id, capture);
        Self { gw, rt: caller.rt, key: caller.key, started: caller.started, span: tracing::Span::current(), record }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.gw.metrics.in_flight.dec();
        let _entered = self.span.enter();
        metering::finish(&self.gw.metrics, self.gw.usage.as_ref(), &self.rt, &self.record, self.started.elapsed());
    }
}

/// Runs a chat or embeddings request through the stages.
pub(crate) async fn serve(gw: Arc<Gateway>, caller: Caller, headers: &HeaderMap, body: Incoming) -> Response {
    let mut ctx = Context::new(gw, caller);
    let answer = stages(&mut ctx, headers, body).await;
    respond::respond(ctx, answer)
}

async fn stages(ctx: &mut Context, headers: &HeaderMap, body: Incoming) -> Result<attempts::Answer, ApiError> {
    let rt = ctx.rt.clone();
    let bytes = api::read_body(body, headers, ctx.gw.settings.max_body_bytes).await?;
    ctx.record.capture.request(&bytes);
    let request = RequestBody::parse(&bytes)?;
    admit::admit(ctx, &rt, &request)?;
    let mut plan = plan::plan(&rt, ctx.key, &request)?;
    attempts::run(ctx, &rt, &request, &bytes, &mut plan).await
}
