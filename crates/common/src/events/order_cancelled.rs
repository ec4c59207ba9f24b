use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, validate};
use crate::Subject;

/// `order:cancelled`: an order was cancelled and its ticket released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub id: String,
    pub version: u64,
    pub ticket: OrderCancelledTicket,
}

/// The ticket inside `order:cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelledTicket {
    pub id: String,
}

impl Event for OrderCancelled {
    const SUBJECT: Subject = Subject::OrderCancelled;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::object_id("id", &self.id)?;
        validate::version(self.version)?;
        validate::object_id("ticket.id", &self.ticket.id)
    }
}
