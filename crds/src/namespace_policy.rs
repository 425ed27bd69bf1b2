//! `NamespacePolicy`: settings for a whole namespace — a budget every key in
//! it shares, and the body logging its keys get unless they set their own.
//! Like a ResourceQuota it is a per-namespace object; unlike one there is at
//! most one, named `default` (a CEL rule on the whole object), so there is
//! never a question of which of two applies.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api_key::{Budget, BudgetAlertStatus, Logging, UsageStatus};

/// The one name a NamespacePolicy may have.
pub const NAME: &str = "default";

/// Settings for every ApiKey of one namespace.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "llmweaver.io",
    version = "v1alpha1",
    kind = "NamespacePolicy",
    namespaced,
    status = "NamespacePolicyStatus",
    shortname = "nspolicy",
    category = "llmweaver",
    validation = Rule::new("self.metadata.name == 'default'").message("a namespace has at most one NamespacePolicy, and it must be named default"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Spend","type":"string","jsonPath":".status.usage.cost"}"#,
    printcolumn = r#"{"name":"Budget","type":"string","jsonPath":".spec.budget.amount"}"#,
    printcolumn = r#"{"name":"Remaining","type":"string","jsonPath":".status.remaining"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.budget.period","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePolicySpec {
    /// A spending cap for the whole namespace: the spend of all its ApiKeys
    /// together. A request must fit both this and its key's own budget.
    /// `reserveOutputTokens` here is the default for keys whose budget names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Body logging for the namespace's keys that set no `logging` of their
    /// own (a key's `logging`, even `bodies: false`, overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// What the operator observes about a namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePolicyStatus {
    /// `Ready`, `BudgetExceeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Usage of every key of the namespace in the current budget period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    /// USD left of the budget this period (the budget less `usage.cost`,
    /// never below zero), as a decimal string; absent without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    /// The highest budget threshold announced in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_alert: Option<BudgetAlertStatus>,
}
