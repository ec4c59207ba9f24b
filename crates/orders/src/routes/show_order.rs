//! `GET /api/orders/{order_id}`: one of the user's orders.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use common::http::{ApiError, RequireAuth};

use super::{AppState, OrderResponse, parse_order_id};
use crate::models::Order;

/// 200 with the order; 400 malformed id; 404 unknown; 401 another user's order.
pub async fn show_order(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderResponse>, ApiError> {
    let Path(order_id) = path?;
    let order = owned_order(&state, &user.id, &order_id).await?;
    let ticket = state.tickets.get(order.ticket).await?;
    Ok(Json(OrderResponse::new(&order, ticket.as_ref())))
}

/// The order `order_id` if it exists and belongs to `user_id`.
pub(super) async fn owned_order(
    state: &AppState,
    user_id: &str,
    order_id: &str,
) -> Result<Order, ApiError> {
    let id = parse_order_id(order_id)?;
    tracing::Span::current().record("order_id", order_id);
    let order = state.orders.get(id).await?.ok_or(ApiError::NotFound)?;
    if order.user_id != user_id {
        return Err(ApiError::NotAuthorized);
    }
    Ok(order)
}
