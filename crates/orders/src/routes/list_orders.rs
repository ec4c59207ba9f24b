//! `GET /api/orders`: the signed-in user's orders.

use axum::Json;
use axum::extract::State;
use common::http::{ApiError, RequireAuth};

use super::{AppState, OrderResponse};

/// 200 with the user's orders, oldest first, each with its ticket.
pub async fn list_orders(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
) -> Result<Json<Vec<OrderResponse>>, ApiError> {
    let orders = state.orders.for_user(&user.id).await?;
    let ticket_ids: Vec<_> = orders.iter().map(|order| order.ticket).collect();
    let tickets = state.tickets.get_many(&ticket_ids).await?;
    Ok(Json(
        orders
            .iter()
            .map(|order| OrderResponse::new(order, tickets.get(&order.ticket)))
            .collect(),
    ))
}
