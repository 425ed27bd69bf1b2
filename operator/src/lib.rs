//! The LLM Weaver operator: watches Channel, ApiKey, RoutingPolicy and the
//! Secrets they reference, compiles them into snapshots with the shared
//! compiler, serves the snapshot stream to gateways, issues and rotates keys,
//! and writes health, usage and problems back into status.

pub mod alerts;
pub mod auth;
pub mod cli;
pub mod context;
pub mod gateway;
pub mod inject;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod oidc;
pub mod run;
pub mod server;
pub mod state;
pub mod status;
pub mod tls;
pub mod ui;
pub mod usage;
pub mod usage_api;
pub mod usage_store;
