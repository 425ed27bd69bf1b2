//! The `llmweaver.io/v1alpha1` API as a library: the resource types, the config
//! snapshot pushed to gateways and the pure compiler from one to the other.
//!
//! Nothing here does I/O, so the operator (resources from the API server) and the
//! standalone gateway (resources from a folder of manifests) compile the same way,
//! and manifests read from files are admitted against the same generated CRDs
//! the API server enforces ([`validation`]).

pub mod api_key;
pub mod budget;
pub mod channel;
pub mod common;
pub mod compiler;
pub mod crdgen;
pub mod manifests;
pub mod money;
pub mod namespace_policy;
pub mod protocol;
pub mod routing_policy;
pub mod snapshot;
pub mod validation;

pub use api_key::{ApiKey, ApiKeySpec};
pub use channel::{Channel, ChannelSpec, Provider};
pub use compiler::{Problem, ProblemReason, Resources, compile};
pub use namespace_policy::{NamespacePolicy, NamespacePolicySpec};
pub use routing_policy::{RoutingPolicy, RoutingPolicySpec};
pub use snapshot::Snapshot;

/// API group of every kind in this crate.
pub const GROUP: &str = "llmweaver.io";
/// API version of every kind in this crate.
pub const VERSION: &str = "v1alpha1";
