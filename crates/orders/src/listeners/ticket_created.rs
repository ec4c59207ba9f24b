//! `ticket:created`: store the ticket replica.

use common::bus::{HandlerError, Listener, MessageInfo};
use common::events::TicketCreated;

use super::{QUEUE_GROUP, parse_id, version};
use crate::models::{Ticket, Tickets};

/// Stores `{_id, title, price, version}`; a redelivery finds it stored and acks.
pub struct TicketCreatedListener {
    pub tickets: Tickets,
}

impl Listener for TicketCreatedListener {
    type Event = TicketCreated;
    const QUEUE_GROUP: &'static str = QUEUE_GROUP;

    async fn on_message(&self, event: TicketCreated, _: MessageInfo) -> Result<(), HandlerError> {
        let ticket = Ticket {
            id: parse_id("id", &event.id)?,
            title: event.title,
            price: event.price,
            version: version(event.version)?,
        };
        let stored = self
            .tickets
            .insert(&ticket)
            .await
            .map_err(HandlerError::unavailable)?;
        if stored {
            tracing::info!(ticket_id = %ticket.id, "ticket replica stored");
        } else {
            tracing::debug!(ticket_id = %ticket.id, "ticket replica already stored");
        }
        Ok(())
    }
}
