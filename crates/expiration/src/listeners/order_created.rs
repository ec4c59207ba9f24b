//! `order:created` → schedule (or move) the order's expiration job at `expiresAt`.

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::OrderCreated;

use crate::metrics::Metrics;
use crate::queue::{Queue, to_ms};

/// Schedules a job keyed by the order id, due at `expiresAt`; acks once Redis has it. An id that
/// is not an ObjectId never gets here: the runner terminates it (`Event::validate`).
pub struct OrderCreatedListener {
    queue: Queue,
    metrics: Metrics,
}

impl OrderCreatedListener {
    /// A listener scheduling on `queue`.
    pub fn new(queue: Queue, metrics: Metrics) -> Self {
        OrderCreatedListener { queue, metrics }
    }
}

impl Listener for OrderCreatedListener {
    type Event = OrderCreated;
    const QUEUE_GROUP: &'static str = super::QUEUE_GROUP;

    async fn on_message(&self, event: OrderCreated, _: MessageInfo) -> Result<(), HandlerError> {
        let due_ms = to_ms(event.expires_at);
        let scheduled = self
            .queue
            .schedule(&event.id, due_ms)
            .await
            .map_err(HandlerError::unavailable)?;
        self.metrics
            .scheduled
            .inc_by(scheduled.added + scheduled.moved);
        tracing::info!(
            order = %event.id,
            expires_at = %common::events::timestamp::format(&event.expires_at),
            added = scheduled.added == 1,
            moved = scheduled.moved == 1,
            cancelled_already = scheduled.skipped == 1,
            "expiration scheduled"
        );
        Ok(())
    }
}
