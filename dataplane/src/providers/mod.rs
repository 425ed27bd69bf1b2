//! Provider adapters: one closed enum, built per channel when a snapshot is
//! applied. An adapter prepares the upstream request, sends it, decodes the
//! answer (whole or event by event, usage included) and classifies failures
//! into typed [`UpstreamError`]s. Five wire formats sit behind the seam:
//! OpenAI's (`openai`: OpenAI, Azure OpenAI and the compatible family),
//! Anthropic's Messages API (`anthropic`), Google's Gemini API (`gemini`),
//! Cohere's v2 API (`cohere`), and in-process answers (`mock`).
//!
//! Clients speak one of three dialects: OpenAI's chat completions,
//! Anthropic's Messages API (the gateway's `/v1/messages`), or OpenAI's
//! Responses API (`/v1/responses`). Where dialect and wire format differ the
//! adapter translates — the request before it is sent, the answer whole or
//! event by event ([`anthropic`] for OpenAI clients of Anthropic channels,
//! [`gemini`] and [`cohere`] for OpenAI clients of Gemini and Cohere
//! channels, [`messages`] for Messages clients of OpenAI-wire channels,
//! [`responses`] for Responses clients of every channel but OpenAI's and
//! Azure's); where they match, bodies pass through. Messages and Responses
//! clients of the other formats go through the chat form both ways: their
//! request becomes a chat request and that the provider's, the provider's
//! answer a chat answer and that theirs ([`via_chat`] for streams).

pub(crate) mod anthropic;
pub(crate) mod cohere;
mod error;
#[cfg(test)]
mod fuzz;
pub(crate) mod gemini;
pub(crate) mod messages;
pub(crate) mod mock;
pub(crate) mod openai;
pub(crate) mod responses;
pub(crate) mod via_chat;

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

use crate::api::{ApiError, RequestBody, Rewrite, StreamOptionsEdit};
use crate::metering::Usage;
use crate::parts::Parts;
use crate::state::{ClientPool, HttpClient, ModelRuntime};
use messages::request::LimitMember;
use openai::ModelRename;

/// What a client asks the gateway to do upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// OpenAI's chat completions.
    Chat,
    /// OpenAI's embeddings.
    Embeddings,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's `messages/count_tokens`.
    CountTokens,
    /// OpenAI's Responses API.
    Responses,
}

impl Operation {
    /// The path below an OpenAI-style API root (Messages go to chat
    /// completions there; `count_tokens` is answered by the gateway).
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat | Operation::Messages | Operation::CountTokens => "/chat/completions",
            Operation::Embeddings => "/embeddings",
            Operation::Responses => "/responses",
        }
    }

    /// The operation can answer with a stream.
    pub fn streams(self) -> bool {
        matches!(self, Operation::Chat | Operation::Messages | Operation::Responses)
    }
}

/// How a channel reaches its upstream.
pub(crate) enum Adapter {
    /// Over HTTP in the OpenAI wire format; `responses`: the upstream
    /// serves the Responses API itself (OpenAI, Azure OpenAI).
    OpenAi { client: HttpClient, headers: HeaderMap, limit: LimitMember, responses: bool },
    /// Over HTTP in Anthropic's Messages format.
    Anthropic { client: HttpClient, headers: HeaderMap },
    /// Over HTTP in Google's Gemini format.
    Gemini { client: HttpClient, headers: HeaderMap },
    /// Over HTTP in Cohere's v2 format.
    Cohere { client: HttpClient, headers: HeaderMap },
    /// Answered in-process in the OpenAI wire format (demos and tests).
    Mock,
}

/// What decoding an answer needs to know about its request.
pub(crate) struct Answering<'a, 'r> {
    pub operation: Operation,
    /// Set when the upstream's model name is not the public one.
    pub rename: Option<&'a Arc<ModelRename>>,
    /// The model the client asked for, as answers name it.
    pub model: &'a str,
    /// The client asked for OpenAI's stream usage chunk.
    pub include_usage: bool,
    /// The gateway asked an OpenAI-wire upstream for usage the client did
    /// not ask for: its usage chunk is not passed on.
    pub drop_usage_chunk: bool,
    /// The client's request (translated Responses objects repeat its settings).
    pub request: &'a RequestBody<'r>,
}

