//! Requests the gateway sends on its own, outside the client pipeline:
//! active health check probes ([`checks`]) and on-demand channel tests
//! (the admin listener's `channels/.../test`, and the `channel-test`
//! command that calls it: [`cli`]). Both go through [`exchange`].

pub(crate) mod checks;
pub mod cli;
pub(crate) mod exchange;
