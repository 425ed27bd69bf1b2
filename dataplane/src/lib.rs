//! LLM Weaver's data plane: an OpenAI-compatible gateway that authenticates
//! keys, routes across upstream channels and meters what flows through.

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod gateway;
pub mod meter;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod relay;
pub mod request;
pub mod router;
pub mod runtime;
pub mod source;
pub mod sse;
pub mod stats;
pub mod upstream;
pub mod usage;

pub use gateway::{Gateway, Settings};
