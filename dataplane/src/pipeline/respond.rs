//! `respond`: the answer as the client gets it — whole, relayed as a stream,
//! or an error in the route's shape — with the record's status set to match and,
//! for a key with rate limits, OpenAI's `x-ratelimit-*` headers.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::Context;
use super::attempts::Answer;
use crate::api::{ApiError, Response, ResponseBody};
use crate::relay::RelayBody;

/// Names the channel that answered (or failed last), unless turned off.
pub(crate) const X_WEAVER_CHANNEL: HeaderName = HeaderName::from_static("x-weaver-channel");

pub(super) fn respond(mut ctx: Context, answer: Result<Answer, ApiError>) -> Response {
    match answer {
        Ok(Answer::Whole { parts, content_type }) => {
            ctx.record.status = StatusCode::OK.as_u16();
            let mut response = Response::new(ResponseBody::Parts(parts));
            // Sized for the request id the envelope adds, the channel and
            // the key's rate-limit headers, so it does not grow.
            *response.headers_mut() = HeaderMap::with_capacity(3 + ctx.limit_header_count());
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            write_channel(&ctx, response.headers_mut());
            ctx.write_limit_headers(response.headers_mut());
            response
        }
        Ok(Answer::Stream { first, body, decoder, deadline }) => {
            // Sized as above, plus the stream's own three.
            let mut response = sse_response(ResponseBody::Empty, 5 + ctx.limit_header_count());
            write_channel(&ctx, response.headers_mut());
            ctx.write_limit_headers(response.headers_mut());
            let deadline = Box::pin(tokio::time::sleep_until(deadline));
            *response.body_mut() = ResponseBody::Stream(Box::new(RelayBody::new(first, body, decoder, ctx, deadline)));
            response
        }
        Err(e) => {
            ctx.record.status = e.status.as_u16();
            let mut response = e.response_in(ctx.record.endpoint.dialect());
            write_channel(&ctx, response.headers_mut());
            ctx.write_limit_headers(response.headers_mut());
            response
        }
    }
}

/// `x-weaver-channel`: the last attempt's channel, when there was one.
fn write_channel(ctx: &Context, headers: &mut HeaderMap) {
    if !ctx.gw.settings.channel_header {
        return;
    }
    let channel = ctx.record.last_attempt().and_then(|a| ctx.rt.channels.get(a.channel as usize));
    if let Some(channel) = channel {
        headers.insert(X_WEAVER_CHANNEL, channel.header.clone());
    }
}

fn sse_response(body: ResponseBody, capacity: usize) -> Response {
    let mut response = Response::new(body);
    *response.headers_mut() = HeaderMap::with_capacity(capacity);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of us not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
