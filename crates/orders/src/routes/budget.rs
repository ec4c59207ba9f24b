//! The request budget: a body must arrive within its timeout and size limit, and the service
//! then answers within `REQUEST_TIMEOUT_SECONDS`, whatever its dependencies do. A stalled
//! database or NATS server costs a caller at most that long: 503 with `Retry-After`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::http::ApiError;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;

/// How long and how large a request may be.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// How long a request body may take to arrive in full (`HTTP_BODY_TIMEOUT_SECONDS`).
    pub body_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Longest the service works on a request once its body has arrived.
    pub request_timeout: Duration,
}

/// The request took longer than its budget.
#[derive(Debug, thiserror::Error)]
#[error("no answer within the request budget of {0:?}")]
pub struct OverBudget(pub Duration);

/// Reads the whole body first (408 if it does not arrive within the body timeout, so that a
/// client trickling its body cannot hold the connection; 413 over the limit), then runs the
/// route within the request timeout (503 past it).
///
/// A route abandoned at its deadline may have written half of what it meant to: an order
/// inserted with its event in its outbox, or a change claimed but not applied. Both are whole
/// in the database, and the outbox relay, woken here, publishes and finishes them.
pub async fn within_budget(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let budget = state.budget;
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, budget.body_limit).collect();
    let bytes = match tokio::time::timeout(budget.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return ApiError::PayloadTooLarge.into_response();
        }
        Ok(Err(_)) => {
            return ApiError::BadRequest("Unreadable request body".into()).into_response();
        }
        Err(_) => return ApiError::RequestTimeout.into_response(),
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    match tokio::time::timeout(budget.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state.outbox.wake();
            ApiError::unavailable(OverBudget(budget.request_timeout)).into_response()
        }
    }
}
