use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, price, validate};
use crate::Subject;

/// `ticket:updated`: a ticket changed (title, price, or its reserving order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketUpdated {
    pub id: String,
    pub version: u64,
    pub title: String,
    #[serde(serialize_with = "price::serialize")]
    pub price: f64,
    pub user_id: String,
    /// Absent when the ticket is not reserved; `null` is accepted on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

impl Event for TicketUpdated {
    const SUBJECT: Subject = Subject::TicketUpdated;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::ticket(
            &self.id,
            self.version,
            &self.title,
            self.price,
            &self.user_id,
        )?;
        match &self.order_id {
            Some(order_id) => validate::object_id("orderId", order_id),
            None => Ok(()),
        }
    }
}
