use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::telemetry::ErrorChain;

/// One entry of the error body (docs/contract.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl FieldError {
    /// A validation error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// Every failure a route answers with. Client errors carry the message the web client shows;
/// internal ones are logged with their cause chain and answered with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with one entry per invalid field.
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// 400 with a message for the user (`Ticket is already reserved`).
    #[error("{0}")]
    BadRequest(String),
    /// 401 `Not authorized`.
    #[error("Not authorized")]
    NotAuthorized,
    /// 404 `Not Found`.
    #[error("Not Found")]
    NotFound,
    /// 408: the request body did not arrive in time.
    #[error("request body timed out")]
    RequestTimeout,
    /// 413: the request body is over the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 503: a dependency (database, NATS) did not answer; the client may retry.
    #[error("service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// 500: anything else; details stay in the log.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 500 caused by `error`.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(error.into())
    }

    /// A 503 caused by `error`.
    pub fn unavailable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Unavailable(error.into())
    }

    /// The status code of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAuthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The entries of the error body.
    pub fn errors(&self) -> Vec<FieldError> {
        let message = |text: &str| {
            vec![FieldError {
                message: text.to_owned(),
                field: None,
            }]
        };
        match self {
            ApiError::Validation(errors) => errors.clone(),
            ApiError::BadRequest(text) => message(text),
            ApiError::NotAuthorized => message("Not authorized"),
            ApiError::NotFound => message("Not Found"),
            ApiError::RequestTimeout => message("Request body timed out"),
            ApiError::PayloadTooLarge => message("Request body too large"),
            ApiError::Unavailable(_) => message("Service temporarily unavailable, please retry"),
            ApiError::Internal(_) => message("Something went wrong"),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %ErrorChain(&**cause), "request failed")
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %ErrorChain(&**cause), "dependency unavailable")
            }
            _ => {}
        }
        let mut response = (
            self.status(),
            Json(ErrorBody {
                errors: self.errors(),
            }),
        )
            .into_response();
        if matches!(self, ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The `Retry-After` of every 503: dependencies usually come back within seconds, and a client
/// retrying sooner would only add load while they recover.
pub const RETRY_AFTER_SECONDS: &str = "2";

/// A body that is not JSON, or not of the expected shape, is the client's fault: 400 with a
/// short neutral message (the parser's own words name our types and fields). A body over the
/// size limit is 413.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        let message = match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "Expected a JSON body (Content-Type: application/json)"
            }
            JsonRejection::JsonSyntaxError(_) => "Malformed JSON body",
            JsonRejection::JsonDataError(_) => "Invalid JSON body",
            _ => "Unreadable request body",
        };
        ApiError::BadRequest(message.to_owned())
    }
}

/// A path segment that does not parse is a malformed request: 400.
impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::BadRequest("Invalid path".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn render(error: ApiError) -> (StatusCode, String) {
        let response = error.into_response();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn renders_the_spec_error_body_with_its_status() {
        assert_eq!(
            render(ApiError::Validation(vec![FieldError::new(
                "ticketId",
                "TicketId must be provided"
            )]))
            .await,
            (
                StatusCode::BAD_REQUEST,
                r#"{"errors":[{"message":"TicketId must be provided","field":"ticketId"}]}"#.into()
            )
        );
        assert_eq!(
            render(ApiError::BadRequest("Ticket is already reserved".into())).await,
            (
                StatusCode::BAD_REQUEST,
                r#"{"errors":[{"message":"Ticket is already reserved"}]}"#.into()
            )
        );
        assert_eq!(
            render(ApiError::NotAuthorized).await,
            (
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"message":"Not authorized"}]}"#.into()
            )
        );
        assert_eq!(
            render(ApiError::NotFound).await,
            (
                StatusCode::NOT_FOUND,
                r#"{"errors":[{"message":"Not Found"}]}"#.into()
            )
        );
    }

    #[tokio::test]
    async fn internal_failures_do_not_leak_their_cause() {
        let (status, body) =
            render(ApiError::internal("connection to 10.0.0.7:27017 refused")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, r#"{"errors":[{"message":"Something went wrong"}]}"#);
        let (status, body) = render(ApiError::unavailable("nats down")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.contains("nats"), "{body}");
    }

    #[test]
    fn only_a_503_tells_the_client_when_to_retry() {
        let retry_after = |error: ApiError| {
            error
                .into_response()
                .headers()
                .get(http::header::RETRY_AFTER)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        assert_eq!(
            retry_after(ApiError::unavailable("db frozen")).as_deref(),
            Some(RETRY_AFTER_SECONDS)
        );
        assert_eq!(retry_after(ApiError::internal("bug")), None);
        assert_eq!(retry_after(ApiError::NotFound), None);
    }
}
