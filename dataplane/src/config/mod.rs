//! Where the configuration comes from: a folder of manifests (standalone), or
//! the operator's snapshot stream with a local cache (cluster mode).

pub mod cluster;
pub mod manifests;
