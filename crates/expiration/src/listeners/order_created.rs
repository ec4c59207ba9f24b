//! `order:created` → schedule (or move) the order's expiration job at `expiresAt`.

use std::time::Duration;

use chrono::Utc;
use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::OrderCreated;

use crate::metrics::Metrics;
use crate::queue::{Queue, to_ms};

/// `order:created` messages handled at once. Their schedules share script calls (see
/// [`Queue::schedule_versioned`]), so a burst is taken in by the batch rather than waiting for
/// one Redis round trip and one confirmed ack at a time per slot of the default 32. On NATS
/// Streaming the subscription asks for this plus `ListenerOptions::max_waiting` (256) unacked,
/// 512: room for events waiting for a redelivery beside those handled. Its handler answers
/// "cannot apply yet" only for a panic, so in practice that room only lets the server send ahead.
pub const IN_FLIGHT: usize = 256;

/// Schedules a job keyed by the order id, due at `expiresAt`, unless a newer version of the order
/// scheduled it already; acks once Redis has it. An id that is not an ObjectId never gets here:
/// the runner terminates it (`Event::validate`). An `expiresAt` more than `max_ahead` from now
/// (`EXPIRATION_MAX_AHEAD_SECONDS`) is rejected: such a job would sit in Redis for its whole
/// wait, and a peer publishing them could fill it.
pub struct OrderCreatedListener {
    queue: Queue,
    metrics: Metrics,
    max_ahead: Duration,
}

impl OrderCreatedListener {
    /// A listener scheduling on `queue` jobs due at most `max_ahead` from now.
    pub fn new(queue: Queue, metrics: Metrics, max_ahead: Duration) -> Self {
        OrderCreatedListener {
            queue,
            metrics,
            max_ahead,
        }
    }
}

/// An `expiresAt` farther ahead than the worker accepts.
#[derive(Debug, thiserror::Error)]
#[error(
    "expiresAt {expires_at} is {ahead_s} s ahead, more than EXPIRATION_MAX_AHEAD_SECONDS ({max_s} s)"
)]
pub struct TooFarAhead {
    expires_at: String,
    ahead_s: i64,
    max_s: u64,
}

impl Listener for OrderCreatedListener {
    type Event = OrderCreated;
    const QUEUE_GROUP: &'static str = super::QUEUE_GROUP;

    async fn on_message(&self, event: OrderCreated, _: MessageInfo) -> Result<(), HandlerError> {
        let due_ms = to_ms(event.expires_at);
        let ahead_ms = due_ms.saturating_sub(Utc::now().timestamp_millis());
        if ahead_ms > i64::try_from(self.max_ahead.as_millis()).unwrap_or(i64::MAX) {
            return Err(HandlerError::reject(TooFarAhead {
                expires_at: common::events::timestamp::format(&event.expires_at),
                ahead_s: ahead_ms / 1000,
                max_s: self.max_ahead.as_secs(),
            }));
        }
        let scheduled = self
            .queue
            .schedule_versioned(&event.id, due_ms, event.version)
            .await
            .map_err(HandlerError::unavailable)?;
        self.metrics
            .scheduled
            .inc_by(scheduled.added + scheduled.moved);
        tracing::info!(
            order = %event.id,
            version = event.version,
            expires_at = %common::events::timestamp::format(&event.expires_at),
            added = scheduled.added == 1,
            moved = scheduled.moved == 1,
            cancelled_already = scheduled.skipped == 1,
            newer_version_scheduled = scheduled.stale == 1,
            "expiration scheduled"
        );
        Ok(())
    }
}
