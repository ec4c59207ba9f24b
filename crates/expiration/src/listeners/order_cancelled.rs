//! `order:cancelled` → drop the order's pending expiration job, if any.

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::OrderCancelled;

use crate::metrics::Metrics;
use crate::queue::Queue;

/// Removes the pending job of a cancelled order; a job already fired or never scheduled is fine.
pub struct OrderCancelledListener {
    queue: Queue,
    metrics: Metrics,
}

impl OrderCancelledListener {
    /// A listener cancelling on `queue`.
    pub fn new(queue: Queue, metrics: Metrics) -> Self {
        OrderCancelledListener { queue, metrics }
    }
}

impl Listener for OrderCancelledListener {
    type Event = OrderCancelled;
    const QUEUE_GROUP: &'static str = super::QUEUE_GROUP;

    async fn on_message(&self, event: OrderCancelled, _: MessageInfo) -> Result<(), HandlerError> {
        let removed = self
            .queue
            .cancel(&[event.id.as_str()])
            .await
            .map_err(HandlerError::unavailable)?;
        self.metrics.cancelled.inc_by(removed);
        tracing::info!(order = %event.id, removed = removed == 1, "expiration cancelled");
        Ok(())
    }
}