impl Adapter {
    pub fn build(channel: &ChannelSnapshot, pool: &ClientPool) -> Self {
        let client = || pool.client(channel.timeouts.connect_ms);
        match channel.provider {
            Provider::Mock => Adapter::Mock,
            Provider::Anthropic => Adapter::Anthropic { client: client(), headers: anthropic::headers(channel) },
            Provider::Gemini => Adapter::Gemini { client: client(), headers: gemini::headers(channel) },
            Provider::Cohere => Adapter::Cohere { client: client(), headers: openai::headers(channel) },
            provider => {
                let openai = matches!(provider, Provider::Openai | Provider::AzureOpenai);
                let limit = limit_member(provider);
                Adapter::OpenAi { client: client(), headers: openai::headers(channel), limit, responses: openai }
            }
        }
    }

    /// The upstream URL of one operation for one model (`None`: no URL
    /// needed, or none to use).
    pub fn url(&self, channel: &ChannelSnapshot, model: &ModelSnapshot, operation: Operation) -> Option<String> {
        match self {
            Adapter::OpenAi { .. } if operation == Operation::CountTokens => None,
            // Responses go to chat completions where the upstream has no Responses API.
            Adapter::OpenAi { responses: false, .. } if operation == Operation::Responses => {
                Some(openai::url(channel, model, Operation::Chat))
            }
            Adapter::OpenAi { .. } => Some(openai::url(channel, model, operation)),
            Adapter::Anthropic { .. } => anthropic::url(channel, operation),
            Adapter::Gemini { .. } => gemini::url(channel, model, operation),
            Adapter::Cohere { .. } => cohere::url(channel, operation),
            Adapter::Mock => None,
        }
    }

    /// The upstream URL of a streamed chat answer, where it is not the
    /// chat URL (Gemini's `:streamGenerateContent`).
    pub fn stream_url(&self, channel: &ChannelSnapshot, model: &ModelSnapshot) -> Option<String> {
        match self {
            Adapter::Gemini { .. } => Some(gemini::stream_url(channel, model)),
            _ => None,
        }
    }

