//! The body of a streamed answer: upstream events go to the client as they
//! arrive (framed by [`sse`], decided on by the provider's stream decoder);
//! the request's context — and with it the usage record — is completed when
//! the stream ends, fails, times out or the client goes away.

pub(crate) mod sse;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::Sleep;

use crate::api::{ApiError, Dialect};
use crate::pipeline::Context;
use crate::providers::{EventAction, StreamDecoder, UpstreamBody};
use sse::SseFramer;

/// Scheduler turns given to the upstream connection before writing what has
/// been gathered (it needs two to hand over a chunk it has already read).
const MAX_TURNS: u8 = 2;

/// The error event of a stream cut by the channel's total timeout.
fn total_timeout() -> ApiError {
    ApiError::gateway_timeout("The stream exceeded the channel's total timeout.")
}

/// Largest write assembled from chunks that arrived together.
const MAX_BATCH: usize = 16 * 1024;

pub(crate) struct RelayBody {
    pending: Option<Bytes>,
    pending_error: Option<ApiError>,
    /// The decoder said the stream failed: the rest of the frame is not relayed.
    failed: Option<ApiError>,
    batch: Coalesced,
    /// Turns given to the upstream connection since the last chunk arrived.
    yielded: u8,
    inner: Option<UpstreamBody>,
    framer: SseFramer,
    decoder: StreamDecoder,
    /// Taken by `Drop` when the rest of the stream is read after the client left.
    ctx: Option<Context>,
    deadline: Pin<Box<Sleep>>,
}

impl RelayBody {
    /// `first` is the frame already read to commit the response.
    pub fn new(
        first: Bytes,
        inner: UpstreamBody,
        decoder: StreamDecoder,
        mut ctx: Context,
        deadline: Pin<Box<Sleep>>,
    ) -> Self {
        ctx.record.capture.stream();
        let mut relay = Self {
            pending: None,
            pending_error: None,
            failed: None,
            batch: Coalesced::default(),
            yielded: 0,
            inner: Some(inner),
            framer: SseFramer::default(),
            decoder,
            ctx: Some(ctx),
            deadline,
        };
        let out = relay.relay(first);
        relay.pending = (!out.is_empty()).then_some(out);
        if let Some(error) = relay.failed.take() {
            relay.pending_error = Some(error);
            relay.inner = None;
        }
        relay
    }

