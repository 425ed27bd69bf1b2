//! The HTTP server: records every request, then answers it as the current
//! [`Behaviour`] says.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tokio::net::TcpListener;

use crate::behaviour::{Behaviour, ErrorFormat, JsonForStream};
use crate::chat::Answer;
use crate::error::UpstreamError;
use crate::in_flight::InFlight;
use crate::request::{Request, presented_key};
use crate::stream::{self, Frame, pause};

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Path and query, e.g. `/v1/chat/completions`.
    pub uri: String,
    /// The request headers as received.
    pub headers: HeaderMap,
    /// The body as received, byte for byte.
    pub raw: Bytes,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: serde_json::Value,
    /// When it arrived (before any `latency`).
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Recorded>>,
    /// Set by [`MockUpstream::keep_no_requests`].
    keep_none: std::sync::atomic::AtomicBool,
    /// Opened by `release` for streams held by `hold_after`.
    gate: Arc<tokio::sync::Notify>,
    in_flight: Arc<InFlight>,
    /// Prompt prefixes seen, for `prefix_cache`.
    prefixes: Mutex<HashSet<Vec<u8>>>,
}

/// A running mock OpenAI-compatible upstream; stops when dropped. It serves
/// `POST .../chat/completions`, `POST .../embeddings` and `POST .../responses`
/// under any prefix (so `/v1/...` and Azure's `/openai/deployments/<name>/...`
/// both work), and Anthropic's, Gemini's and Cohere's APIs at their own paths.
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Listens on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { behaviour: Mutex::new(behaviour), ..Shared::default() });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(shared.clone());
        // Like any real upstream: without it, streamed events stall ~40 ms on
        // delayed ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "mock upstream stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// Listens on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// The OpenAI-style API root, e.g. `http://127.0.0.1:1234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the behaviour for the requests that arrive from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Lets one stream held by `hold_after` go on (or the next one, if none
    /// waits yet).
    pub fn release(&self) {
        self.shared.gate.notify_one();
    }

    /// Stops keeping requests for [`requests`](Self::requests): for the
    /// binary, where nobody can read them. Kept requests hold their headers
    /// and body, which share hyper's read buffers, so under a benchmark's load
    /// they grew to gigabytes.
    pub fn keep_no_requests(&self) {
        self.shared.keep_none.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The requests received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.seen).clone()
    }

    /// Requests being answered at this instant: each counts from its arrival
    /// until its response body has been sent to the end, or abandoned with
    /// its connection.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.current()
    }

    /// The most requests answered at once (as [`in_flight`](Self::in_flight)
    /// counts them) since the start or the last
    /// [`reset_peak_in_flight`](Self::reset_peak_in_flight): what a
    /// concurrency limit in front of this upstream must bound.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.in_flight.peak()
    }

    /// Starts measuring a new peak from the requests in flight now.
    pub fn reset_peak_in_flight(&self) {
        self.shared.in_flight.reset_peak();
    }

    /// Waits until the server task ends (for the binary).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let slot = shared.in_flight.enter();
    let behaviour = lock(&shared.behaviour).clone();
    if !shared.keep_none.load(std::sync::atomic::Ordering::Relaxed) {
        lock(&shared.seen).push(Recorded {
            uri: uri.to_string(),
            headers: headers.clone(),
            raw: body.clone(),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            at: Instant::now(),
        });
    }
    pause(behaviour.latency).await;
    let response = respond(&behaviour, &shared, &method, &uri, &headers, &body)
        .unwrap_or_else(|e| e.into_response(behaviour.error_format));
    slot.hold_until_sent(response)
}

