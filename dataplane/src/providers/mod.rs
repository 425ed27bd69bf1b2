//! Provider adapters: one closed enum, built per channel when a snapshot is
//! applied. An adapter prepares the upstream request, sends it, decodes the
//! answer (whole or event by event, usage included) and classifies failures
//! into typed [`UpstreamError`]s. Every provider of this gateway version speaks
//! the OpenAI wire format (`openai`: OpenAI, Azure OpenAI and the compatible
//! family), or answers in-process (`mock`); other wire formats are one module
//! each behind the same seam.

mod error;
pub(crate) mod mock;
pub(crate) mod openai;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use weaver_crds::Provider;
use weaver_crds::snapshot::{ChannelSnapshot, ModelSnapshot};

pub(crate) use error::{ErrorFields, UpstreamError};

use crate::metering::Usage;
use crate::parts::Parts;
use crate::state::{ClientPool, HttpClient};

/// The OpenAI API operations the gateway sends upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    /// The path below an OpenAI-style API root.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "/chat/completions",
            Operation::Embeddings => "/embeddings",
        }
    }
}

/// How a channel reaches its upstream.
#[expect(
    clippy::large_enum_variant,
    reason = "built once per channel and snapshot; boxing would add a pointer chase per request"
)]
pub(crate) enum Adapter {
    /// Over HTTP in the OpenAI wire format.
    OpenAi { client: HttpClient, headers: HeaderMap },
    /// Answered in-process in the OpenAI wire format (demos and tests).
    Mock,
}

impl Adapter {
    pub fn build(channel: &ChannelSnapshot, pool: &ClientPool) -> Self {
        match channel.provider {
            Provider::Mock => Adapter::Mock,
            _ => {
                Adapter::OpenAi { client: pool.client(channel.timeouts.connect_ms), headers: openai::headers(channel) }
            }
        }
    }

    /// The upstream URL of one operation for one model (`None`: no URL needed).
    pub fn url(&self, channel: &ChannelSnapshot, model: &ModelSnapshot, operation: Operation) -> Option<String> {
        match self {
            Adapter::OpenAi { .. } => Some(openai::url(channel, model, operation)),
            Adapter::Mock => None,
        }
    }

    /// Sends one prepared request. `uri` is the one [`Adapter::url`] gave.
    pub async fn send(
        &self,
        operation: Operation,
        uri: Option<&Uri>,
        body: Parts,
        request_id: &HeaderValue,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        match self {
            Adapter::OpenAi { client, headers } => {
                let uri = uri.cloned().ok_or_else(|| UpstreamError::Connect("the channel has no valid URL".into()))?;
                let length = body.len() as u64;
                let mut request = http::Request::new(body);
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = uri;
                *request.headers_mut() = request_headers(headers, request_id, length);
                let response = client.request(request).await.map_err(|e| UpstreamError::Connect(chain(&e)))?;
                Ok(response.map(UpstreamBody::Http))
            }
            Adapter::Mock => Ok(mock::answer(operation, &body.contiguous())),
        }
    }
}

impl Adapter {
    /// A complete answer as the client gets it, and its usage.
    pub fn decode_whole(&self, body: Bytes, rename: Option<&openai::ModelRename>) -> (Parts, Option<Usage>) {
        match self {
            Adapter::OpenAi { .. } | Adapter::Mock => openai::decode_whole(body, rename),
        }
    }

    /// The decoder of one streamed answer. `drop_usage_chunk`: the gateway
    /// asked for usage the client did not ask for.
    pub fn stream_decoder(&self, drop_usage_chunk: bool, rename: Option<Arc<openai::ModelRename>>) -> StreamDecoder {
        match self {
            Adapter::OpenAi { .. } | Adapter::Mock => {
                StreamDecoder::OpenAi(openai::StreamDecoder::new(drop_usage_chunk, rename))
            }
        }
    }

    /// A JSON answer to a streamed request, as the stream's events or the
    /// error it describes.
    pub fn json_for_stream(&self, body: &[u8]) -> Result<Bytes, ErrorFields> {
        match self {
            Adapter::OpenAi { .. } | Adapter::Mock => openai::json_for_stream(body),
        }
    }
}

/// The headers of one upstream request: the channel's (with `Host`, so the
/// client need not build it), the request id and the body's length, in a
/// map sized once.
fn request_headers(channel: &HeaderMap, request_id: &HeaderValue, length: u64) -> HeaderMap {
    // Room for the two added here and one more: hyper-util's `Host` check
    // takes an entry, which grows a full map.
    let mut headers = HeaderMap::with_capacity(channel.len() + 3);
    for (name, value) in channel {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(&crate::server::X_REQUEST_ID, request_id.clone());
    headers.insert(http::header::CONTENT_LENGTH, decimal(length));
    headers
}

/// A number as a header value, with one allocation (hyper's own conversion
/// takes two).
fn decimal(n: u64) -> HeaderValue {
    struct Digits([u8; 20], usize);
    impl AsRef<[u8]> for Digits {
        fn as_ref(&self) -> &[u8] {
            &self.0[self.1..]
        }
    }
    let mut digits = Digits([0; 20], 20);
    let mut rest = n;
    loop {
        digits.1 -= 1;
        digits.0[digits.1] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from_owner(digits)).unwrap_or_else(|_| HeaderValue::from(n))
}

/// An upstream answer's body: from the network, or made in-process.
pub(crate) enum UpstreamBody {
    Http(Incoming),
    Local(Option<Bytes>),
}

impl UpstreamBody {
    pub fn local(bytes: Bytes) -> Self {
        UpstreamBody::Local(Some(bytes))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Http(inner) => Pin::new(inner).poll_frame(cx),
            UpstreamBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http(inner) => inner.is_end_stream(),
            UpstreamBody::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http(inner) => inner.size_hint(),
            UpstreamBody::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// Reads a stream's events and decides, event by event, what the client gets.
pub(crate) enum StreamDecoder {
    OpenAi(openai::StreamDecoder),
}

/// What happens to one upstream event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EventAction {
    Pass,
    Drop,
    Replace(Bytes),
}

impl StreamDecoder {
    /// What is left behind when a decoder moves to another task.
    pub fn closed() -> Self {
        StreamDecoder::OpenAi(openai::StreamDecoder::new(false, None))
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        match self {
            StreamDecoder::OpenAi(d) => d.event(event),
        }
    }

    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            StreamDecoder::OpenAi(d) => d.usage,
        }
    }

    /// The answer is complete (only usage and the end marker may follow).
    pub fn finished(&self) -> bool {
        match self {
            StreamDecoder::OpenAi(d) => d.finished,
        }
    }
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
