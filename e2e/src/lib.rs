//! Test harness for LLM Weaver: a mock LLM upstream that speaks the OpenAI wire
//! format over real HTTP (with fault injection), and a way to run the gateway
//! under test on a free loopback port with a folder of manifests.

pub mod cluster;
pub mod gateway;
pub mod mock_upstream;
