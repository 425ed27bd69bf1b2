//! The operator as a client of its gateways, for the UI: the Playground's
//! calls go to the gateway Service's client port (`--gateway-url`) with the
//! API key the page sends, and channel tests to its admin port
//! (`--gateway-admin-url`) with the operator's own token.
//!
//! That token is derived from the operator's serving key (which every
//! replica shares through its TLS Secret), so every replica presents the
//! same one; only its SHA-256 goes into the snapshot, and a cluster-mode
//! gateway accepts on its admin routes a bearer token whose digest the live
//! snapshot names. The token never leaves the operator but on those calls.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The label the token's derivation hashes in, so it is no other secret
/// derived from the serving key.
const TOKEN_LABEL: &[u8] = b"llm-weaver operator token for gateway admin routes v1\0";

/// How long connecting to a gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a channel test may take, the gateway's own limit (60 s) and
/// some.
const TEST_TIMEOUT: Duration = Duration::from_secs(75);

/// The operator's token for gateways' admin routes.
#[derive(Clone)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// The token of every replica sharing `serving_key_pem`.
    pub fn derive(serving_key_pem: &[u8]) -> Self {
        let mut hash = Sha256::new();
        hash.update(TOKEN_LABEL);
        hash.update(serving_key_pem);
        Self(format!("lwo-{}", hex::encode(hash.finalize())))
    }

    /// What the snapshot carries: SHA-256 of the token, lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Where the gateways are (the Helm chart points both at the gateway
/// Service) and the client that calls them.
pub struct Gateways {
    /// The client API's base (`http://llm-weaver-gateway.NS.svc`), without `/v1`.
    pub(crate) url: Option<String>,
    /// The admin listener's base (`http://llm-weaver-gateway.NS.svc:9090`).
    pub(crate) admin_url: Option<String>,
    pub(crate) token: OperatorToken,
    /// For Playground calls: no overall timeout, an answer streams as long
    /// as it takes.
    pub(crate) streaming: reqwest::Client,
    /// For channel tests.
    pub(crate) admin: reqwest::Client,
}

impl Gateways {
    pub fn new(url: Option<String>, admin_url: Option<String>, token: OperatorToken) -> Result<Self, reqwest::Error> {
        let trim = |u: String| u.trim_end_matches('/').to_owned();
        let base = || reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
        Ok(Self {
            url: url.map(trim),
            admin_url: admin_url.map(trim),
            token,
            streaming: base().build()?,
            admin: base().timeout(TEST_TIMEOUT).build()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn replicas_sharing_a_key_share_the_token_and_the_snapshot_names_only_its_digest() {
        let a = OperatorToken::derive(b"key one");
        assert_eq!(a.0, OperatorToken::derive(b"key one").0);
        assert_ne!(a.0, OperatorToken::derive(b"key two").0);
        assert!(!a.sha256_hex().contains(a.0.trim_start_matches("lwo-")));
        assert_eq!(a.sha256_hex(), hex::encode(Sha256::digest(a.0.as_bytes())));
        assert_eq!(a.sha256_hex().len(), 64);
    }
}
