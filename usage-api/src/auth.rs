//! Who may read what: the embedding binary decides (a bearer admin token in
//! the standalone gateway; TokenReview + SubjectAccessReview in the operator),
//! the router only applies the answer.

use std::future::Future;

use http::HeaderMap;

use crate::error::ApiError;

/// What a request asks to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// Usage records, summaries and exports.
    Usage,
    /// One ApiKey's budget and period usage.
    Key { name: &'a str },
    /// The OpenAPI document (no namespaced data).
    Document,
}

/// One request to authorize.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub resource: Resource<'a>,
    /// The namespaces the request names; empty when it names none, that is
    /// when it asks for every namespace the caller may see (an implementation
    /// that allows no cluster-wide reads answers 403 asking for `namespace`).
    pub namespaces: &'a [String],
}

/// The namespaces a caller may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// Only these.
    Namespaces(Vec<String>),
}

/// Decides who the caller is and what it may read. Implemented by the binary
/// that serves the router; async so it may ask the Kubernetes API.
///
/// The router refuses with 403 a request naming a namespace outside the
/// returned scope, and narrows a request that names none to the scope; an
/// implementation may also refuse such requests itself with a clearer message.
pub trait Authorize: Send + Sync + 'static {
    /// `Err` with [`ApiError::unauthenticated`] (401) for missing or invalid
    /// credentials, [`ApiError::forbidden`] (403) for a caller that may not
    /// read this at all, [`ApiError::unavailable`] (503) when the answer cannot
    /// be had now. Implementations never log the credentials.
    fn authorize(
        &self,
        headers: &HeaderMap,
        access: Access<'_>,
    ) -> impl Future<Output = Result<Scope, ApiError>> + Send;
}

/// The namespaces a store query may cover, once authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Visible {
    /// No restriction: the store's "any namespace".
    Any,
    /// Exactly these (never empty).
    Only(Vec<String>),
    /// The caller may see no namespace at all: every answer is empty.
    Nothing,
}

impl Visible {
    /// What `requested` (empty: everything) comes to under `scope`.
    pub(crate) fn resolve(scope: Scope, requested: &[String]) -> Result<Visible, ApiError> {
        match scope {
            Scope::All if requested.is_empty() => Ok(Visible::Any),
            Scope::All => Ok(Visible::Only(requested.to_vec())),
            Scope::Namespaces(allowed) if requested.is_empty() => {
                Ok(if allowed.is_empty() { Visible::Nothing } else { Visible::Only(allowed) })
            }
            Scope::Namespaces(allowed) => match requested.iter().find(|ns| !allowed.contains(ns)) {
                Some(ns) => Err(ApiError::forbidden(format!("you may not read usage of namespace {ns:?}"))),
                None => Ok(Visible::Only(requested.to_vec())),
            },
        }
    }

    /// The store filter's namespace list; `None` when nothing is visible.
    pub(crate) fn namespaces(self) -> Option<Vec<String>> {
        match self {
            Visible::Any => Some(Vec::new()),
            Visible::Only(list) => Some(list),
            Visible::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_scope_narrows_or_refuses_what_is_asked() {
        assert_eq!(Visible::resolve(Scope::All, &[]), Ok(Visible::Any));
        assert_eq!(Visible::resolve(Scope::All, &names(&["a"])), Ok(Visible::Only(names(&["a"]))));
        let scoped = || Scope::Namespaces(names(&["a", "b"]));
        assert_eq!(Visible::resolve(scoped(), &[]), Ok(Visible::Only(names(&["a", "b"]))));
        assert_eq!(Visible::resolve(scoped(), &names(&["b"])), Ok(Visible::Only(names(&["b"]))));
        assert!(Visible::resolve(scoped(), &names(&["a", "c"])).is_err_and(|e| e.status == 403));
        assert_eq!(Visible::resolve(Scope::Namespaces(vec![]), &[]), Ok(Visible::Nothing));
    }
}
