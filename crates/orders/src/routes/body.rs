//! JSON request bodies answered in the SPEC error shape when they are not acceptable.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use common::http::{ApiError, FieldError};
use http::StatusCode;

/// Like [`axum::Json`], but a body over the size limit is 413 and any other unacceptable body
/// (not JSON, wrong content type, wrong shape) is 400, both with the SPEC error body.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                let errors = vec![FieldError {
                    message: "Request body too large".into(),
                    field: None,
                }];
                Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Json(serde_json::json!({ "errors": errors })),
                )
                    .into_response())
            }
            Err(rejection) => Err(ApiError::from(rejection).into_response()),
        }
    }
}
