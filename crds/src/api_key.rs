//! `ApiKey`: one client credential with its limits.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// A client key for the gateway.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "llmweaver.io",
    version = "v1alpha1",
    kind = "ApiKey",
    namespaced,
    status = "ApiKeyStatus",
    shortname = "llmkey",
    category = "llmweaver",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".status.keyPrefix"}"#,
    printcolumn = r#"{"name":"Spend","type":"string","jsonPath":".status.usage.cost"}"#,
    printcolumn = r#"{"name":"Budget","type":"string","jsonPath":".spec.budget.amount"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.budget.period","priority":1}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Where the key's plaintext lives. Defaults to the Secret `<name>-apikey`,
    /// key `apiKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Model names (globs such as `gpt-4o*`) the key may use; empty allows every
    /// model its namespace serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub allowed_models: Vec<String>,
    /// Spending cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Request and token rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Client addresses allowed to use the key (IPs or CIDRs); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c) || isIP(c))").message("every entry must be an IP address or a CIDR such as 10.0.0.0/8"))]
    pub ip_allowlist: Vec<String>,
    /// The key stops working at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Revokes the key at once.
    #[serde(default)]
    pub disabled: bool,
    /// A RoutingPolicy of this namespace that decides routing for this key's
    /// models; without it the namespace's policies (or, for models no policy
    /// matches, every channel of the namespace serving the model) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub routing_policy: Option<String>,
    /// Change this value (any string, e.g. a date) to rotate an operator-issued
    /// key: a new key is written to the Secret and the old one keeps working for
    /// `rotationGracePeriod`. The annotation `llmweaver.io/rotate` does the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub rotation_trigger: Option<String>,
    /// How long a rotated-out key keeps working. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("must be a duration such as 500ms, 30s, 5m or 1h30m"))]
    pub rotation_grace_period: Option<String>,
    /// What the gateway records about this key's requests beyond usage. Off
    /// unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// Request and response logging for one key (or, on a NamespacePolicy, for
/// the keys of a namespace that set none).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.maxBodyBytes) || self.bodies").message("maxBodyBytes applies only with bodies: true"))]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// Store each request's body and its answer (a stream's SSE text) with its
    /// usage record, secrets redacted. Default false.
    #[serde(default)]
    pub bodies: bool,
    /// Bytes stored per body; longer ones are cut and marked truncated.
    /// Default 16384, at most 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_body_bytes: Option<u32>,
}

impl Logging {
    /// Bytes stored per body when `maxBodyBytes` is not set.
    pub const DEFAULT_MAX_BODY_BYTES: u32 = 16 * 1024;
}

/// A spending cap per period.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// USD as a decimal string, e.g. `"50.00"`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]{1,6})?$') && double(self) > 0.0").message("must be a positive decimal USD amount such as \"50.00\""))]
    pub amount: String,
    /// When spend resets (calendar periods in UTC).
    pub period: BudgetPeriod,
    /// Percentages of `amount` whose crossing is announced (an Event on the
    /// ApiKey or NamespacePolicy, a metric, a log line), each once per period.
    /// Empty means 50, 80 and 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)))]
    #[x_kube(validation = Rule::new("self.all(t, t >= 1 && t <= 100)").message("every threshold must be a percentage from 1 to 100"))]
    pub alert_thresholds: Vec<u32>,
    /// Output tokens a request reserves from the budget when it sets neither
    /// `max_tokens` nor `max_completion_tokens`. Default 1024. A request that
    /// produces more is still charged what it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub reserve_output_tokens: Option<u32>,
}

/// Budget alert thresholds (percent of the budget) when a budget names none.
pub const DEFAULT_ALERT_THRESHOLDS: [u32; 3] = [50, 80, 100];

impl Budget {
    /// The thresholds to announce, in percent, ascending, each once.
    pub fn thresholds(&self) -> Vec<u32> {
        let mut t = if self.alert_thresholds.is_empty() {
            DEFAULT_ALERT_THRESHOLDS.to_vec()
        } else {
            self.alert_thresholds.clone()
        };
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// Budget periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    Monthly,
    /// Never resets.
    Total,
}

/// Rate limits for one key, across all gateway replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
}

/// What the operator observes about a key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// `Ready`, `BudgetExceeded`, `Expired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The first characters of the key, to tell keys apart (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Usage in the current budget period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    /// The highest budget threshold announced in the current period, so a
    /// restarted or new leader does not announce it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_alert: Option<BudgetAlertStatus>,
}

/// The last budget threshold announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetAlertStatus {
    /// Percent of the budget.
    pub threshold: u32,
    /// Start of the budget period it was announced in; a later period starts over.
    pub period_start: Time,
}

/// Usage totals since `since` (for a key with a budget: the current budget
/// period). Read from the usage store when the operator has one (`--store`),
/// else summed from the gateways' reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// Requests that failed or were refused (outcome `upstream_error` or
    /// `rejected`); only known with a usage store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// USD as a decimal string.
    #[serde(default)]
    pub cost: String,
    /// Start of the period these totals cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Time>,
}
