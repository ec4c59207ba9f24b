//! `expiration:complete`: cancel an order nobody paid in time.

use std::sync::Arc;

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::ExpirationComplete;

use super::{QUEUE_GROUP, parse_id};
use crate::models::{OrderChange, Orders};
use crate::outbox::Outbox;

/// Cancels a `created` or `awaiting:payment` order and publishes `order:cancelled`; a `complete`
/// or already `cancelled` order is left alone and nothing is published.
pub struct ExpirationCompleteListener {
    pub orders: Orders,
    pub outbox: Arc<Outbox>,
}

impl Listener for ExpirationCompleteListener {
    type Event = ExpirationComplete;
    const QUEUE_GROUP: &'static str = QUEUE_GROUP;

    async fn on_message(
        &self,
        event: ExpirationComplete,
        _: MessageInfo,
    ) -> Result<(), HandlerError> {
        let id = parse_id("orderId", &event.order_id)?;
        let Some(order) = self
            .orders
            .get(id)
            .await
            .map_err(HandlerError::unavailable)?
        else {
            // order:created is published only after the order is stored, so no expiry can
            // precede its order: this event is about an order some other deployment owns.
            tracing::warn!(order_id = %id, "expiration for an unknown order; ignoring it");
            return Ok(());
        };
        let order = match self
            .orders
            .cancel(order)
            .await
            .map_err(HandlerError::unavailable)?
        {
            OrderChange::Changed(order) => {
                tracing::info!(order_id = %id, version = order.version, "order expired and cancelled");
                order
            }
            OrderChange::Unchanged(order) => {
                tracing::debug!(order_id = %id, status = order.status.as_str(), "expiry of a closed order; nothing to do");
                order
            }
            OrderChange::Missing => {
                tracing::warn!(order_id = %id, "order vanished during its expiry");
                return Ok(());
            }
        };
        // The event is already in the order's outbox: if this publish fails the relay sends it,
        // so the expiry itself is done. Also when another writer changed the order: that writer
        // may have died before publishing.
        self.outbox.publish_now(&order).await;
        Ok(())
    }
}
