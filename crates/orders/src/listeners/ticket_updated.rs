//! `ticket:updated`: apply changes to the replica in version order.

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::TicketUpdated;

use super::{QUEUE_GROUP, parse_id, version};
use crate::models::{TicketUpdate, Tickets};

/// Applies an update when the replica is at `version - 1`, acks one already applied, and asks
/// for a later redelivery when an earlier version has not arrived yet.
pub struct TicketUpdatedListener {
    pub tickets: Tickets,
}

impl Listener for TicketUpdatedListener {
    type Event = TicketUpdated;
    const QUEUE_GROUP: &'static str = QUEUE_GROUP;

    async fn on_message(&self, event: TicketUpdated, _: MessageInfo) -> Result<(), HandlerError> {
        let id = parse_id("id", &event.id)?;
        let version = version(event.version)?;
        let outcome = self
            .tickets
            .apply_update(id, version, &event.title, event.price)
            .await
            .map_err(HandlerError::unavailable)?;
        match outcome {
            TicketUpdate::Applied => {
                tracing::info!(ticket_id = %id, version, "ticket replica updated");
                Ok(())
            }
            TicketUpdate::AlreadyApplied => {
                tracing::debug!(ticket_id = %id, version, "ticket update already applied");
                Ok(())
            }
            TicketUpdate::Gap { current } => Err(HandlerError::retry(format!(
                "ticket {id} is at version {current:?}, update {version} needs {}",
                version - 1
            ))),
        }
    }
}
