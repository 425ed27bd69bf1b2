//! A mock LLM upstream for tests and benchmarks: OpenAI's chat completions,
//! embeddings and Responses API ([`responses`]), Anthropic's Messages API,
//! Google's Gemini API and Cohere's v2 API ([`anthropic`]'s, [`gemini`]'s
//! and [`cohere`]'s docs list their shapes and magic words).
//!
//! It speaks each wire format from its own code (request parsing, keys,
//! error bodies, answers, SSE), deliberately sharing nothing with the gateway:
//! a bug common to both would otherwise cancel out in the tests. Answers are
//! deterministic (a quote of the last message, or filler tokens) with realistic
//! usage, served over real HTTP with knobs for latency, stream length and
//! pacing, and for faults real upstreams have shown ([`Behaviour`]). Every
//! request is recorded for assertions ([`MockUpstream::requests`]), and the
//! requests in flight are counted ([`MockUpstream::peak_in_flight`]).

pub mod anthropic;
mod behaviour;
mod chat;
pub mod cohere;
mod embeddings;
mod error;
pub mod gemini;
mod in_flight;
mod request;
pub mod responses;
mod server;
mod stream;

pub use behaviour::{Behaviour, ErrorFormat, JsonForStream};
pub use server::{MockUpstream, Recorded};
