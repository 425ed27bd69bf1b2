//! `respond`: the answer as the client gets it — whole, relayed as a stream,
//! or an error in the route's shape — with the record's status set to match and,
//! for a key with rate limits, OpenAI's `x-ratelimit-*` headers.

use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::Context;
use super::attempts::Answer;
use crate::api::{ApiError, Response, ResponseBody};
use crate::relay::RelayBody;

pub(super) fn respond(mut ctx: Context, answer: Result<Answer, ApiError>) -> Response {
    match answer {
        Ok(Answer::Whole { parts, content_type }) => {
            ctx.record.status = StatusCode::OK.as_u16();
            let mut response = Response::new(ResponseBody::Parts(parts));
            // Sized for the request id the envelope adds and the key's
            // rate-limit headers, so it does not grow.
            *response.headers_mut() = HeaderMap::with_capacity(2 + ctx.limit_header_count());
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            ctx.write_limit_headers(response.headers_mut());
            response
        }
        Ok(Answer::Stream { first, body, decoder, deadline }) => {
            let mut response = sse_response(ResponseBody::Empty);
            ctx.write_limit_headers(response.headers_mut());
            let deadline = Box::pin(tokio::time::sleep_until(deadline));
            *response.body_mut() = ResponseBody::Stream(Box::new(RelayBody::new(first, body, decoder, ctx, deadline)));
            response
        }
        Err(e) => {
            ctx.record.status = e.status.as_u16();
            let mut response = e.response_in(ctx.record.endpoint.dialect());
            ctx.write_limit_headers(response.headers_mut());
            response
        }
    }
}

fn sse_response(body: ResponseBody) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of us not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