    /// The body to send upstream for a client's request, in the channel's
    /// wire format: the client's bytes (the model and `stream_options`
    /// edited as `edit` says) where dialect and format match, else the
    /// translation; the error the client gets when the request cannot be
    /// put in the channel's format.
    pub fn prepare(
        &self,
        operation: Operation,
        request: &RequestBody<'_>,
        original: &Bytes,
        edit: Rewrite<'_>,
        model: &ModelRuntime,
    ) -> Result<Parts, ApiError> {
        let translated = |result: Result<Vec<u8>, ApiError>| result.map(|bytes| Parts::whole(Bytes::from(bytes)));
        let include_usage = edit.stream_options == StreamOptionsEdit::IncludeUsage;
        match (self, operation) {
            (Adapter::OpenAi { responses: true, .. }, Operation::Responses) => {
                // The Responses API takes no `stream_options.include_usage`:
                // its last event carries usage anyway.
                Ok(request
                    .upstream_body(original, Rewrite { model: edit.model, stream_options: StreamOptionsEdit::Keep }))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Responses) => {
                let target = messages::request::Target {
                    model: model.upstream.as_str(),
                    limit: self.limit(),
                    stream: request.stream,
                    include_usage,
                };
                translated(responses::request::translate(request, &target))
            }
            (Adapter::Anthropic { .. }, Operation::Responses)
            | (Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::Messages | Operation::Responses) => {
                translated(self.via_chat(operation, request, model.upstream.as_str()))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Chat | Operation::Embeddings) => {
                Ok(request.upstream_body(original, edit))
            }
            // `count_tokens` is counted by the gateway, on the chat translation.
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Messages | Operation::CountTokens)
            | (Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::CountTokens) => {
                let target = messages::request::Target {
                    model: model.upstream.as_str(),
                    limit: self.limit(),
                    stream: operation == Operation::Messages && request.stream,
                    include_usage,
                };
                translated(messages::request::translate(request, &target))
            }
            (Adapter::Anthropic { .. }, Operation::Chat) => {
                translated(anthropic::request::translate(request, model.upstream.as_str(), request.stream))
            }
            (Adapter::Anthropic { .. }, Operation::Messages | Operation::CountTokens) => {
                Ok(request
                    .upstream_body(original, Rewrite { model: edit.model, stream_options: StreamOptionsEdit::Keep }))
            }
            (Adapter::Anthropic { .. }, Operation::Embeddings) => {
                Err(ApiError::bad_request("unsupported_operation", "Anthropic channels do not serve embeddings."))
            }
            (Adapter::Gemini { .. }, Operation::Chat) => translated(gemini::request::translate(request)),
            (Adapter::Gemini { .. }, Operation::Embeddings) => {
                translated(gemini::request::embeddings(request, &format!("models/{}", model.upstream.as_str())))
            }
            (Adapter::Cohere { .. }, Operation::Chat) => {
                translated(cohere::request::translate(request, model.upstream.as_str(), request.stream))
            }
            (Adapter::Cohere { .. }, Operation::Embeddings) => {
                translated(cohere::request::embeddings(request, model.upstream.as_str()))
            }
        }
    }

    /// A Messages or Responses request in the channel's wire format, through
    /// the chat form (which the channel's chat translation reads).
    fn via_chat(&self, operation: Operation, request: &RequestBody<'_>, upstream: &str) -> Result<Vec<u8>, ApiError> {
        let target = messages::request::Target {
            model: upstream,
            limit: LimitMember::MaxCompletionTokens,
            stream: false,
            include_usage: false,
        };
        let chat = match operation {
            Operation::Responses => responses::request::translate(request, &target)?,
            _ => messages::request::translate(request, &target)?,
        };
        if matches!(self, Adapter::OpenAi { .. } | Adapter::Mock) {
            return Ok(chat);
        }
        let chat = RequestBody::parse(&chat)?;
        match self {
            Adapter::Gemini { .. } => gemini::request::translate(&chat),
            Adapter::Cohere { .. } => cohere::request::translate(&chat, upstream, request.stream),
            _ => anthropic::request::translate(&chat, upstream, request.stream),
        }
    }

    /// Which member carries the output limit in a translated chat request.
    fn limit(&self) -> LimitMember {
        match self {
            Adapter::OpenAi { limit, .. } => *limit,
            _ => LimitMember::MaxTokens,
        }
    }

    /// Sends one prepared request. `uri` is the one [`Adapter::url`] gave;
    /// `client_headers` are the client's, of which Anthropic channels get
    /// `anthropic-beta`.
    pub async fn send(
        &self,
        operation: Operation,
        uri: Option<&Uri>,
        body: Parts,
        request_id: &HeaderValue,
        client_headers: &HeaderMap,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        match (self, operation) {
            (
                Adapter::OpenAi { .. } | Adapter::Mock | Adapter::Gemini { .. } | Adapter::Cohere { .. },
                Operation::CountTokens,
            ) => Ok(local_json(messages::count_tokens(&body.contiguous()))),
            (Adapter::OpenAi { client, headers, .. }, _) => http(client, headers, uri, body, request_id, None).await,
            (Adapter::Anthropic { client, headers }, _) => {
                let beta = client_headers.get(anthropic::ANTHROPIC_BETA);
                http(client, headers, uri, body, request_id, beta).await
            }
            (Adapter::Gemini { client, headers } | Adapter::Cohere { client, headers }, _) => {
                http(client, headers, uri, body, request_id, None).await
            }
            (Adapter::Mock, Operation::Messages | Operation::Responses) => {
                Ok(mock::answer(Operation::Chat, &body.contiguous()))
            }
            (Adapter::Mock, _) => Ok(mock::answer(operation, &body.contiguous())),
        }
    }
}

