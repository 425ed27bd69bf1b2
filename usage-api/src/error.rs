//! OpenAI-shaped errors, `{"error":{"message","type","param","code"}}`, the
//! same shape the gateway's client API answers with.

use std::borrow::Cow;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// An error answered to the caller of the usage API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// A stable, low-cardinality reason (OpenAI's `code`).
    pub code: &'static str,
    /// The query parameter at fault, when one is.
    pub param: Option<&'static str>,
    pub message: Cow<'static, str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, kind, code, param: None, message: message.into() }
    }

    /// 400 for a query parameter that cannot be used.
    pub fn bad_parameter(param: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_parameter", message)
        }
    }

    /// 400 for a request body that cannot be used.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// 400 for a query parameter this route does not know.
    pub fn unknown_parameter(name: &str, known: &[&str]) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unknown_parameter",
            if known.is_empty() {
                format!("unknown query parameter {name:?}; this route takes none")
            } else {
                format!("unknown query parameter {name:?}; this route takes {}", known.join(", "))
            },
        )
    }

    /// 401: no credentials, or ones that do not authenticate.
    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_admin_token", message)
    }

    /// 403: authenticated, but not allowed to see what was asked for.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", message)
    }

    /// 404 for a resource that does not exist (or a URL that is not routed).
    pub fn not_found(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", code, message)
    }

    /// 405: a routed path asked with a method other than GET.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "the usage API is read-only: use GET",
        )
    }

    /// 503: the store (or whatever authorizes) did not answer.
    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", code, message)
    }

    /// A store failure: a bad cursor is the caller's (400); anything else means
    /// the store did not answer properly (503), logged here with its cause and
    /// answered without it (connection strings and SQL stay out of responses).
    pub fn from_store(error: weaver_store::StoreError) -> Self {
        match error {
            weaver_store::StoreError::BadCursor => {
                Self::bad_parameter("cursor", "invalid cursor: pass back the next_cursor of a previous page unchanged")
            }
            other => {
                tracing::warn!(error = %other, category = other.category(), "usage store query failed");
                Self::unavailable("store_unavailable", "the usage store did not answer; try again later")
            }
        }
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    error: Fields<'a>,
}

#[derive(Serialize)]
struct Fields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let wire =
            Wire { error: Fields { message: &self.message, kind: self.kind, param: self.param, code: self.code } };
        (self.status, Json(wire)).into_response()
    }
}
