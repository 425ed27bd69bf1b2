//! Error answers, in the shape [`ErrorFormat`] asks for, optionally padded to a
//! size.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::behaviour::ErrorFormat;

/// One error the upstream answers with.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamError {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// OpenAI's `type`.
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl UpstreamError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { status, message: message.into(), kind, param: None, code }
    }

    fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// A wrong or missing API key, as OpenAI words it.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        )
    }

    /// [`Behaviour::error_status`](crate::Behaviour::error_status).
    pub fn injected(status: StatusCode) -> Self {
        Self::new(status, "server_error", Some("injected"), "injected failure")
    }

    /// A path this upstream does not serve.
    pub fn unknown_url(method: &http::Method, path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", None, format!("Invalid URL ({method} {path})"))
    }

    pub fn invalid_json() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            "We could not parse the JSON body of your request. The API expects a JSON object.",
        )
    }

    pub fn missing(param: &'static str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("missing_required_parameter"),
            format!("Missing required parameter: '{param}'."),
        )
        .with_param(param)
    }

    pub fn invalid_type(param: &'static str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_type"),
            format!("Invalid type for '{param}': expected {expected}."),
        )
        .with_param(param)
    }

    /// Azure OpenAI (`api-version=2024-02-01`) on a `stream_options` member.
    pub fn unrecognized_argument(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            format!("Unrecognized request argument supplied: {name}"),
        )
    }

    /// OpenAI's quota error ([`JsonForStream::Error`](crate::JsonForStream::Error)
    /// sends it with a 200).
    pub fn insufficient_quota() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota, please check your plan and billing details.",
        )
    }

    /// The body and its content type.
    pub fn body(&self, format: ErrorFormat) -> (&'static str, Vec<u8>) {
        const JSON: &str = "application/json";
        match format {
            ErrorFormat::OpenAi => {
                let body = OpenAiError {
                    error: OpenAiErrorObject {
                        message: &self.message,
                        kind: self.kind,
                        param: self.param,
                        code: self.code,
                    },
                };
                (JSON, serde_json::to_vec(&body).unwrap_or_default())
            }
            ErrorFormat::VllmFlat => {
                let body = VllmError {
                    object: "error",
                    message: &self.message,
                    kind: vllm_type(self.status),
                    param: self.param,
                    code: self.status.as_u16(),
                };
                (JSON, serde_json::to_vec(&body).unwrap_or_default())
            }
            ErrorFormat::PlainText => ("text/plain; charset=utf-8", self.message.as_bytes().to_vec()),
        }
    }

    /// Pads the message so that [`body`](Self::body) is `size` bytes (exactly,
    /// unless it is already larger): the padding is plain ASCII, which no
    /// format escapes.
    pub fn padded_to(mut self, format: ErrorFormat, size: usize) -> Self {
        let unpadded = self.body(format).1.len();
        if let Some(missing) = size.checked_sub(unpadded).filter(|n| *n > 0) {
            let mut message = self.message.into_owned();
            message.reserve(missing);
            message.extend(std::iter::repeat_n('x', missing));
            self.message = Cow::Owned(message);
        }
        self
    }

    /// The whole response, with the status of the error.
    pub fn into_response(self, format: ErrorFormat) -> Response {
        self.response(format, self.status)
    }

    /// This error's body under any status (a 200 carrying an error).
    pub fn response(&self, format: ErrorFormat, status: StatusCode) -> Response {
        let (content_type, body) = self.body(format);
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// vLLM names the error `type` after the status, like the OpenAI SDK's
/// exception classes.
fn vllm_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        429 => "RateLimitError",
        s if s >= 500 => "InternalServerError",
        _ => "BadRequestError",
    }
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorObject<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct VllmError<'a> {
    object: &'static str,
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(format: ErrorFormat, e: &UpstreamError) -> String {
        String::from_utf8(e.body(format).1).unwrap_or_default()
    }

    #[test]
    fn each_format_has_its_exact_shape() {
        let e = UpstreamError::unrecognized_argument("stream_options");
        assert_eq!(
            text(ErrorFormat::OpenAi, &e),
            r#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error","param":null,"code":null}}"#
        );
        assert_eq!(
            text(ErrorFormat::VllmFlat, &e),
            r#"{"object":"error","message":"Unrecognized request argument supplied: stream_options","type":"BadRequestError","param":null,"code":400}"#
        );
        assert_eq!(text(ErrorFormat::PlainText, &e), "Unrecognized request argument supplied: stream_options");
        assert_eq!(e.body(ErrorFormat::PlainText).0, "text/plain; charset=utf-8");
    }

    #[test]
    fn padding_hits_the_size_exactly_in_every_format() {
        for format in [ErrorFormat::OpenAi, ErrorFormat::VllmFlat, ErrorFormat::PlainText] {
            let e = UpstreamError::injected(StatusCode::BAD_REQUEST).padded_to(format, 100 << 10);
            assert_eq!(e.body(format).1.len(), 100 << 10, "{format:?}");
            // Already larger: left alone.
            let e = UpstreamError::injected(StatusCode::BAD_REQUEST).padded_to(format, 3);
            assert_eq!(e.message, "injected failure");
        }
    }
}