    /// What of one upstream frame goes to the client: the frame itself
    /// (zero-copy) when every complete event in it passes as it is.
    fn relay(&mut self, frame: Bytes) -> Bytes {
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.record.capture.frame(&frame);
        }
        let mut events = self.framer.push(frame);
        let mut edited: Option<BytesMut> = None;
        while let Some(range) = events.next_range() {
            let event = &events.data[range.clone()];
            match (self.decoder.event(event), &mut edited) {
                (EventAction::Pass, Some(out)) => out.extend_from_slice(event),
                (EventAction::Pass, None) => {}
                (EventAction::Drop, out) => {
                    out.get_or_insert_with(|| BytesMut::from(&events.data[..range.start]));
                }
                (EventAction::Replace(bytes), out) => {
                    out.get_or_insert_with(|| BytesMut::from(&events.data[..range.start])).extend_from_slice(&bytes);
                }
                (EventAction::Fail(error), out) => {
                    out.get_or_insert_with(|| BytesMut::from(&events.data[..range.start]));
                    self.failed = Some(error);
                    break;
                }
            }
        }
        edited.map_or(events.data, BytesMut::freeze)
    }

    /// The upstream closed: relay an unterminated last event, settle the record.
    fn upstream_done(&mut self) {
        self.inner = None;
        let rest = self.framer.finish().map(|rest| (self.decoder.event(&rest), rest));
        for (action, rest) in rest.into_iter().chain([(self.decoder.end(), Bytes::new())]) {
            match action {
                EventAction::Pass => self.batch.push(rest),
                EventAction::Drop => {}
                EventAction::Replace(bytes) => self.batch.push(bytes),
                EventAction::Fail(error) => {
                    self.failed.get_or_insert(error);
                }
            }
        }
        match self.decoder.failure() {
            // Relayed as the upstream wrote it; recorded as a stream that failed.
            Some(error) if self.failed.is_none() => self.record_failure(&error),
            _ => {
                if let Some(ctx) = self.ctx.as_mut() {
                    ctx.record.status = 200;
                    ctx.record.usage = self.decoder.usage();
                }
            }
        }
    }

    /// Writes what has been gathered. The total timeout is checked here too,
    /// so that an upstream that never makes the relay wait is still cut.
    fn write(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.end_with(total_timeout());
        }
        self.yielded = 0;
        Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.batch).into_bytes()))))
    }

    /// Stops reading upstream: what already arrived goes out first, the error
    /// event on the next poll.
    fn end_with(&mut self, error: ApiError) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.batch.is_empty() {
            return self.fail(error);
        }
        self.pending_error = Some(error);
        self.inner = None;
        Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.batch).into_bytes()))))
    }

    /// Ends the stream with an OpenAI-style error event, which the SDKs raise as
    /// an exception instead of mistaking a cut stream for a complete answer.
    /// Tokens produced until then are charged (the usage the upstream gave).
    fn fail(&mut self, error: ApiError) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.inner = None;
        let dialect = self.ctx.as_ref().map_or(Dialect::OpenAi, |ctx| ctx.record.endpoint.dialect());
        self.record_failure(&error);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(error.sse_event_in(dialect))))))
    }

    /// Records a stream that failed: the error's status, the usage so far,
    /// the attempt's error (counted against the channel).
    fn record_failure(&mut self, error: &ApiError) {
        let Some(ctx) = self.ctx.as_mut() else { return };
        let _entered = ctx.span.enter();
        tracing::warn!(code = error.category, message = %error.message, "stream ended early");
        ctx.record.status = error.status.as_u16();
        ctx.record.usage = self.decoder.usage();
        if let Some(attempt) = ctx.record.last_attempt_mut() {
            attempt.error = Some(error.category);
            attempt.counts_against_channel = true;
        }
        ctx.answer_broke();
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(error) = this.pending_error.take() {
            return this.fail(error);
        }
        loop {
            let Some(inner) = this.inner.as_mut() else {
                let out = std::mem::take(&mut this.batch);
                return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out.into_bytes()))));
            };
            match Pin::new(inner).poll_frame(cx) {
                // Waiting for the upstream: the total timeout must wake us too
                // (polled here only, where a waker is needed, not per event).
                Poll::Pending if this.batch.is_empty() => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        return this.end_with(total_timeout());
                    }
                    return Poll::Pending;
                }
                // hyper's client hands over one chunk per turn of its own
                // task; giving it turns while chunks keep coming lets what is
                // already read go out in one write, not one per event. No
                // timer: nothing waits for data that has not arrived.
                Poll::Pending if this.yielded < MAX_TURNS => {
                    this.yielded += 1;
                    // A task that wakes itself while it runs goes to the back
                    // of tokio's run queue (`schedule_task(.., is_yield: true)`),
                    // behind the connection task that the poll above woke.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return this.write(cx),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let out = this.relay(data);
                        this.batch.push(out);
                        if let Some(error) = this.failed.take() {
                            return this.end_with(error);
                        }
                        // More may follow right behind; look again before writing.
                        this.yielded = 0;
                        if this.batch.len() >= MAX_BATCH {
                            return this.write(cx);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.end_with(ApiError::bad_gateway(
                        "upstream_stream_error",
                        format!("The upstream stream broke off: {e}"),
                    ));
                }
                Poll::Ready(None) => {
                    this.upstream_done();
                    if let Some(error) = this.failed.take() {
                        return this.end_with(error);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.pending_error.is_none() && self.inner.is_none() && self.batch.is_empty()
    }
}

/// Frames that arrived together: the first is kept as is, later ones are
/// appended (copying only when there is more than one).
#[derive(Default)]
struct Coalesced {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Coalesced {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(data),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity(first.len() + data.len());
                more.extend_from_slice(first);
                more.extend_from_slice(&data);
                self.more = Some(more);
            }
            (Some(_), Some(more)) => more.extend_from_slice(&data),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn len(&self) -> usize {
        self.more.as_ref().map_or_else(|| self.first.as_ref().map_or(0, Bytes::len), BytesMut::len)
    }

    fn into_bytes(self) -> Bytes {
        self.more.map(BytesMut::freeze).or(self.first).unwrap_or_default()
    }
}

/// How long the rest of a finished answer is read, after the client left, to
/// catch its usage chunk.
const USAGE_TAIL: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for RelayBody {
    /// The client left (or the stream ended): the record keeps the usage seen
    /// so far and its status (499 unless the answer was complete).
    fn drop(&mut self) {
        let Some(mut ctx) = self.ctx.take() else { return };
        if ctx.record.usage.is_none() {
            ctx.record.usage = self.decoder.usage();
        }
        // Clients often stop reading at `finish_reason`; the usage chunk is
        // right behind it, and reading it costs the upstream nothing more.
        // (An answer cut mid-generation is not read on: that would pay for
        // tokens nobody wants.)
        let (Some(mut inner), true, None) = (self.inner.take(), self.decoder.finished(), self.decoder.usage()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // The client is gone: its concurrency slot is free while the usage is read.
        ctx.release_concurrency();
        let mut framer = std::mem::take(&mut self.framer);
        let mut decoder = std::mem::replace(&mut self.decoder, StreamDecoder::closed());
        runtime.spawn(async move {
            let read = async {
                while decoder.usage().is_none() {
                    match http_body_util::BodyExt::frame(&mut inner).await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let mut events = framer.push(data);
                                while let Some(range) = events.next_range() {
                                    decoder.event(&events.data[range]);
                                }
                            }
                        }
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(USAGE_TAIL, read).await;
            ctx.record.usage = decoder.usage();
            // The record is finished as the context goes.
            drop(ctx);
        });
    }
}
