//! The OpenAI API handlers: authenticate, parse what routing needs, pick a
//! channel, relay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;

use crate::auth::{authenticate, client_ip};
use crate::clock::unix_seconds;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::meter::Meter;
use crate::providers::Endpoint;
use crate::providers::mock::{self, MockAnswer};
use crate::relay::RelayBody;
use crate::request::RequestBody;
use crate::router;
use crate::runtime::{ChannelRuntime, Runtime, Upstream};
use crate::sse::SseScanner;
use crate::stats::Route;
use crate::usage;

/// The request body, read only once the key is known to be good: an
/// unauthenticated client cannot make the gateway buffer megabytes.
type Body_ = Body;

/// Reads a body of at most `limit` bytes; 413 past it.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::payload_too_large(limit)),
        Err(e) => Err(ApiError::bad_request("invalid_body", format!("The request body could not be read: {e}"))),
    }
}

pub async fn chat(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body_,
) -> Response {
    handle(gw, Endpoint::Chat, peer, headers, body).await
}

pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body_,
) -> Response {
    handle(gw, Endpoint::Embeddings, peer, headers, body).await
}

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-weaver"})
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /v1/models`: the models this key may use.
pub async fn list_models(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let rt = gw.runtime();
    let ip = client_ip(peer, &headers, &gw.settings.trusted_proxies);
    match authenticate(&rt, &headers, ip, unix_seconds()) {
        Ok(key) => {
            let data: Vec<_> = rt.models_for(key).into_iter().map(model_object).collect();
            let body = json!({"object": "list", "data": data});
            json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default())
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rt = gw.runtime();
    let ip = client_ip(peer, &headers, &gw.settings.trusted_proxies);
    match authenticate(&rt, &headers, ip, unix_seconds()) {
        Ok(key) if rt.models_for(key).contains(&id.as_str()) => {
            json_response(StatusCode::OK, serde_json::to_vec(&model_object(&id)).unwrap_or_default())
        }
        Ok(_) => ApiError::model_not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(gw: Arc<Gateway>, endpoint: Endpoint, peer: SocketAddr, headers: HeaderMap, body: Body_) -> Response {
    let started = Instant::now();
    let mut meter = Some(Meter::start(gw.clone(), started));
    let rt = gw.runtime();
    let response = match serve(&gw, &rt, endpoint, peer, &headers, body, started, &mut meter).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // Streams carry the meter in their body; everything else is recorded here.
    if let Some(mut m) = meter {
        m.status = response.status().as_u16();
    }
    response
}

#[expect(clippy::too_many_arguments, reason = "one request's parts, threaded through once")]
async fn serve(
    gw: &Gateway,
    rt: &Runtime,
    endpoint: Endpoint,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body_,
    started: Instant,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let ip = client_ip(peer, headers, &gw.settings.trusted_proxies);
    let key_idx = authenticate(rt, headers, ip, unix_seconds())?;
    let key = &rt.snapshot.keys[key_idx];
    if let Some(m) = meter.as_mut() {
        m.key = Some((rt.keys[key_idx].namespace.clone(), rt.keys[key_idx].name.clone()));
    }
    let bytes = read_body(body, headers, gw.settings.max_body_bytes).await?;
    let request = RequestBody::parse(&bytes)?;
    let model = request.model.as_ref();
    if !rt.model_allowed(key_idx, model) {
        return Err(ApiError::forbidden("model_not_allowed", format!("This API key may not use the model `{model}`.")));
    }
    let candidates = rt.candidates(key, model).ok_or_else(|| ApiError::model_not_found(model))?;
    let picked = router::pick(candidates, &mut rand::rng()).ok_or_else(|| {
        ApiError::unavailable("no_channel_available", format!("No channel can serve `{model}` right now."))
    })?;
    let channel = &rt.channels[picked.channel as usize];
    let target = &channel.models[picked.model as usize];
    if let Some(m) = meter.as_mut() {
        m.route = Some(Route {
            model: target.label.clone(),
            channel: (channel.namespace.clone(), channel.label.clone()),
            prices: target.prices,
        });
    }
    let stream = endpoint == Endpoint::Chat && request.stream;
    let Some(upstream) = &channel.upstream else {
        return answer_locally(endpoint, &request, stream, meter);
    };
    let uri = target
        .uri(endpoint)
        .cloned()
        .ok_or_else(|| ApiError::bad_gateway("channel_misconfigured", "The channel has no valid upstream URL."))?;
    let force_usage = stream && !request.include_usage;
    let upstream_body = if force_usage || target.upstream_name != model {
        Bytes::from(request.rewrite(&target.upstream_name, force_usage))
    } else {
        bytes.clone()
    };
    forward(channel, upstream, uri, upstream_body, stream, force_usage, started, meter).await
}

fn answer_locally(
    endpoint: Endpoint,
    request: &RequestBody<'_>,
    stream: bool,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let (response, usage) = match endpoint {
        Endpoint::Embeddings => {
            let (json, usage) = mock::embeddings(request)?;
            (json_response(StatusCode::OK, json), usage)
        }
        Endpoint::Chat => {
            let answer = MockAnswer::for_chat(request, None)?;
            let response = if stream {
                let events = answer.to_events(request.include_usage).into_iter().map(Ok::<_, Infallible>);
                sse_response(Body::from_stream(futures_util::stream::iter(events)))
            } else {
                json_response(StatusCode::OK, answer.to_json())
            };
            (response, answer.usage())
        }
    };
    if let Some(m) = meter.as_mut() {
        m.mark_first_byte();
        m.usage = Some(usage);
    }
    Ok(response)
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of us not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The error and its causes, for messages and logs.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[expect(clippy::too_many_arguments, reason = "one request's parts, threaded through once")]
async fn forward(
    channel: &ChannelRuntime,
    upstream: &Upstream,
    uri: http::Uri,
    body: Bytes,
    stream: bool,
    drop_usage_chunk: bool,
    started: Instant,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = upstream.headers.clone();
    let started = tokio::time::Instant::from_std(started);
    let deadline = started + channel.total;
    // A non-streamed answer sends its headers only once it is complete, so
    // only `total` bounds it; `firstByte` is time to first token of a stream.
    let first_byte_deadline = if stream { (started + channel.first_byte).min(deadline) } else { deadline };
    let limit = if stream { channel.first_byte.min(channel.total) } else { channel.total };
    let timed_out = || {
        ApiError::gateway_timeout(format!(
            "Channel `{}` did not answer within {}.",
            channel.label.as_str(),
            humantime::format_duration(limit)
        ))
    };
    let response = tokio::time::timeout_at(first_byte_deadline, upstream.client.request(request))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| {
            ApiError::bad_gateway(
                "upstream_unreachable",
                format!("Channel `{}` could not be reached: {}", channel.label.as_str(), chain(&e)),
            )
        })?;
    let (parts, mut incoming) = response.into_parts();
    if !parts.status.is_success() {
        return upstream_error(channel, parts, incoming, deadline).await;
    }
    if stream {
        // Wait for the first chunk before committing to a 200, so a stalled
        // upstream is a clean 504 rather than a hung stream.
        let first = loop {
            match tokio::time::timeout_at(first_byte_deadline, incoming.frame()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => break Bytes::new(),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_gateway(
                        "upstream_stream_error",
                        format!("The upstream stream failed: {e}"),
                    ));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        break data;
                    }
                }
            }
        };
        let Some(mut m) = meter.take() else {
            return Err(ApiError::internal("request record missing"));
        };
        m.mark_first_byte();
        let sleep = Box::pin(tokio::time::sleep_until(deadline));
        let relay = RelayBody::new(first, incoming, SseScanner::new(drop_usage_chunk), m, sleep);
        return Ok(sse_response(Body::new(relay)));
    }
    if let Some(m) = meter.as_mut() {
        m.mark_first_byte();
    }
    let bytes = tokio::time::timeout_at(deadline, incoming.collect())
        .await
        .map_err(|_| ApiError::gateway_timeout("The upstream answer exceeded the channel's total timeout."))?
        .map_err(|e| ApiError::bad_gateway("upstream_body_error", format!("The upstream answer broke off: {e}")))?
        .to_bytes();
    if let Some(m) = meter.as_mut() {
        m.usage = usage::from_body(&bytes);
    }
    let content_type =
        parts.headers.get(header::CONTENT_TYPE).cloned().unwrap_or(HeaderValue::from_static("application/json"));
    let mut out = Response::new(Body::from(bytes));
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

/// Largest upstream error body relayed to the client.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Upstream said no. Client mistakes (4xx) are relayed as the upstream wrote
/// them — OpenAI-family errors are already OpenAI-shaped. A rejected channel
/// credential is the operator's problem, not the client's, so it becomes a 502;
/// upstream failures (5xx) become 502 as well.
async fn upstream_error(
    channel: &ChannelRuntime,
    parts: http::response::Parts,
    incoming: hyper::body::Incoming,
    deadline: tokio::time::Instant,
) -> Result<Response, ApiError> {
    let status = parts.status;
    let body = tokio::time::timeout_at(deadline, Limited::new(incoming, ERROR_BODY_LIMIT).collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let name = channel.label.as_str();
    match status.as_u16() {
        401 | 403 => {
            tracing::warn!(channel = name, %status, "upstream rejected the channel's credentials");
            Err(ApiError::bad_gateway(
                "upstream_auth_failed",
                format!("Channel `{name}` was refused by its upstream ({status}); check its credentials."),
            ))
        }
        400..=499 => {
            let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
            let mut out = if is_json {
                json_response(status, body)
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                // A proxy's HTML 429 is still "slow down", not a gateway fault.
                ApiError::rate_limited(format!("Channel `{name}` is rate limited upstream.")).into_response()
            } else {
                return Err(ApiError::bad_gateway(
                    "upstream_error",
                    format!("Channel `{name}` answered {status} without a JSON body."),
                ));
            };
            if let Some(retry) = parts.headers.get(header::RETRY_AFTER) {
                out.headers_mut().insert(header::RETRY_AFTER, retry.clone());
            }
            Ok(out)
        }
        _ => {
            tracing::warn!(channel = name, %status, "upstream failed");
            Err(ApiError::bad_gateway("upstream_error", format!("Channel `{name}` answered {status}.")))
        }
    }
}
