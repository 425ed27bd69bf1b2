//! A mock OpenAI-compatible upstream. Answers are the gateway's own `mock`
//! provider answers (deterministic text, realistic usage), served over HTTP with
//! knobs for latency, stream length and pacing, error statuses and connections
//! dropped mid-stream. Every request is recorded for assertions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::net::TcpListener;
use weaver_gateway::auth::presented_key;
use weaver_gateway::error::ApiError;
use weaver_gateway::providers::mock::{MockAnswer, embeddings};
use weaver_gateway::request::RequestBody;

/// How the upstream behaves; change it at any time with [`MockUpstream::set`].
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Delay before the response headers.
    pub latency: Duration,
    /// Completion length in tokens (= content chunks when streaming); `None`
    /// quotes the prompt.
    pub tokens: Option<usize>,
    /// Delay between stream chunks.
    pub chunk_delay: Duration,
    /// Answer every request with this status and an OpenAI-style error body.
    pub error_status: Option<u16>,
    /// Cut the connection after this many stream events.
    pub drop_after: Option<usize>,
    /// Only accept `Authorization: Bearer <key>` (or `api-key: <key>`).
    pub require_key: Option<String>,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    /// The body as received.
    pub raw: Bytes,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Recorded>>,
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Listens on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { behaviour: Mutex::new(behaviour), seen: Mutex::default() });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(answer).with_state(shared.clone());
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

    pub fn set(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.seen).clone()
    }

    /// Blocks until the server task ends (for the binary).
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

async fn answer(State(shared): State<Arc<Shared>>, uri: http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let behaviour = lock(&shared.behaviour).clone();
    lock(&shared.seen).push(Recorded {
        uri: uri.to_string(),
        headers: headers.clone(),
        raw: body.clone(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    pause(behaviour.latency).await;
    if let Some(required) = &behaviour.require_key
        && presented_key(&headers) != Some(required.as_str())
    {
        return ApiError::unauthorized("Incorrect API key provided.").into_response();
    }
    if let Some(status) = behaviour.error_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"message": "injected failure", "type": "server_error", "param": null, "code": "injected"}});
        return (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }
    let request = match RequestBody::parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let path = uri.path();
    if path.ends_with("/embeddings") {
        return match embeddings(&request) {
            Ok((json, _)) => json_body(json),
            Err(e) => e.into_response(),
        };
    }
    if !path.ends_with("/chat/completions") {
        return ApiError::route_not_found().into_response();
    }
    let answer = match MockAnswer::for_chat(&request, behaviour.tokens) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if !request.stream {
        return json_body(answer.to_json());
    }
    let events = answer.to_events(request.include_usage);
    let delay = behaviour.chunk_delay;
    let drop_after = behaviour.drop_after.unwrap_or(usize::MAX);
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 {
            pause(delay).await;
        }
        if i >= drop_after {
            // Let the events before the cut reach the wire first; hyper drops
            // its unflushed buffer when a body fails.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Err(std::io::Error::other("connection dropped by fault injection"));
        }
        Ok::<_, std::io::Error>(event)
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Sleeps, unless there is nothing to wait for: tokio's timer has millisecond
/// ticks, so even a zero sleep would add up to a millisecond.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn json_body(json: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}
