//! The client API's responses: a concrete body type (no boxing per response)
//! that is a whole answer in parts (a renamed model between two slices of the
//! upstream's bytes, so nothing is copied), or a relayed stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

use crate::parts::Parts;
use crate::relay::RelayBody;

/// A response of the client API.
pub(crate) type Response = http::Response<ResponseBody>;

/// The body of a client API response.
#[derive(Default)]
pub(crate) enum ResponseBody {
    #[default]
    Empty,
    Parts(Parts),
    Stream(Box<RelayBody>),
}

impl ResponseBody {
    pub fn whole(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Parts(Parts::whole(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Parts(parts) => Pin::new(parts).poll_frame(cx),
            ResponseBody::Stream(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Parts(parts) => parts.is_end_stream(),
            ResponseBody::Stream(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Parts(parts) => parts.size_hint(),
            ResponseBody::Stream(relay) => relay.size_hint(),
        }
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: ResponseBody) -> Response {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
