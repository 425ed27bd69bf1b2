//! `authenticate`: run by the API dispatcher for every route before any
//! handler (a route cannot forget it). It finds the key by the SHA-256 of
//! what was presented, checks what does not depend on the body (rotation
//! grace, disabled, expiry, client address), and hands the handler a
//! [`Caller`]; a refusal is answered and recorded here.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::Context;
use crate::api::{ApiError, ApiRoute};
use crate::clock::unix_seconds;
use crate::metering::BodyLog;
use crate::state::{Digest, Gateway, Runtime};

/// The presented key: `Authorization: Bearer <key>`, Azure-style `api-key`,
/// or Anthropic-style `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("api-key").or_else(|| headers.get("x-api-key")).and_then(|v| v.to_str().ok()).map(str::trim)
}
/// The client's address: the peer, unless the peer is a trusted proxy, in which
/// case the right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer_ip = peer.to_canonical();
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

/// An authenticated request's caller. `authenticate` is the only way to get
/// one, and every API handler takes one.
pub(crate) struct Caller {
    /// The live configuration, loaded once for the whole request.
    pub rt: Arc<Runtime>,
    /// Index into the runtime's keys.
    pub key: u32,
    pub client: IpAddr,
    pub endpoint: ApiRoute,
    pub request_id: HeaderValue,
    /// The client's own id for the request, when it sent one.
    pub client_request_id: Option<HeaderValue>,
    pub started: Instant,
    /// Set when the key logs bodies: the cap, and the presented key to redact.
    pub log: Option<Box<BodyLog>>,
}

/// Authenticates one request to `endpoint` from `peer`; a refusal is
/// recorded here and comes back as the error to answer.
pub(crate) fn authenticate(
    gw: &Arc<Gateway>,
    peer: IpAddr,
    headers: &HeaderMap,
    endpoint: ApiRoute,
    request_id: HeaderValue,
) -> Result<Caller, ApiError> {
    let started = Instant::now();
    let rt = gw.live();
    let client = client_ip(peer, headers, &gw.settings.trusted_proxies);
    // Read again here rather than handed down from the envelope: two header
    // lookups, and the in-process playground path has no envelope.
    let client_request_id = crate::server::client_request_id(headers);
    match check(&rt, headers, client, unix_seconds()) {
        Ok(key) => {
            // Nothing is copied unless the key logs bodies.
            let log = rt.snapshot.keys.get(key as usize).and_then(|k| k.log_bodies).and_then(|max| {
                let presented = presented_key(headers)?;
                Some(Box::new(BodyLog { max_bytes: max as usize, key: presented.into() }))
            });
            Ok(Caller { rt, key, client, endpoint, request_id, client_request_id, started, log })
        }
        Err((key, error)) => {
            let caller = Caller {
                rt,
                key: key.unwrap_or(u32::MAX),
                client,
                endpoint,
                request_id,
                client_request_id,
                started,
                log: None,
            };
            let mut ctx = Context::new(gw.clone(), caller);
            ctx.record.key = key;
            ctx.record.status = error.status.as_u16();
            Err(error)
        }
    }
}

/// Checks a request's key; the error carries the key when it is known.
fn check(rt: &Runtime, headers: &HeaderMap, client: IpAddr, now_unix: i64) -> Result<u32, (Option<u32>, ApiError)> {
    let key = presented_key(headers).filter(|k| !k.is_empty()).ok_or_else(|| {
        (
            None,
            ApiError::unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`, or in an `api-key` or `x-api-key` header.",
            ),
        )
    })?;
    let digest: Digest = Sha256::digest(key.as_bytes()).into();
    let (idx, k, rotated_out_at) =
        rt.key_by_digest(&digest).ok_or_else(|| (None, ApiError::unauthorized("Incorrect API key provided.")))?;
    // A key replaced by rotation is as good as unknown once its grace ends.
    if rotated_out_at.is_some_and(|t| now_unix >= t) {
        return Err((None, ApiError::unauthorized("Incorrect API key provided.")));
    }
    let refuse = |e| Err((Some(idx), e));
    if k.disabled {
        return refuse(ApiError::forbidden("key_disabled", "This API key has been disabled."));
    }
    if k.expires_at.is_some_and(|t| now_unix >= t) {
        return refuse(ApiError::forbidden("key_expired", "This API key has expired."));
    }
    if !k.ip_allowlist.is_empty() && !k.ip_allowlist.iter().any(|n| n.contains(&client)) {
        return refuse(ApiError::forbidden("ip_not_allowed", format!("This API key may not be used from {client}.")));
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
        let via_proxy: std::net::SocketAddr = "10.0.0.5:1234".parse().unwrap_or_else(|_| panic!());
        let direct: std::net::SocketAddr = "198.51.100.7:1234".parse().unwrap_or_else(|_| panic!());
        let (via_proxy, direct) = (via_proxy.ip(), direct.ip());
        assert_eq!(client_ip(via_proxy, &xff, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap_or_else(|_| panic!()));
        assert_eq!(client_ip(direct, &xff, &trusted), direct);
        assert_eq!(client_ip(via_proxy, &xff, &[]), via_proxy);
    }

    #[test]
    fn keys_come_from_bearer_or_api_key_headers() {
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(presented_key(&headers(&[("authorization", "bearer  abc ")])), Some("abc"));
        assert_eq!(presented_key(&headers(&[("api-key", "xyz")])), Some("xyz"));
        assert_eq!(presented_key(&headers(&[("x-api-key", "sk-a ")])), Some("sk-a"));
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
    }
}
