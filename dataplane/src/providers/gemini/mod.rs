//! Google's Gemini API (`provider: gemini`,
//! <https://ai.google.dev/api/generate-content>): `POST
//! {root}/models/{model}:generateContent`, streams from
//! `:streamGenerateContent?alt=sse`, embeddings from `:batchEmbedContents`,
//! with the key in `x-goog-api-key` (a header, not the `?key=` query
//! parameter, which would put the key in URLs and their logs). The root
//! defaults to `https://generativelanguage.googleapis.com/v1beta`.
//!
//! OpenAI-shaped requests are translated ([`request`]) and their answers
//! translated back, whole ([`response`]) or event by event ([`stream`]).

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;
pub(crate) mod wire;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use weaver_crds::snapshot::{ChannelSnapshot, ModelSnapshot};

use super::{ErrorFields, Operation};
use crate::relay::sse;

/// The model's resource name: `models/{model}` unless the channel names a
/// resource itself (`models/...`, `tunedModels/...`).
pub(crate) fn resource(model: &ModelSnapshot) -> String {
    if model.upstream.contains('/') { model.upstream.clone() } else { format!("models/{}", model.upstream) }
}

/// The upstream URL of an operation for one model (Messages and Responses
/// requests go to `generateContent` translated); `None` for `count_tokens`,
/// which the gateway counts itself.
pub(crate) fn url(channel: &ChannelSnapshot, model: &ModelSnapshot, operation: Operation) -> Option<String> {
    let method = match operation {
        Operation::Chat | Operation::Messages | Operation::Responses => "generateContent",
        Operation::Embeddings => "batchEmbedContents",
        Operation::CountTokens => return None,
    };
    Some(format!("{}/{}:{method}", channel.base_url, resource(model)))
}

/// The URL of a streamed chat answer.
pub(crate) fn stream_url(channel: &ChannelSnapshot, model: &ModelSnapshot) -> String {
    format!("{}/{}:streamGenerateContent?alt=sse", channel.base_url, resource(model))
}

/// Every upstream request's headers: host, content type, user agent, the
/// channel's extra headers, and the key as `x-goog-api-key`.
pub(crate) fn headers(channel: &ChannelSnapshot) -> HeaderMap {
    let mut headers = super::openai::common_headers(channel);
    if let Some(credential) = channel.credential.as_ref()
        && let Ok(mut value) = HeaderValue::from_str(&credential.0)
    {
        value.set_sensitive(true);
        headers.insert("x-goog-api-key", value);
    }
    headers
}

/// The fields of Google's error object (`status` is the kind, `code` the
/// HTTP status it stands for), or of whatever else the body is.
pub(crate) fn error_fields(body: &[u8]) -> ErrorFields {
    ErrorFields::parse(body)
}

/// A JSON answer to a streamed request: the error it describes (Google's
/// error object with a 200), or the answer as the events of a stream — one
/// for a whole answer, one per element of a JSON array (the stream's shape
/// without `alt=sse`).
pub(crate) fn json_for_stream(body: &[u8]) -> Result<Bytes, ErrorFields> {
    let error = || error_fields(body);
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| error())?;
    let answers = match value {
        serde_json::Value::Array(answers) => answers,
        answer @ serde_json::Value::Object(_) => vec![answer],
        _ => return Err(error()),
    };
    let mut out = Vec::new();
    for answer in &answers {
        if answer.get("error").is_some() {
            return Err(ErrorFields::parse(answer.to_string().as_bytes()));
        }
        out.extend(sse::data_event(answer));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests;
