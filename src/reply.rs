//! The one place where an outcome becomes an HTTP status and body.
//!
//! Bodies are `{"status":"ok"}` or `{"error":"<reason>"}` with a short fixed reason label;
//! internal error text is logged, never sent.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::verify::VerifyError;

/// Why a delivery was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The token failed verification (or no key could be had).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The body is over the configured limit.
    #[error("request body is over the limit")]
    PayloadTooLarge,
    /// The body could not be read, or is not UTF-8 text.
    #[error("request body could not be read as text")]
    UnreadableBody,
    /// At least one handler failed; Kinde will retry.
    #[error("a handler failed")]
    HandlerFailed,
    /// The client did not send the whole body within `[limits] body_read_timeout`.
    #[error("the body was not received in time")]
    BodyTimeout,
    /// The request took longer than `[limits] request_timeout`.
    #[error("the request took longer than the request timeout")]
    RequestTimeout,
    /// `[limits] max_concurrent_requests` are in progress already.
    #[error("too many requests in progress")]
    Overloaded,
    /// The inbox could not store the event durably; Kinde will retry.
    #[error("the event could not be stored: {0}")]
    StoreUnavailable(String),
}

impl Rejection {
    /// The status Kinde sees. 4xx: do not bother fixing by retrying; 5xx: a retry may work.
    pub fn status(&self) -> StatusCode {
        use VerifyError as V;
        match self {
            Rejection::Verify(
                V::Malformed | V::MalformedHeader | V::InvalidPayload(_) | V::TooDeep,
            )
            | Rejection::Verify(V::EventTooOld | V::EventInFuture)
            | Rejection::UnreadableBody => StatusCode::BAD_REQUEST,
            Rejection::Verify(V::KeysUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Verify(V::TokenTooLarge | V::PayloadTooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Rejection::Verify(_) => StatusCode::UNAUTHORIZED,
            Rejection::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::HandlerFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::StoreUnavailable(_) | Rejection::RequestTimeout | Rejection::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The fixed reason label sent in the body and used in logs and metrics.
    pub fn reason(&self) -> &'static str {
        use VerifyError as V;
        match self {
            Rejection::Verify(e) => match e {
                V::Malformed => "malformed_token",
                V::MalformedHeader => "malformed_header",
                V::UnsupportedAlgorithm(_) => "unsupported_algorithm",
                V::CriticalHeader => "unsupported_critical_header",
                V::MissingKid => "missing_kid",
                V::UnknownKey(_) => "unknown_key",
                V::KeysUnavailable(_) => "keys_unavailable",
                V::BadSignature => "invalid_signature",
                V::Expired => "token_expired",
                V::NotYetValid => "token_not_yet_valid",
                V::BadClaim(_) => "invalid_claims",
                V::InvalidPayload(_) => "invalid_payload",
                V::EventTooOld => "event_too_old",
                V::EventInFuture => "event_in_future",
                V::TokenTooLarge => "token_too_large",
                V::PayloadTooLarge => "payload_too_large",
                V::TooDeep => "json_too_deep",
                V::KidTooLong => "invalid_kid",
            },
            Rejection::PayloadTooLarge => "payload_too_large",
            Rejection::UnreadableBody => "unreadable_body",
            Rejection::HandlerFailed => "handler_failed",
            Rejection::StoreUnavailable(_) => "store_unavailable",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::Overloaded => "overloaded",
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(json!({ "error": self.reason() }))).into_response();
        if matches!(self, Rejection::Overloaded) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The acknowledgement: 200 `{"status":"ok"}`.
pub fn ok() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (Rejection::Verify(VerifyError::Malformed), 400),
            (
                Rejection::Verify(VerifyError::InvalidPayload("x".into())),
                400,
            ),
            (Rejection::Verify(VerifyError::BadSignature), 401),
            (
                Rejection::Verify(VerifyError::UnsupportedAlgorithm("none".into())),
                401,
            ),
            (Rejection::Verify(VerifyError::UnknownKey("k".into())), 401),
            (
                Rejection::Verify(VerifyError::KeysUnavailable("down".into())),
                503,
            ),
            (Rejection::PayloadTooLarge, 413),
            (Rejection::HandlerFailed, 500),
            (Rejection::StoreUnavailable("locked".into()), 503),
        ];
        for (r, status) in cases {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
        }
    }
}
