use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, OrderStatus, price, timestamp, validate};
use crate::Subject;

/// `order:created`: a buyer reserved a ticket until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub id: String,
    pub version: u64,
    pub status: OrderStatus,
    pub user_id: String,
    #[serde(with = "timestamp")]
    pub expires_at: DateTime<Utc>,
    pub ticket: OrderCreatedTicket,
}

/// The ticket inside `order:created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreatedTicket {
    pub id: String,
    #[serde(serialize_with = "price::serialize")]
    pub price: f64,
}

impl Event for OrderCreated {
    const SUBJECT: Subject = Subject::OrderCreated;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::object_id("id", &self.id)?;
        validate::version(self.version)?;
        validate::text("userId", &self.user_id, validate::MAX_ID_BYTES)?;
        validate::object_id("ticket.id", &self.ticket.id)?;
        validate::price(self.ticket.price)
    }
}
