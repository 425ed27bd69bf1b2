//! What the mock upstream does with the next request: pacing, answer length,
//! and faults that real upstreams have shown and that broke other gateways.

use std::time::Duration;

/// How the upstream behaves; change it at any time with
/// [`MockUpstream::set`](crate::MockUpstream::set). The default is a healthy,
/// instant OpenAI upstream.
///
/// When several knobs apply to one request they are checked in this order:
/// `latency`, `require_key`, `error_status`, unknown route, malformed body,
/// `reject_stream_options`, then (for `"stream": true` only)
/// `json_for_stream`, `big_event`, and the normal answer.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Delay before the response headers (a slow model's time to first byte).
    pub latency: Duration,
    /// Completion length in tokens (= content chunks when streaming), made of
    /// filler words; `None` quotes the last message, as today's mock channel
    /// does.
    pub tokens: Option<usize>,
    /// Delay between stream events (a model generating tokens).
    pub chunk_delay: Duration,
    /// Answer every request with this HTTP status and an error body (code
    /// `injected`), shaped by [`error_format`](Self::error_format).
    pub error_status: Option<u16>,
    /// With `error_status: Some(429)`: a `Retry-After: <seconds>` header, as
    /// OpenAI and Azure OpenAI send on rate limits.
    pub retry_after: Option<u64>,
    /// With `error_status`: the error message is padded so the whole body is
    /// this many bytes (exactly, unless the unpadded body is already larger).
    /// Mimics validation errors that echo the offending input back, as
    /// FastAPI/pydantic-based servers such as vLLM do: 100 KiB 400s happen.
    pub error_body_bytes: Option<usize>,
    /// How every error body this upstream sends is shaped.
    pub error_format: ErrorFormat,
    /// Cut the connection after this many body frames of a stream (stream
    /// events; each piece of a [`big_event`](Self::big_event) counts as one).
    pub drop_after: Option<usize>,
    /// Hold a stream after this many body frames until
    /// [`MockUpstream::release`](crate::MockUpstream::release) is called: a
    /// test can then see what reached the client while the upstream waits,
    /// without timing anything.
    pub hold_after: Option<usize>,
    /// Only accept `Authorization: Bearer <key>` (or `api-key: <key>`, as Azure
    /// OpenAI takes it); anything else is a 401 `invalid_api_key`.
    pub require_key: Option<String>,
    /// Usage objects carry null members, as some OpenAI-compatible servers send
    /// them (their usage models declare the details optional and serialise the
    /// unset ones as null instead of leaving them out):
    /// `"prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null`,
    /// in whole answers and in the stream's usage chunk. A gateway that reads
    /// `cached_tokens` as a plain integer fails to meter these.
    pub null_usage_details: bool,
    /// Never report usage: whole answers have no `usage` member, and streams
    /// no usage chunk even when asked for one, as OpenAI-compatible servers
    /// that ignore `stream_options` send them.
    pub omit_usage: bool,
    /// A `"stream": true` request is answered `200 application/json` instead of
    /// an event stream, as some OpenAI-compatible servers and proxies do when
    /// they fail before streaming (quota errors) or ignore `stream` altogether.
    pub json_for_stream: Option<JsonForStream>,
    /// Like Azure OpenAI with `api-version=2024-02-01`: a body with a
    /// `stream_options` member is a 400 "Unrecognized request argument
    /// supplied: stream_options"; without it streams work (and, having no
    /// `include_usage`, end without a usage chunk).
    pub reject_stream_options: bool,
    /// A prompt cache, as OpenAI's and vLLM's: the upstream remembers each
    /// chat prompt's prefix (its leading system messages and the first other
    /// message) and reports the prefix's tokens as
    /// `prompt_tokens_details.cached_tokens` when a later request repeats it.
    pub prefix_cache: bool,
    /// `(total, piece)`: a streamed answer's content is one SSE event of
    /// `total` bytes (`data: ` to the blank line), sent as separate body frames
    /// of `piece` bytes, after the role chunk and before the finish chunk (and
    /// the usage chunk when asked for) and `[DONE]`. Checks that relaying one
    /// huge event is linear, e.g. `(16 << 20, 16 << 10)`.
    pub big_event: Option<(usize, usize)>,
}

/// What a `"stream": true` request gets under [`Behaviour::json_for_stream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonForStream {
    /// `200 application/json` with an OpenAI `insufficient_quota` error object
    /// (OpenAI-shaped whatever [`Behaviour::error_format`] says): an error that
    /// arrives with a success status, where an event stream was expected.
    Error,
    /// `200 application/json` with a whole `chat.completion`, as servers that
    /// ignore `stream` send it.
    Completion,
}

/// The shape of error bodies ([`Behaviour::error_format`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorFormat {
    /// OpenAI's `{"error":{"message","type","param","code"}}`.
    #[default]
    #[value(name = "openai")]
    OpenAi,
    /// vLLM's older flat object:
    /// `{"object":"error","message":"...","type":"BadRequestError","param":null,"code":400}`
    /// (`type` named after the status, `code` the status number).
    VllmFlat,
    /// A `text/plain` body holding only the message, as reverse proxies and
    /// some self-hosted servers send it.
    PlainText,
}