/// The member that carries the output limit in a chat request the gateway
/// writes for an OpenAI-wire channel: `max_completion_tokens` where the
/// provider takes it (OpenAI's reasoning models require it; Alibaba Model
/// Studio deprecated `max_tokens` for it on 2026-05-30,
/// <https://www.alibabacloud.com/en/notice/model_studio_notice_of_changes_to_certain_model_fields_724>),
/// else `max_tokens`, which the rest of the family knows.
fn limit_member(provider: Provider) -> LimitMember {
    match provider {
        Provider::Openai | Provider::AzureOpenai | Provider::Qwen => LimitMember::MaxCompletionTokens,
        _ => LimitMember::MaxTokens,
    }
}

/// One request over a pooled HTTP client.
async fn http(
    client: &HttpClient,
    headers: &HeaderMap,
    uri: Option<&Uri>,
    body: Parts,
    request_id: &HeaderValue,
    beta: Option<&HeaderValue>,
) -> Result<http::Response<UpstreamBody>, UpstreamError> {
    let uri = uri.cloned().ok_or_else(|| UpstreamError::Connect("the channel has no valid URL".into()))?;
    let length = body.len() as u64;
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = request_headers(headers, request_id, length, beta);
    let response = client.request(request).await.map_err(|e| UpstreamError::Connect(chain(&e)))?;
    Ok(response.map(UpstreamBody::Http))
}

