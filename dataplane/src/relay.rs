//! The body of a streamed answer: upstream frames go to the client as they
//! arrive (through the SSE scanner); the request's record is completed when the
//! stream ends, fails, times out or the client goes away.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::error::ApiError;
use crate::meter::Meter;
use crate::sse::SseScanner;

pub struct RelayBody {
    pending: Option<Bytes>,
    inner: Option<Incoming>,
    scanner: SseScanner,
    meter: Meter,
    deadline: Pin<Box<Sleep>>,
}

impl RelayBody {
    /// `first` is the frame already read to commit the response.
    pub fn new(
        first: Bytes,
        inner: Incoming,
        mut scanner: SseScanner,
        meter: Meter,
        deadline: Pin<Box<Sleep>>,
    ) -> Self {
        let out = scanner.push(first);
        Self { pending: (!out.is_empty()).then_some(out), inner: Some(inner), scanner, meter, deadline }
    }

    /// Ends the stream with an OpenAI-style error event, which the SDKs raise as
    /// an exception instead of mistaking a cut stream for a complete answer.
    fn fail(&mut self, error: ApiError) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        tracing::warn!(code = error.code, message = %error.message, "stream ended early");
        self.inner = None;
        self.meter.status = error.status.as_u16();
        let mut event = b"data: ".to_vec();
        event.extend(error.body());
        event.extend_from_slice(b"\n\n");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            if this.deadline.as_mut().poll(cx).is_ready() {
                return this.fail(ApiError::gateway_timeout("The stream exceeded the channel's total timeout."));
            }
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let out = this.scanner.push(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(ApiError::bad_gateway(
                        "upstream_stream_error",
                        format!("The upstream stream broke off: {e}"),
                    ));
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    this.meter.status = 200;
                    let tail = this.scanner.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_none()
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        self.meter.usage = self.scanner.usage;
    }
}
