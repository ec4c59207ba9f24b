//! `payment:created`: mark an order paid.

use std::sync::Arc;

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::{OrderStatus, PaymentCreated};

use super::{QUEUE_GROUP, parse_id};
use crate::metrics::Metrics;
use crate::models::{OrderChange, Orders};
use crate::outbox::Outbox;

/// Sets `complete` on a `created` or `awaiting:payment` order. A payment for a cancelled order
/// leaves it unchanged and is logged and counted as an anomaly for a human to refund.
pub struct PaymentCreatedListener {
    pub orders: Orders,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
}

impl Listener for PaymentCreatedListener {
    type Event = PaymentCreated;
    const QUEUE_GROUP: &'static str = QUEUE_GROUP;

    async fn on_message(&self, event: PaymentCreated, _: MessageInfo) -> Result<(), HandlerError> {
        let id = parse_id("orderId", &event.order_id)?;
        let Some(order) = self
            .orders
            .get(id)
            .await
            .map_err(HandlerError::unavailable)?
        else {
            return Err(HandlerError::reject(format!(
                "payment {} is for unknown order {id}",
                event.id
            )));
        };
        let order = match self
            .orders
            .complete(order)
            .await
            .map_err(HandlerError::unavailable)?
        {
            OrderChange::Changed(order) => {
                tracing::info!(order_id = %id, payment_id = %event.id, version = order.version, "order paid");
                order
            }
            OrderChange::Unchanged(order) if order.status == OrderStatus::Cancelled => {
                tracing::error!(
                    order_id = %id,
                    payment_id = %event.id,
                    stripe_id = %event.stripe_id,
                    "anomaly: payment received for a cancelled order; order left cancelled"
                );
                self.metrics.payment_for_cancelled.inc();
                order
            }
            OrderChange::Unchanged(order) => {
                tracing::debug!(order_id = %id, "payment already applied");
                order
            }
            OrderChange::Missing => {
                tracing::warn!(order_id = %id, "order vanished while being paid");
                return Ok(());
            }
        };
        // Publishes nothing new, but a final order's outbox is emptied once published; and when
        // another writer changed the order, that writer may have died before publishing.
        self.outbox.publish_now(&order).await;
        Ok(())
    }
}
