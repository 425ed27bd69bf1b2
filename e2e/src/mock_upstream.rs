//! The mock LLM upstream, which lives in its own crate (`weaver-mock-upstream`)
//! so that it shares no code with the gateway it tests; re-exported here for the
//! tests that name it `weaver_e2e::mock_upstream`.

pub use weaver_mock_upstream::{
    Behaviour, ErrorFormat, JsonForStream, MockUpstream, Recorded, anthropic, gemini, responses,
};
