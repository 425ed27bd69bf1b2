//! The Anthropic Messages API in front of channels that speak OpenAI's wire
//! format: a Messages request is translated into a chat completion request
//! ([`request`]), and the answer back into a message ([`response`]) or into
//! Anthropic's stream events as chunks arrive ([`stream`]).
//! `count_tokens` is answered by the gateway itself ([`count_tokens`]).

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;

use bytes::Bytes;

/// `{"input_tokens": n}` for a chat request (the translated Messages
/// request): its text counted with the gateway's tokenizer, as usage the
/// upstream did not report is (OpenAI's `o200k_base`; other models'
/// tokenizers differ by some percent).
pub(crate) fn count_tokens(chat_request: &[u8]) -> Bytes {
    let (n, _) = crate::metering::count_input_tokens(chat_request);
    Bytes::from(format!("{{\"input_tokens\":{n}}}"))
}

#[cfg(test)]
mod tests;
