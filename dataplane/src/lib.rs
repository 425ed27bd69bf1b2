//! LLM Weaver's data plane: an OpenAI-compatible gateway that authenticates
//! keys, routes across upstream channels and meters what flows through.
//!
//! The request path, in order (each stage one module of [`pipeline`]):
//! `server` (CORS, then the envelope: request id, span, panic -> 500) ->
//! `api` (the dispatcher: route, then `pipeline::authenticate` for every
//! route, then the handler; the body is read under its size limit there) ->
//! `pipeline::admit` (rate limits: [`limits`]) -> `pipeline::plan` (the model's [`routing`] route) ->
//! `pipeline::attempts` (upstream attempts through the channels' `providers` adapters, each channel
//! picked by the policy's strategy, retried as it says) ->
//! `pipeline::respond` (`relay` for streams) -> `metering` when the context drops.

pub mod api;
pub mod cli;
mod clock;
mod config;
pub mod limits;
mod metering;
mod parts;
mod pipeline;
pub mod probe;
mod providers;
mod relay;
pub mod routing;
mod server;
mod state;

pub use state::Gateway;
