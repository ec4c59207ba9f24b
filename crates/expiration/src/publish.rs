//! What a due job means for the ticketing stack: publish `expiration:complete` for its order.

use std::time::Duration;

use common::bus::{PublishError, Publisher};
use common::events::ExpirationComplete;

use common::telemetry::truncate;

use crate::queue::{ID_BYTES, Job};
use crate::worker::{BoxError, JobHandler, Unavailable};

/// Publishes `expiration:complete {"orderId"}` with the order's message id and waits for the
/// JetStream acknowledgement, at most `timeout`.
pub struct PublishExpiration {
    publisher: Publisher,
    timeout: Duration,
}

/// The publish was not acknowledged in time (NATS unreachable or JetStream unavailable).
#[derive(Debug, thiserror::Error)]
#[error("expiration:complete not acknowledged within {0:?}")]
pub struct PublishTimeout(pub Duration);

impl PublishExpiration {
    /// A handler publishing with `publisher`, giving up on one attempt after `timeout`.
    pub fn new(publisher: Publisher, timeout: Duration) -> Self {
        PublishExpiration { publisher, timeout }
    }
}

impl JobHandler for PublishExpiration {
    fn ready(&self) -> bool {
        self.publisher.connected()
    }

    /// A failure to publish is NATS's, never the job's: [`Unavailable`].
    async fn fire(&self, job: &Job) -> Result<(), BoxError> {
        let event = ExpirationComplete {
            order_id: job.id.clone(),
        };
        // The message id is derived from the order id, so a second fire after a crash or from a
        // stalled replica is dropped by JetStream as a duplicate (NATS Streaming stores it again;
        // orders ignores an expiration for an order no longer `created`).
        match tokio::time::timeout(self.timeout, self.publisher.publish(&event)).await {
            Ok(Ok(published)) => {
                tracing::info!(order = %truncate(&job.id, ID_BYTES), sequence = ?published.sequence, duplicate = published.duplicate, "expiration:complete published");
                Ok(())
            }
            Ok(Err(e @ PublishError::Encode { .. })) => Err(e.into()),
            Ok(Err(e)) => Err(Unavailable(e.into()).into()),
            Err(_) => Err(Unavailable(PublishTimeout(self.timeout).into()).into()),
        }
    }
}
