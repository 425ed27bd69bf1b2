//! Request ids: the client's `x-request-id` when it is sane, else a new one.
//! The id is in a tracing span around the request (so in every log line about
//! it), in the request's extensions (forwarded upstream), and in the answer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use tracing::Instrument;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen id kept.
const MAX_LEN: usize = 128;

/// The request's id.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub HeaderValue);

impl RequestId {
    /// For a request that somehow has none (tests that skip the layer).
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
fn new_id() -> HeaderValue {
    static IDS: OnceLock<(u32, AtomicU64)> = OnceLock::new();
    let (prefix, next) = IDS.get_or_init(|| (rand::random(), AtomicU64::new(1)));
    let n = next.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix:08x}-{n:x}")).unwrap_or_else(|_| RequestId::none())
}

pub(super) async fn layer(mut request: Request, next: Next) -> Response {
    let id = request.headers().get(&X_REQUEST_ID).filter(|v| sane(v)).cloned().unwrap_or_else(new_id);
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).instrument(span).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
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
}
