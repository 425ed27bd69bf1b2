//! The envelope around every client request: its id (the client's
//! `x-request-id` when sane, else a new one) in a tracing span around the
//! request — so in every log line about it —, handed to the API (which
//! forwards it upstream and records it), and in the answer; and a panic anywhere in the
//! request's handling becomes an OpenAI-shaped 500 instead of a dropped
//! connection.
//!
//! Written as a plain tower service (no boxing, no per-request clone of the
//! service stack) because it wraps every request.

use std::future::Future;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use crate::api::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::api::ApiError;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen id kept.
const MAX_LEN: usize = 128;

/// Request ids.
pub(crate) struct RequestId;

impl RequestId {
    /// For a request that somehow has none.
    pub fn none() -> HeaderValue {
        HeaderValue::from_static("-")
    }
}

/// Printable, short, and free of anything a log parser could trip on.
fn sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
}

/// A per-process random prefix and a counter: cheaper than a UUID, unique
/// enough to find one request in the logs of many replicas.
pub(crate) fn new_id() -> HeaderValue {
    static IDS: OnceLock<(u32, AtomicU64)> = OnceLock::new();
    let (prefix, next) = IDS.get_or_init(|| (rand::random(), AtomicU64::new(1)));
    let n = next.fetch_add(1, Ordering::Relaxed);
    let mut id = Id { bytes: [0; 25], len: 0 };
    let mut cursor = std::io::Cursor::new(&mut id.bytes[..]);
    if write!(cursor, "{prefix:08x}-{n:x}").is_err() {
        return RequestId::none();
    }
    id.len = cursor.position() as usize;
    // Shared, so the copies for the answer and the upstream cost no allocation.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id)).unwrap_or_else(|_| RequestId::none())
}

/// A generated id: 8 hex digits, a dash, at most 16 more.
struct Id {
    bytes: [u8; 25],
    len: usize,
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EnvelopeLayer;

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope { inner }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Envelope<S> {
    inner: S,
}

/// A service told each request's id before it is called (so the id need not
/// be written into the request).
pub(crate) trait TakesRequestId {
    fn set_request_id(&mut self, id: HeaderValue);
}

impl<S, B> Service<http::Request<B>> for Envelope<S>
where
    S: Service<http::Request<B>, Response = Response> + TakesRequestId,
{
    type Response = Response;
    type Error = S::Error;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = request.headers().get(&X_REQUEST_ID).filter(|v| sane(v)).cloned().unwrap_or_else(new_id);
        let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
        self.inner.set_request_id(id.clone());
        // The inner service does work in `call` itself (routing,
        // authentication): a panic there is caught too.
        let called = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
        };
        if called.is_err() {
            span.in_scope(|| tracing::error!("the gateway panicked on this request"));
        }
        EnvelopeFuture { inner: called.ok().map(|f| f.instrument(span)), id: Some(id) }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct EnvelopeFuture<F> {
        // `None`: the inner service panicked while it was called.
        #[pin]
        inner: Option<Instrumented<F>>,
        id: Option<HeaderValue>,
    }
}

impl<F, E> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let failed = || ApiError::internal("The gateway failed on this request.").response();
        let mut response = match this.inner.as_pin_mut() {
            // Logged where it was caught, in `call`.
            None => failed(),
            Some(inner) => match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                Ok(Poll::Ready(Ok(response))) => response,
                Err(_) => {
                    tracing::error!("the gateway panicked on this request");
                    failed()
                }
            },
        };
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_client_ids_are_kept() {
        assert!(sane(&HeaderValue::from_static("req_123-abc.def:1")));
        assert!(!sane(&HeaderValue::from_static("")));
        assert!(!sane(&HeaderValue::from_static("has space")));
        assert!(!sane(&HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap_or_else(|_| RequestId::none())));
        assert_ne!(new_id(), new_id());
    }

    #[tokio::test]
    async fn a_panic_becomes_an_openai_shaped_500_with_the_request_id() {
        #[derive(Clone)]
        struct Panics;
        impl TakesRequestId for Panics {
            fn set_request_id(&mut self, _: HeaderValue) {}
        }
        impl Service<http::Request<()>> for Panics {
            type Response = Response;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Response, std::convert::Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                panic!("boom")
            }
        }
        let mut service = EnvelopeLayer.layer(Panics);
        let request = http::Request::builder().header("x-request-id", "abc").body(());
        let response = match request {
            Ok(r) => service.call(r).await,
            Err(e) => panic!("{e}"),
        };
        let response = response.unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-request-id"], "abc");
    }
}
