//! Client keys.

use std::collections::HashSet;

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::namespaces::NamespaceDefaults;
use super::routes::RouteTables;
use super::{Kind, ProblemReason, Problems, SecretIndex, namespace_of, sorted};
use crate::api_key::{ApiKey, Budget, Logging};
use crate::common::SecretKeyRef;
use crate::money::Usd;
use crate::snapshot::{BudgetSnapshot, KeyDigest, KeySnapshot};

/// The Secret an ApiKey reads when its spec names none.
pub fn default_secret_ref(key_name: &str) -> SecretKeyRef {
    SecretKeyRef { name: format!("{key_name}-apikey"), key: "apiKey".to_owned() }
}

/// Secret data key holding the rotated-out key, next to the current one.
pub fn previous_key_field(key: &str) -> String {
    format!("{key}.previous")
}

/// Annotation on a generated Secret: unix seconds until which the previous key
/// is still accepted.
pub const PREVIOUS_EXPIRES_ANNOTATION: &str = "llmweaver.io/previous-key-expires-at";

/// An ApiKey's (or a NamespacePolicy's) budget as the gateways enforce it
/// (the operator's usage API shows the same); `Err` says what is wrong with it.
pub fn budget_snapshot(b: &Budget) -> Result<BudgetSnapshot, String> {
    match b.amount.parse::<Usd>() {
        Ok(amount) if amount.0 > 0 => {
            Ok(BudgetSnapshot { amount, period: b.period, reserve_output_tokens: b.reserve_output_tokens })
        }
        Ok(_) => Err("budget.amount must be positive".to_owned()),
        Err(e) => Err(format!("budget.amount: {e}")),
    }
}

/// Lower-case hex SHA-256 of a presented key, as the snapshot stores it.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Bytes stored per body under `logging`; `None`: bodies are not logged.
fn log_bodies(logging: Option<&Logging>) -> Option<u32> {
    logging.filter(|l| l.bodies).map(|l| l.max_body_bytes.unwrap_or(Logging::DEFAULT_MAX_BODY_BYTES))
}

/// The keys' environment: their namespace's defaults, route tables, Secrets.
pub(super) struct KeyInputs<'s, 'a> {
    pub secrets: &'s SecretIndex<'a>,
    pub namespaces: &'s NamespaceDefaults<'a>,
}

pub(super) fn compile_keys(
    keys: &[ApiKey],
    inputs: &KeyInputs<'_, '_>,
    tables: &mut RouteTables,
    problems: &mut Problems,
) -> Vec<KeySnapshot> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(keys.len());
    for k in sorted(keys) {
        let compiled = compile_key(k, inputs, tables, problems);
        match compiled {
            Ok(snap) => {
                if snap.digests.iter().any(|d| !seen.insert(d.sha256.clone())) {
                    problems.push(
                        Kind::ApiKey,
                        k,
                        ProblemReason::DuplicateKey,
                        "its key material is already used by another ApiKey; this one is ignored".to_owned(),
                    );
                    continue;
                }
                out.push(snap);
            }
            Err((reason, message)) => problems.push(Kind::ApiKey, k, reason, message),
        }
    }
    out
}

fn compile_key(
    k: &ApiKey,
    KeyInputs { secrets, namespaces }: &KeyInputs<'_, '_>,
    tables: &mut RouteTables,
    problems: &mut Problems,
) -> Result<KeySnapshot, (ProblemReason, String)> {
    let ns = namespace_of(k);
    let name = k.name_any();
    let spec = &k.spec;
    let invalid = |m: String| (ProblemReason::InvalidField, m);
    let secret_ref = spec.secret_ref.clone().unwrap_or_else(|| default_secret_ref(&name));
    let key = secrets.value(ns, &secret_ref)?;
    let mut digests = vec![KeyDigest { sha256: key_digest(&key), expires_at: None }];
    if let Some((previous, until)) = secrets.previous_key(ns, &secret_ref) {
        digests.push(KeyDigest { sha256: key_digest(&previous), expires_at: Some(until) });
    }
    // A broken allowlist must fail closed, never open the key to everyone.
    let ip_allowlist = spec
        .ip_allowlist
        .iter()
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid(format!("ipAllowlist: {entry:?} is not an IP address or CIDR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let budget = spec.budget.as_ref().map(budget_snapshot).transpose().map_err(invalid)?;
    let policy = spec.routing_policy.as_deref();
    let policy = match policy {
        Some(p) if !tables.has_policy(ns, p) => {
            problems.push(
                Kind::ApiKey,
                k,
                ProblemReason::RoutingPolicyNotFound,
                format!("RoutingPolicy {ns}/{p} not found; the namespace's default routing applies"),
            );
            None
        }
        other => other,
    };
    Ok(KeySnapshot {
        namespace: ns.to_owned(),
        name,
        digests,
        allowed_models: spec.allowed_models.clone(),
        disabled: spec.disabled,
        expires_at: spec.expires_at.as_ref().map(|t| t.0.as_second()),
        ip_allowlist,
        route_table: tables.table_for(ns, policy),
        budget,
        rate_limit: spec.rate_limit.clone(),
        // A key's own `logging` wins, even when it turns bodies off.
        log_bodies: log_bodies(spec.logging.as_ref().or_else(|| namespaces.logging(ns))),
    })
}
