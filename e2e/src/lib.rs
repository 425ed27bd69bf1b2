//! Test harness for LLM Weaver: a way to run the gateway under test on a free
//! loopback port (standalone with a folder of manifests, or following an
//! operator), the manifests tests build, a provider test's bed (mock upstream
//! and standalone gateway), helpers for the operator tests
//! against a real API server (and a whole test bed of operator and gateway
//! processes there), a Postgres a test can stop and start, reading back the
//! usage records a store holds, reading the operator's usage API as a team
//! does, a real Prometheus scraping them, a small OpenID Connect issuer
//! standing in for a team's identity provider, and (re-exported) the mock
//! LLM upstream.

pub mod bed;
pub mod browser;
pub mod cluster;
pub mod fixtures;
pub mod gateway;
pub mod mock_upstream;
pub mod oidc_issuer;
pub mod postgres;
pub mod prometheus;
pub mod provider_bed;
pub mod records;
pub mod usage_reader;
