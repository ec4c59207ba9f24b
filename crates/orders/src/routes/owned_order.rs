//! The order a path names, if the signed-in user owns it: the shared first step of showing and
//! cancelling an order.

use axum::extract::{FromRequestParts, Path};
use common::http::{ApiError, RequireAuth};
use http::request::Parts;

use super::{AppState, parse_order_id};
use crate::models::Order;

/// The order `{order_id}` of the path, loaded: 401 without a signed-in user, 400 for a malformed
/// id, 404 for an unknown order, 401 for another user's order.
pub struct OwnedOrder(pub Order);

impl FromRequestParts<AppState> for OwnedOrder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let RequireAuth(user) = RequireAuth::from_request_parts(parts, state).await?;
        let Path(order_id) = Path::<String>::from_request_parts(parts, state).await?;
        let id = parse_order_id(&order_id)?;
        tracing::Span::current().record("order_id", order_id.as_str());
        let order = state.orders.get(id).await?.ok_or(ApiError::NotFound)?;
        if order.user_id != user.id {
            return Err(ApiError::NotAuthorized);
        }
        Ok(OwnedOrder(order))
    }
}
