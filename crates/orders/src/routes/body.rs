//! JSON request bodies, read within a deadline and answered in the SPEC error shape when they are
//! not acceptable.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, Request};
use common::http::ApiError;

/// How long a request body may take to arrive in full (`HTTP_BODY_TIMEOUT_SECONDS`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Like [`axum::Json`], but the whole body must arrive within [`BodyTimeout`] (408 otherwise: a
/// client trickling its body cannot hold the connection), a body over the size limit is 413,
/// and any other unacceptable body (not JSON, wrong content type, wrong shape) is 400 with a
/// neutral message, all in the SPEC error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    BodyTimeout: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let BodyTimeout(deadline) = BodyTimeout::from_ref(state);
        match tokio::time::timeout(deadline, Json::<T>::from_request(request, state)).await {
            Ok(Ok(Json(value))) => Ok(JsonBody(value)),
            Ok(Err(rejection)) => Err(ApiError::from(rejection)),
            Err(_) => Err(ApiError::RequestTimeout),
        }
    }
}
