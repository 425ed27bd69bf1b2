//! Namespace-wide settings: each namespace's NamespacePolicy (the one named
//! `default`) becomes the namespace's budget in the snapshot and the logging
//! default its keys compile with.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::keys::budget_snapshot;
use super::{Kind, ProblemReason, Problems, namespace_of, sorted};
use crate::api_key::Logging;
use crate::money::Usd;
use crate::namespace_policy::{self, NamespacePolicy};
use crate::snapshot::{BudgetSnapshot, NamespaceSnapshot};

/// The policy in force per namespace, for the keys' compilation.
#[derive(Default)]
pub(super) struct NamespaceDefaults<'a> {
    by_namespace: BTreeMap<&'a str, &'a NamespacePolicy>,
}

impl<'a> NamespaceDefaults<'a> {
    /// The body logging keys of `namespace` get when they set none.
    pub fn logging(&self, namespace: &str) -> Option<&'a Logging> {
        self.by_namespace.get(namespace)?.spec.logging.as_ref()
    }
}

/// The policy of each namespace, and the snapshot entries of those with a
/// budget. A policy named other than `default` (the CRD refuses those; one
/// may come from a file the schema did not check) is reported and ignored. A
/// budget whose amount does not parse fails closed: the namespace's budget is
/// zero, so its keys are refused rather than spending without a cap.
pub(super) fn compile_namespaces<'a>(
    policies: &'a [NamespacePolicy],
    problems: &mut Problems,
) -> (NamespaceDefaults<'a>, Vec<NamespaceSnapshot>) {
    let mut defaults = NamespaceDefaults::default();
    let mut out = Vec::new();
    for p in sorted(policies) {
        if p.name_any() != namespace_policy::NAME {
            problems.push(
                Kind::NamespacePolicy,
                p,
                ProblemReason::InvalidField,
                format!(
                    "only the NamespacePolicy named `{}` applies to a namespace; this one is ignored",
                    namespace_policy::NAME
                ),
            );
            continue;
        }
        let ns = namespace_of(p);
        defaults.by_namespace.insert(ns, p);
        let Some(budget) = &p.spec.budget else { continue };
        let budget = budget_snapshot(budget).unwrap_or_else(|message| {
            problems.push(
                Kind::NamespacePolicy,
                p,
                ProblemReason::InvalidField,
                format!("{message}; the namespace's keys are refused until it is fixed"),
            );
            BudgetSnapshot {
                amount: Usd(0),
                period: budget.period,
                reserve_output_tokens: budget.reserve_output_tokens,
            }
        });
        out.push(NamespaceSnapshot { namespace: ns.to_owned(), budget: Some(budget) });
    }
    (defaults, out)
}
