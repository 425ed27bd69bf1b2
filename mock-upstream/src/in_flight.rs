//! Requests the upstream is answering at this instant, and the most it has
//! answered at once: what a concurrency limit in front of it must bound.
//!
//! A request counts from its arrival (the handler starts once the whole
//! request is read) until its response body has been produced to the end or
//! abandoned (a dropped connection drops the body). hyper drops a body as
//! soon as it has taken the last frame, before that frame is flushed, so by
//! the time a client has read a whole answer the request no longer counts:
//! a client that sends its next request only after reading the last one can
//! never make the count exceed its own concurrency.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// The counter; shared by the server and the [`Slot`]s it hands out.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// Counts one more request until the returned slot drops.
    pub fn enter(self: &Arc<Self>) -> Slot {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Slot(self.clone())
    }

    /// Requests being answered now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// The most requests answered at once since the start or the last
    /// [`reset_peak`](Self::reset_peak).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak from the requests being answered now.
    pub fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::SeqCst);
    }
}

/// One request being answered; leaves the count when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    /// `response` with this slot tied to its body, which keeps its size (a
    /// `Content-Length` stays one) and its frames.
    pub fn hold_until_sent(self, response: Response) -> Response {
        response.map(|inner| Body::new(Counted { inner, _slot: self }))
    }
}

/// A response body holding its request's [`Slot`].
struct Counted {
    inner: Body,
    _slot: Slot,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // `Body` is `Unpin` (a boxed body), so `Counted` is too.
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
