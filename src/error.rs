//! One error type with two faces: details go to the log with the correlation id; the client
//! gets a short, stable code.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    /// The store cannot take the event now; the sender retries (Meta for days), so nothing is
    /// lost. 503, never 500: the fault is transient and ours, not the request's.
    #[error("{reason}")]
    Unavailable {
        reason: &'static str,
        retry_after_seconds: u32,
    },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable reason, also used as the metric outcome.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(c) | ApiError::Forbidden(c) | ApiError::BadRequest(c) => c,
            ApiError::Unavailable { reason, .. } => reason,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(json!({ "error": self.code() }))).into_response();
        if let ApiError::Unavailable {
            retry_after_seconds,
            ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        response
    }
}
