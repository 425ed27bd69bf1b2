//! The envelope around every client request: its id — always one the
//! gateway makes, so it is unique and safe as the usage record's identity —
//! and the client's own id when it sent a sane one (`x-client-request-id`,
//! OpenAI's name, or its own `x-request-id`), both in a tracing span around
//! the request — so in every log line about it — and in the answer
//! (`x-request-id`, `x-client-request-id`). The API is handed the gateway's id
//! (it forwards it upstream and records it); a panic anywhere in the request's
//! handling becomes an OpenAI-shaped 500 instead of a dropped connection.
//!
//! A client's id is never the record's identity: clients reuse ids (retries of
//! one request, a library that sets one id per session), and records keyed by
//! it would overwrite each other — requests unbilled. OpenAI answers its own
//! `x-request-id` and takes the client's as `X-Client-Request-Id`
//! (<https://platform.openai.com/docs/api-reference/debugging-requests>);
//! Envoy replaces an edge client's `x-request-id` by default.
//!
//! Written as a plain tower service (no boxing, no per-request clone of the
//! service stack) because it wraps every request.

use std::future::Future;
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

/// The header a client names its own id in (OpenAI's name), echoed in the answer.
pub(crate) static X_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-client-request-id");

/// Longest client-chosen id kept, in bytes.
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

/// The client's own id for a request: a sane `x-client-request-id`, else a
/// sane `x-request-id`. Shares the header's bytes (no allocation).
pub(crate) fn client_request_id(headers: &http::HeaderMap) -> Option<HeaderValue> {
    [&X_CLIENT_REQUEST_ID, &X_REQUEST_ID].into_iter().find_map(|name| headers.get(name).filter(|v| sane(v))).cloned()
}

/// A per-process random 64-bit prefix and a counter: cheaper than a UUID, and
/// unique across replicas and restarts — the usage store keys records by
/// (time, id), and two processes share a prefix with odds of about n²/2⁶⁵
/// (n processes ever started), where 32 bits would make that likely within a
/// few tens of thousands of restarts.
pub(crate) fn new_id() -> HeaderValue {
    static IDS: OnceLock<([u8; 16], AtomicU64)> = OnceLock::new();
    let (prefix, next) = IDS.get_or_init(|| (hex16(rand::random()), AtomicU64::new(1)));
    let n = next.fetch_add(1, Ordering::Relaxed);
    // Shared, so the copies for the answer and the upstream cost no allocation.
    HeaderValue::from_maybe_shared(Bytes::from_owner(id_of(prefix, n))).unwrap_or_else(|_| RequestId::none())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `v` as 16 lowercase hex digits.
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[(v >> (60 - 4 * i)) as usize & 0xf];
    }
    out
}

/// `{prefix}-{n:x}`, written by hand: `write!`'s formatting cost more
/// than the rest of making the id (callgrind).
fn id_of(prefix: &[u8; 16], n: u64) -> Id {
    let mut id = Id { bytes: [0; ID_MAX], len: 0 };
    id.bytes[..16].copy_from_slice(prefix);
    id.bytes[16] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in id.bytes[17..17 + digits].iter_mut().enumerate() {
        *digit = HEX[(n >> (4 * (digits - 1 - i))) as usize & 0xf];
    }
    id.len = 17 + digits;
    id
}

/// Longest generated id: 16 hex digits, a dash, at most 16 more.
const ID_MAX: usize = 33;

/// A generated id.
struct Id {
    bytes: [u8; ID_MAX],
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
        let id = new_id();
        let client_id = client_request_id(request.headers());
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            client_request_id = client_id.as_ref().and_then(|v| v.to_str().ok()),
        );
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
        EnvelopeFuture { inner: called.ok().map(|f| f.instrument(span)), id: Some(id), client_id }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct EnvelopeFuture<F> {
        // `None`: the inner service panicked while it was called.
        #[pin]
        inner: Option<Instrumented<F>>,
        id: Option<HeaderValue>,
        client_id: Option<HeaderValue>,
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
        if let Some(client_id) = this.client_id.take() {
            response.headers_mut().insert(X_CLIENT_REQUEST_ID.clone(), client_id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_id_is_its_x_client_request_id_else_its_x_request_id() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(client_request_id(&headers), None);
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(client_request_id(&headers), None);
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("mine"));
        assert_eq!(client_request_id(&headers), Some(HeaderValue::from_static("mine")));
        headers.insert(&X_CLIENT_REQUEST_ID, HeaderValue::from_static("named"));
        assert_eq!(client_request_id(&headers), Some(HeaderValue::from_static("named")));
    }

    #[test]
    fn only_sane_client_ids_are_kept() {
        assert!(sane(&HeaderValue::from_static("req_123-abc.def:1")));
        assert!(!sane(&HeaderValue::from_static("")));
        assert!(!sane(&HeaderValue::from_static("has space")));
        assert!(!sane(&HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap_or_else(|_| RequestId::none())));
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn ids_are_the_prefix_and_the_counter_in_hex() {
        for (prefix, n) in [(0, 0), (1, 1), (0xabc, 15), (u64::MAX, 16), (0x0123_4567_89ab_cdef, u64::MAX)] {
            let id = id_of(&hex16(prefix), n);
            assert_eq!(id.as_ref(), format!("{prefix:016x}-{n:x}").as_bytes());
        }
    }

    #[tokio::test]
    async fn a_panic_becomes_an_openai_shaped_500_with_both_ids() {
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
        assert_ne!(response.headers()["x-request-id"], "abc", "the gateway's own id");
        assert_eq!(response.headers()["x-client-request-id"], "abc");
    }
}
