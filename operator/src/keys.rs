//! Issuing and rotating client keys into Secrets (leader only).
//!
//! When an ApiKey's Secret does not exist, a high-entropy key is generated into
//! it, owned by the ApiKey. A Secret the user provided is used as it is and
//! never modified. Rotation (a new `rotationTrigger` value, or the
//! `llmweaver.io/rotate` annotation) writes a new key and keeps the old one
//! valid for the grace period.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use rand::Rng;
use rand::distr::Alphanumeric;
use weaver_crds::ApiKey;
use weaver_crds::common::parse_duration;
use weaver_crds::compiler::keys::{PREVIOUS_EXPIRES_ANNOTATION, default_secret_ref, previous_key_field};

use crate::context::Context;
use crate::metrics::ErrorCategory;

/// Marks Secrets the operator generated (and may therefore rewrite).
pub const MANAGED_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "llm-weaver");
/// Names the ApiKey a generated Secret belongs to.
pub const KEY_LABEL: &str = "llmweaver.io/api-key";
/// On an ApiKey: change the value to rotate (same as `spec.rotationTrigger`).
pub const ROTATE_ANNOTATION: &str = "llmweaver.io/rotate";
/// On a generated Secret: the trigger value its current key answers to.
const TRIGGER_ANNOTATION: &str = "llmweaver.io/rotation-trigger";
const DEFAULT_GRACE_SECONDS: i64 = 3600;

/// `lw-` and 43 alphanumerics: about 256 bits.
pub fn generate_key() -> String {
    let body: String = rand::rng().sample_iter(&Alphanumeric).take(43).map(char::from).collect();
    format!("lw-{body}")
}

/// The rotation trigger an ApiKey asks for.
fn trigger(k: &ApiKey) -> String {
    let annotation = k.annotations().get(ROTATE_ANNOTATION).cloned().unwrap_or_default();
    let spec = k.spec.rotation_trigger.clone().unwrap_or_default();
    if annotation.is_empty() { spec } else { format!("{spec}/{annotation}") }
}

/// Secrets by (namespace, name), built once per pass.
pub type SecretIndex = HashMap<(String, String), Arc<Secret>>;

pub fn index_secrets(ctx: &Context) -> SecretIndex {
    ctx.stores.secrets.state().into_iter().map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s)).collect()
}

/// The Secret an ApiKey reads, with the key field, if it exists.
pub fn secret_of<'a>(secrets: &'a SecretIndex, k: &ApiKey) -> (Option<&'a Arc<Secret>>, String, String) {
    let r = k.spec.secret_ref.clone().unwrap_or_else(|| default_secret_ref(&k.name_any()));
    let found = secrets.get(&(k.namespace().unwrap_or_default(), r.name.clone()));
    (found, r.name, r.key)
}

/// Creates missing Secrets and rotates generated ones whose trigger changed.
pub async fn issue_all(ctx: &Arc<Context>, secrets: &SecretIndex) {
    for k in ctx.stores.api_keys.state() {
        let Some(ns) = k.namespace() else { continue };
        let (existing, name, field) = secret_of(secrets, &k);
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let result = match existing {
            None => create(&api, &k, &name, &field).await,
            Some(s) if issued_for(s, &k) && s.annotations().get(TRIGGER_ANNOTATION) != Some(&trigger(&k)) => {
                rotate(&api, &k, s, &field).await.map(drop)
            }
            Some(_) => continue,
        };
        if let Err(e) = result {
            ctx.metrics.error(ErrorCategory::secret_write);
            tracing::warn!(namespace = %ns, apikey = %k.name_any(), error = %e, "cannot write the key's Secret");
        }
    }
}

/// Whether the operator generated this Secret for this very ApiKey: only then
/// may it rewrite the Secret or show part of its key. A Secret that merely
/// carries our label (the TLS Secret, another key's) is not this key's.
pub fn issued_for(s: &Secret, k: &ApiKey) -> bool {
    let labels = s.labels();
    let uid = k.meta().uid.as_deref();
    labels.get(MANAGED_LABEL.0).map(String::as_str) == Some(MANAGED_LABEL.1)
        && labels.get(KEY_LABEL) == Some(&k.name_any())
        && s.owner_references().iter().any(|o| o.kind == "ApiKey" && Some(o.uid.as_str()) == uid)
}

async fn create(api: &Api<Secret>, k: &ApiKey, name: &str, field: &str) -> Result<(), kube::Error> {
    let owner = k.controller_owner_ref(&()).into_iter().collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: k.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_LABEL.0.to_owned(), MANAGED_LABEL.1.to_owned()),
                (KEY_LABEL.to_owned(), k.name_any()),
            ])),
            annotations: Some(BTreeMap::from([(TRIGGER_ANNOTATION.to_owned(), trigger(k))])),
            owner_references: Some(owner),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(field.to_owned(), ByteString(generate_key().into_bytes()))])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace = ?k.namespace(), apikey = %k.name_any(), secret = name, "key issued");
            Ok(())
        }
        // Another writer was first; the watch brings its Secret.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a new key into `s` (a Secret [`issued_for`] `k`), keeping the one
/// it replaces valid for the grace period; answers the new key and when the
/// old one stops working (unix seconds). Also the UI's "rotate" (`crate::ui`).
pub async fn rotate(api: &Api<Secret>, k: &ApiKey, s: &Secret, field: &str) -> Result<Rotated, kube::Error> {
    let grace = k
        .spec
        .rotation_grace_period
        .as_deref()
        .and_then(|g| parse_duration(g).ok())
        .map_or(DEFAULT_GRACE_SECONDS, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut updated = s.clone();
    let data = updated.data.get_or_insert_with(BTreeMap::new);
    if let Some(current) = data.get(field).cloned() {
        data.insert(previous_key_field(field), current);
    }
    let key = generate_key();
    data.insert(field.to_owned(), ByteString(key.clone().into_bytes()));
    let previous_valid_until = k8s_openapi::jiff::Timestamp::now().as_second() + grace;
    let annotations = updated.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(PREVIOUS_EXPIRES_ANNOTATION.to_owned(), previous_valid_until.to_string());
    annotations.insert(TRIGGER_ANNOTATION.to_owned(), trigger(k));
    // resourceVersion is kept: a concurrent writer makes this fail, not overwrite.
    api.replace(&s.name_any(), &PostParams::default(), &updated).await?;
    tracing::info!(namespace = ?k.namespace(), apikey = %k.name_any(), grace_seconds = grace, "key rotated");
    Ok(Rotated { key, previous_valid_until })
}

/// A rotation's outcome.
pub struct Rotated {
    /// The new key, in plaintext: shown once, never logged.
    pub key: String,
    /// Unix seconds the replaced key stops working.
    pub previous_valid_until: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with("lw-") && a.len() == 46);
        assert_ne!(a, b);
    }
}
