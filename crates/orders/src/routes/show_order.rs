//! `GET /api/orders/{order_id}`: one of the user's orders.

use axum::Json;
use axum::extract::State;
use common::http::ApiError;

use super::{AppState, OrderResponse, OwnedOrder};

/// 200 with the order; 400 malformed id; 404 unknown; 401 another user's order.
pub async fn show_order(
    State(state): State<AppState>,
    OwnedOrder(order): OwnedOrder,
) -> Result<Json<OrderResponse>, ApiError> {
    let ticket = state.tickets.get(order.ticket).await?;
    Ok(Json(OrderResponse::new(&order, ticket.as_ref())))
}
