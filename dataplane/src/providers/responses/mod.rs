//! The OpenAI Responses API in front of every channel (`POST /v1/responses`).
//! OpenAI and Azure OpenAI channels serve it themselves: the request passes
//! through (the model renamed) and the answer — whole or event by event —
//! is only read for its usage ([`response::passthrough_whole`],
//! [`stream::Passthrough`]). Every other channel gets a stateless request
//! translated into a chat completion request ([`request`]), and the answer
//! back into a response object ([`response`]) or Responses stream events
//! ([`stream`]); Anthropic channels go through the chat translation on the
//! way ([`crate::providers::anthropic`]). What needs OpenAI's stored state
//! is refused with a 400 there ([`request::stateless`]).

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;

#[cfg(test)]
mod tests;