/// The answer, in the order the [`Behaviour`] docs give.
fn respond(
    b: &Behaviour,
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, UpstreamError> {
    let path = uri.path();
    if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
        return Ok(messages(b, &shared.gate, path, headers, body));
    }
    if crate::gemini::route(path).is_some() {
        return Ok(gemini(b, &shared.gate, uri, headers, body));
    }
    if crate::cohere::is_cohere(path) {
        return Ok(cohere(b, &shared.gate, path, headers, body));
    }
    if let Some(required) = &b.require_key
        && presented_key(headers) != Some(required.as_str())
    {
        return Err(UpstreamError::unauthorized());
    }
    if let Some(status) = b.error_status {
        return Ok(injected_failure(b, status));
    }
    if path.ends_with("/responses") {
        return Ok(match crate::responses::answer(body, b.tokens)? {
            crate::responses::Reply::Whole(bytes) => json(bytes),
            crate::responses::Reply::Events(events) => {
                let frames = events.into_iter().map(Frame::whole).collect();
                let hold = b.hold_after.map(|n| (n, shared.gate.clone()));
                stream::response(frames, b.chunk_delay, b.drop_after, hold)
            }
        });
    }
    let embeddings = path.ends_with("/embeddings");
    if !embeddings && !path.ends_with("/chat/completions") {
        return Err(UpstreamError::unknown_url(method, path));
    }
    let request = Request::parse(body)?;
    if b.reject_stream_options && request.has_stream_options() {
        return Err(UpstreamError::unrecognized_argument("stream_options"));
    }
    if embeddings {
        return Ok(json(crate::embeddings::answer(&request)?));
    }
    let mut answer = Answer::for_chat(&request, b.tokens, b.null_usage_details)?;
    if b.prefix_cache
        && let Some((prefix, tokens)) = crate::chat::cache_prefix(&request)
        && !lock(&shared.prefixes).insert(prefix)
    {
        answer = answer.with_cached_tokens(tokens);
    }
    if b.omit_usage {
        answer = answer.without_usage();
    }
    if !request.stream {
        return Ok(json(answer.to_json()));
    }
    match b.json_for_stream {
        Some(JsonForStream::Error) => {
            return Ok(UpstreamError::insufficient_quota().response(ErrorFormat::OpenAi, StatusCode::OK));
        }
        Some(JsonForStream::Completion) => return Ok(json(answer.to_json())),
        None => {}
    }
    let include_usage = request.include_usage() && !b.omit_usage;
    let frames = match b.big_event {
        Some((total, piece)) => {
            let events = answer.with_one_big_token(total, include_usage).to_events(include_usage);
            // The role chunk, then the content event in pieces.
            let mut frames = Vec::with_capacity(events.len() + total / piece.max(1) + 1);
            for (i, event) in events.into_iter().enumerate() {
                if i == 1 {
                    frames.extend(Frame::pieces(&event, piece));
                } else {
                    frames.push(Frame::whole(event));
                }
            }
            frames
        }
        None => answer.to_events(include_usage).into_iter().map(Frame::whole).collect(),
    };
    let hold = b.hold_after.map(|n| (n, shared.gate.clone()));
    Ok(stream::response(frames, b.chunk_delay, b.drop_after, hold))
}

/// Anthropic's Messages API: its own keys (`x-api-key`), error shape and
/// events; the pacing and fault knobs of the [`Behaviour`] apply as they do
/// to OpenAI streams.
fn messages(b: &Behaviour, gate: &Arc<tokio::sync::Notify>, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(status) = b.error_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            crate::anthropic::error_response(status, crate::anthropic::error_kind(status), "injected failure");
        if matches!(status.as_u16(), 429 | 529)
            && let Some(seconds) = b.retry_after
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    let key = b.require_key.as_deref();
    if path.ends_with("/count_tokens") {
        return crate::anthropic::count_tokens(headers, body, key);
    }
    match crate::anthropic::messages(headers, body, key, b.tokens) {
        crate::anthropic::Reply::Whole(response) => response,
        crate::anthropic::Reply::Events(events) => {
            let frames = events.into_iter().map(Frame::whole).collect();
            let hold = b.hold_after.map(|n| (n, gate.clone()));
            stream::response(frames, b.chunk_delay, b.drop_after, hold)
        }
    }
}

/// Google's Gemini API: its key (`x-goog-api-key`), error shape and events;
/// the pacing and fault knobs of the [`Behaviour`] apply as they do to
/// OpenAI streams.
fn gemini(b: &Behaviour, gate: &Arc<tokio::sync::Notify>, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(status) = b.error_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = crate::gemini::error_response(status, "injected failure");
        if matches!(status.as_u16(), 429 | 503)
            && let Some(seconds) = b.retry_after
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    match crate::gemini::answer(uri.path(), uri.query(), headers, body, b.require_key.as_deref(), b.tokens) {
        crate::gemini::Reply::Whole(response) => response,
        crate::gemini::Reply::Events(events) => {
            let frames = events.into_iter().map(Frame::whole).collect();
            let hold = b.hold_after.map(|n| (n, gate.clone()));
            stream::response(frames, b.chunk_delay, b.drop_after, hold)
        }
    }
}

/// Cohere's v2 API: its error shape and events; the pacing and fault knobs
/// of the [`Behaviour`] apply as they do to OpenAI streams.
fn cohere(b: &Behaviour, gate: &Arc<tokio::sync::Notify>, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(status) = b.error_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = crate::cohere::error_response(status, "injected failure");
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(seconds) = b.retry_after
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        return response;
    }
    match crate::cohere::answer(path, headers, body, b.require_key.as_deref(), b.tokens) {
        crate::cohere::Reply::Whole(response) => response,
        crate::cohere::Reply::Events(events) => {
            let frames = events.into_iter().map(Frame::whole).collect();
            let hold = b.hold_after.map(|n| (n, gate.clone()));
            stream::response(frames, b.chunk_delay, b.drop_after, hold)
        }
    }
}

/// [`Behaviour::error_status`], padded and with `Retry-After` as configured.
fn injected_failure(b: &Behaviour, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = UpstreamError::injected(status);
    if let Some(size) = b.error_body_bytes {
        error = error.padded_to(b.error_format, size);
    }
    let mut response = error.into_response(b.error_format);
    if status == StatusCode::TOO_MANY_REQUESTS
        && let Some(seconds) = b.retry_after
    {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
