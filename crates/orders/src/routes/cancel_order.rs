//! `DELETE /api/orders/{order_id}`: cancel an order and release its ticket.

use axum::extract::State;
use common::events::OrderStatus;
use common::http::ApiError;
use http::StatusCode;

use super::{AppState, OwnedOrder};
use crate::models::OrderChange;

/// 204 once cancelled (also when it already was, without a new version or event); 400 for a
/// paid order; otherwise as `GET /api/orders/{order_id}`.
pub async fn cancel_order(
    State(state): State<AppState>,
    OwnedOrder(order): OwnedOrder,
) -> Result<StatusCode, ApiError> {
    let order = match state.orders.cancel(order).await? {
        OrderChange::Changed(order) => {
            tracing::info!(order_id = %order.id, version = order.version, "order cancelled");
            order
        }
        OrderChange::Unchanged(order) => order,
        OrderChange::Missing => return Err(ApiError::NotFound),
    };
    // Also when another writer changed it: that writer may have died before publishing.
    state.outbox.publish_now(&order).await;
    if order.status == OrderStatus::Complete {
        return Err(ApiError::BadRequest(
            "A paid (complete) order cannot be cancelled".into(),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