/// A `200 application/json` answer made by the gateway.
fn local_json(body: Bytes) -> http::Response<UpstreamBody> {
    let mut response = http::Response::new(UpstreamBody::local(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl Adapter {
    /// A complete answer as the client gets it, and its usage; the error
    /// the body describes when it is one (sent with a success status).
    pub fn decode_whole(
        &self,
        body: Bytes,
        answering: &Answering<'_, '_>,
    ) -> Result<(Parts, Option<Usage>), ErrorFields> {
        let rename = answering.rename.map(Arc::as_ref);
        let whole = |(bytes, usage): (Vec<u8>, Option<Usage>)| (Parts::whole(Bytes::from(bytes)), usage);
        match (self, answering.operation) {
            (Adapter::OpenAi { responses: true, .. }, Operation::Responses) => {
                responses::response::passthrough_whole(body, rename)
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Responses) => {
                let echo = responses::response::Echo::of(answering.request);
                responses::response::from_chat(&body, answering.model, &echo).map(whole)
            }
            (Adapter::Anthropic { .. } | Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::Responses) => {
                let (chat, usage) = self.chat_whole(&body, answering.model)?;
                let echo = responses::response::Echo::of(answering.request);
                // The provider's own usage: what chat has no member for (cache writes) stays.
                responses::response::from_chat(&chat, answering.model, &echo).map(|(b, _)| whole((b, Some(usage))))
            }
            (Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::Messages) => {
                let (chat, usage) = self.chat_whole(&body, answering.model)?;
                messages::response::message(&chat, answering.model).map(|(b, _)| whole((b, Some(usage))))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Chat | Operation::Embeddings) => {
                Ok(openai::decode_whole(body, rename))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Messages) => {
                messages::response::message(&body, answering.model).map(whole)
            }
            // The gateway's own count: nothing was generated.
            (
                Adapter::OpenAi { .. } | Adapter::Mock | Adapter::Gemini { .. } | Adapter::Cohere { .. },
                Operation::CountTokens,
            ) => Ok((Parts::whole(body), Some(Usage::default()))),
            (Adapter::Anthropic { .. }, Operation::Chat) => {
                anthropic::response::completion(&body, answering.model).map(|(b, u)| whole((b, Some(u))))
            }
            (Adapter::Anthropic { .. }, operation) => anthropic::passthrough_whole(operation, body, rename),
            (Adapter::Gemini { .. }, Operation::Embeddings) => {
                gemini::response::embeddings(&body, answering.model).map(|b| whole((b, None)))
            }
            (Adapter::Gemini { .. }, Operation::Chat) => {
                gemini::response::completion(&body, answering.model).map(|(b, u)| whole((b, Some(u))))
            }
            (Adapter::Cohere { .. }, Operation::Embeddings) => {
                cohere::response::embeddings(&body, answering.model).map(whole)
            }
            (Adapter::Cohere { .. }, Operation::Chat) => {
                cohere::response::completion(&body, answering.model).map(|(b, u)| whole((b, Some(u))))
            }
        }
    }

    /// A whole answer as a chat completion, and its usage (OpenAI-wire
    /// answers are chat completions already, read by their own decoders).
    fn chat_whole(&self, body: &[u8], model: &str) -> Result<(Vec<u8>, Usage), ErrorFields> {
        match self {
            Adapter::Anthropic { .. } => anthropic::response::completion(body, model),
            Adapter::Gemini { .. } => gemini::response::completion(body, model),
            Adapter::Cohere { .. } => cohere::response::completion(body, model),
            Adapter::OpenAi { .. } | Adapter::Mock => Ok((body.to_vec(), Usage::default())),
        }
    }

    /// The decoder of one streamed answer.
    pub fn stream_decoder(&self, answering: &Answering<'_, '_>) -> StreamDecoder {
        match (self, answering.operation) {
            (Adapter::OpenAi { responses: true, .. }, Operation::Responses) => {
                StreamDecoder::Responses(Box::new(responses::stream::Passthrough::new(answering.rename.cloned())))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Responses) => {
                let echo = responses::response::Echo::of(answering.request);
                StreamDecoder::ChatToResponses(Box::new(responses::stream::ToResponses::new(answering.model, echo)))
            }
            (Adapter::Anthropic { .. } | Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::Responses) => {
                let echo = responses::response::Echo::of(answering.request);
                let events = responses::stream::ToResponses::new(answering.model, echo);
                StreamDecoder::ResponsesViaChat(Box::new(via_chat::Chained::new(self.to_chat(answering.model), events)))
            }
            (Adapter::Gemini { .. } | Adapter::Cohere { .. }, Operation::Messages) => {
                let events = messages::stream::ToEvents::new(answering.model);
                StreamDecoder::MessagesViaChat(Box::new(via_chat::Chained::new(self.to_chat(answering.model), events)))
            }
            (Adapter::OpenAi { .. } | Adapter::Mock, Operation::Messages) => {
                StreamDecoder::ChatToMessages(Box::new(messages::stream::ToEvents::new(answering.model)))
            }
            (Adapter::Anthropic { .. }, Operation::Messages) => {
                StreamDecoder::Anthropic(Box::new(anthropic::Passthrough::new(answering.rename.cloned())))
            }
            (Adapter::Anthropic { .. }, _) => {
                let translate = anthropic::stream::ToChunks::new(answering.model, answering.include_usage);
                StreamDecoder::AnthropicToChat(Box::new(translate))
            }
            (Adapter::Cohere { .. }, _) => StreamDecoder::CohereToChat(Box::new(cohere::stream::ToChunks::new(
                answering.model,
                answering.include_usage,
            ))),
            (Adapter::Gemini { .. }, _) => StreamDecoder::GeminiToChat(Box::new(gemini::stream::ToChunks::new(
                answering.model,
                answering.include_usage,
            ))),
            (Adapter::OpenAi { .. } | Adapter::Mock, _) => {
                StreamDecoder::OpenAi(openai::StreamDecoder::new(answering.drop_usage_chunk, answering.rename.cloned()))
            }
        }
    }

    /// The translation of a stream into chat chunks, for a translation
    /// from chat that follows it (so the usage chunk is always written).
    fn to_chat(&self, model: &str) -> via_chat::ToChat {
        match self {
            Adapter::Gemini { .. } => via_chat::ToChat::Gemini(gemini::stream::ToChunks::new(model, true)),
            Adapter::Cohere { .. } => via_chat::ToChat::Cohere(cohere::stream::ToChunks::new(model, true)),
            _ => via_chat::ToChat::Anthropic(anthropic::stream::ToChunks::new(model, true)),
        }
    }

    /// A JSON answer to a streamed request, as the upstream's stream events
    /// (which the stream decoder then reads) or the error it describes.
    pub fn json_for_stream(&self, body: &[u8]) -> Result<Bytes, ErrorFields> {
        match self {
            Adapter::OpenAi { .. } | Adapter::Mock => openai::json_for_stream(body),
            Adapter::Anthropic { .. } => anthropic::json_for_stream(body),
            Adapter::Gemini { .. } => gemini::json_for_stream(body),
            Adapter::Cohere { .. } => cohere::json_for_stream(body),
        }
    }
}

/// The headers of one upstream request: the channel's (with `Host`, so the
/// client need not build it), the request id, the body's length and the
/// client's `anthropic-beta` (Anthropic channels), in a map sized once.
fn request_headers(
    channel: &HeaderMap,
    request_id: &HeaderValue,
    length: u64,
    beta: Option<&HeaderValue>,
) -> HeaderMap {
    // Room for the ones added here and one more: hyper-util's `Host` check
    // takes an entry, which grows a full map.
    let mut headers = HeaderMap::with_capacity(channel.len() + 3 + usize::from(beta.is_some()));
    for (name, value) in channel {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(&crate::server::X_REQUEST_ID, request_id.clone());
    headers.insert(http::header::CONTENT_LENGTH, decimal(length));
    if let Some(beta) = beta {
        headers.insert(anthropic::ANTHROPIC_BETA, beta.clone());
    }
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
/// The other formats' decoders are boxed: the OpenAI passthrough's relay
/// stays as small as it was without them.
pub(crate) enum StreamDecoder {
    /// OpenAI chunks for an OpenAI client: passed on (model renamed, the
    /// usage chunk the gateway asked for dropped).
    OpenAi(openai::StreamDecoder),
    /// Anthropic events for an OpenAI client: translated.
    AnthropicToChat(Box<anthropic::stream::ToChunks>),
    /// Anthropic events for a Messages client: passed on.
    Anthropic(Box<anthropic::Passthrough>),
    /// OpenAI chunks for a Messages client: translated.
    ChatToMessages(Box<messages::stream::ToEvents>),
    /// Responses events for a Responses client: passed on.
    Responses(Box<responses::stream::Passthrough>),
    /// OpenAI chunks for a Responses client: translated.
    ChatToResponses(Box<responses::stream::ToResponses>),
    /// Anthropic, Gemini or Cohere events for a Responses client:
    /// translated through chat.
    ResponsesViaChat(Box<via_chat::Chained<responses::stream::ToResponses>>),
    /// Gemini or Cohere events for a Messages client: translated through chat.
    MessagesViaChat(Box<via_chat::Chained<messages::stream::ToEvents>>),
    /// Gemini events for an OpenAI client: translated.
    GeminiToChat(Box<gemini::stream::ToChunks>),
    /// Cohere events for an OpenAI client: translated.
    CohereToChat(Box<cohere::stream::ToChunks>),
}

/// What happens to one upstream event.
#[derive(Debug)]
pub(crate) enum EventAction {
    Pass,
    Drop,
    Replace(Bytes),
    /// The stream failed: what came before goes out, then this error.
    Fail(ApiError),
}

impl PartialEq for EventAction {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EventAction::Pass, EventAction::Pass) | (EventAction::Drop, EventAction::Drop) => true,
            (EventAction::Replace(a), EventAction::Replace(b)) => a == b,
            (EventAction::Fail(a), EventAction::Fail(b)) => (a.status, a.category) == (b.status, b.category),
            _ => false,
        }
    }
}

impl StreamDecoder {
    /// What is left behind when a decoder moves to another task.
    pub fn closed() -> Self {
        StreamDecoder::OpenAi(openai::StreamDecoder::new(false, None))
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        match self {
            StreamDecoder::OpenAi(d) => d.event(event),
            StreamDecoder::AnthropicToChat(d) => d.event(event),
            StreamDecoder::Anthropic(d) => d.event(event),
            StreamDecoder::ChatToMessages(d) => d.event(event),
            StreamDecoder::Responses(d) => d.event(event),
            StreamDecoder::ChatToResponses(d) => d.event(event),
            StreamDecoder::ResponsesViaChat(d) => d.event(event),
            StreamDecoder::MessagesViaChat(d) => d.event(event),
            StreamDecoder::GeminiToChat(d) => d.event(event),
            StreamDecoder::CohereToChat(d) => d.event(event),
        }
    }

    /// The upstream closed the stream: what the client still gets (the end
    /// of a translated stream), or the error a stream cut short is.
    pub fn end(&mut self) -> EventAction {
        match self {
            StreamDecoder::OpenAi(_) => EventAction::Drop,
            StreamDecoder::AnthropicToChat(d) => d.end(),
            StreamDecoder::Anthropic(d) => d.end(),
            StreamDecoder::ChatToMessages(d) => d.end(),
            StreamDecoder::Responses(d) => d.end(),
            StreamDecoder::ChatToResponses(d) => d.end(),
            StreamDecoder::ResponsesViaChat(d) => d.end(),
            StreamDecoder::MessagesViaChat(d) => d.end(),
            StreamDecoder::GeminiToChat(d) => d.end(),
            StreamDecoder::CohereToChat(d) => d.end(),
        }
    }

    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            StreamDecoder::OpenAi(d) => d.usage,
            StreamDecoder::AnthropicToChat(d) => d.usage(),
            StreamDecoder::Anthropic(d) => d.usage(),
            StreamDecoder::ChatToMessages(d) => d.usage(),
            StreamDecoder::Responses(d) => d.usage(),
            StreamDecoder::ChatToResponses(d) => d.usage(),
            StreamDecoder::ResponsesViaChat(d) => d.usage(),
            StreamDecoder::MessagesViaChat(d) => d.usage(),
            StreamDecoder::GeminiToChat(d) => d.usage(),
            StreamDecoder::CohereToChat(d) => d.usage(),
        }
    }

    /// The error an answer that ended normally on the wire stands for (a
    /// Responses stream's `response.failed`), once.
    pub fn failure(&mut self) -> Option<ApiError> {
        match self {
            StreamDecoder::Responses(d) => d.failure(),
            _ => None,
        }
    }

    /// The answer is complete (only usage and the end marker may follow).
    pub fn finished(&self) -> bool {
        match self {
            StreamDecoder::OpenAi(d) => d.finished,
            StreamDecoder::AnthropicToChat(d) => d.finished,
            StreamDecoder::Anthropic(d) => d.finished,
            StreamDecoder::ChatToMessages(d) => d.finished,
            StreamDecoder::Responses(d) => d.finished,
            StreamDecoder::ChatToResponses(d) => d.finished,
            StreamDecoder::ResponsesViaChat(d) => d.finished(),
            StreamDecoder::MessagesViaChat(d) => d.finished(),
            StreamDecoder::GeminiToChat(d) => d.finished,
            StreamDecoder::CohereToChat(d) => d.finished,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_channels_get_max_completion_tokens_and_the_rest_of_the_family_max_tokens() {
        assert_eq!(limit_member(Provider::Qwen), LimitMember::MaxCompletionTokens);
        assert_eq!(limit_member(Provider::Openai), LimitMember::MaxCompletionTokens);
        for provider in
            [Provider::Zhipu, Provider::Ernie, Provider::Mistral, Provider::Vllm, Provider::OpenaiCompatible]
        {
            assert_eq!(limit_member(provider), LimitMember::MaxTokens, "{provider:?}");
        }
    }
}
