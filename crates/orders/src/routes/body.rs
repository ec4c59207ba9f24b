//! JSON request bodies, answered in the contract's error shape (docs/contract.md §4.3) when they are not acceptable. The body
//! has already arrived in full, within its time and size limits ([`super::budget`]).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use common::http::ApiError;

/// Like [`axum::Json`], but any unacceptable body (not JSON, wrong content type, wrong shape) is
/// 400 with a neutral message in the contract's error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}
