//! Who is calling: key lookup by digest, and the key's checks that do not
//! depend on the model (disabled, expired, client address).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::runtime::{Digest, Runtime};

/// The presented key: `Authorization: Bearer <key>`, or Azure-style `api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which
/// case the right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer_ip = peer.ip().to_canonical();
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut client = peer_ip;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !is_trusted(&client) {
                        return client;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

/// Authenticates a request; returns the key's index in the runtime.
pub fn authenticate(rt: &Runtime, headers: &HeaderMap, client: IpAddr, now_unix: i64) -> Result<usize, ApiError> {
    let key = presented_key(headers).filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or in an `api-key` header.",
        )
    })?;
    let digest: Digest = Sha256::digest(key.as_bytes()).into();
    let (idx, k, rotated_out_at) =
        rt.key_by_digest(&digest).ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?;
    // A key replaced by rotation is as good as unknown once its grace ends.
    if rotated_out_at.is_some_and(|t| now_unix >= t) {
        return Err(ApiError::unauthorized("Incorrect API key provided."));
    }
    if k.disabled {
        return Err(ApiError::forbidden("key_disabled", "This API key has been disabled."));
    }
    if k.expires_at.is_some_and(|t| now_unix >= t) {
        return Err(ApiError::forbidden("key_expired", "This API key has expired."));
    }
    if !k.ip_allowlist.is_empty() && !k.ip_allowlist.iter().any(|n| n.contains(&client)) {
        return Err(ApiError::forbidden("ip_not_allowed", format!("This API key may not be used from {client}.")));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap_or_else(|_| panic!("bad header value")));
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| panic!())];
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        let via_proxy: SocketAddr = "10.0.0.5:1234".parse().unwrap_or_else(|_| panic!());
        let direct: SocketAddr = "198.51.100.7:1234".parse().unwrap_or_else(|_| panic!());
        assert_eq!(client_ip(via_proxy, &xff, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap_or_else(|_| panic!()));
        assert_eq!(client_ip(direct, &xff, &trusted), direct.ip());
        assert_eq!(client_ip(via_proxy, &xff, &[]), via_proxy.ip());
    }

    #[test]
    fn keys_come_from_bearer_or_api_key_headers() {
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(presented_key(&headers(&[("authorization", "bearer  abc ")])), Some("abc"));
        assert_eq!(presented_key(&headers(&[("api-key", "xyz")])), Some("xyz"));
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
    }
}
