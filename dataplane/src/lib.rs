//! LLM Weaver's data plane: an OpenAI-compatible gateway that authenticates
//! keys, routes across upstream channels and meters what flows through.
//!
//! The request path, in order (each stage one module of [`pipeline`]):
//! `server` (request id, CORS, body limit) -> `pipeline::authenticate` (a
//! layer on the whole `/v1` router) -> `api` (thin handlers) ->
//! `pipeline::admit` -> `pipeline::plan` -> `pipeline::attempts` (one upstream
//! attempt each through the channel's `providers` adapter) ->
//! `pipeline::respond` (`relay` for streams) -> `metering` when the context drops.

pub mod api;
pub mod cli;
mod clock;
mod config;
mod metering;
mod parts;
mod pipeline;
mod providers;
mod relay;
mod routing;
mod server;
mod state;

pub use state::Gateway;
