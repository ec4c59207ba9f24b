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
        validate::object_id("id", &self.id)?;
        validate::version(self.version)?;
        validate::text("title", &self.title, validate::MAX_TITLE_BYTES)?;
        validate::price(self.price)?;
        validate::text("userId", &self.user_id, validate::MAX_ID_BYTES)?;
        match &self.order_id {
            Some(order_id) => validate::object_id("orderId", order_id),
            None => Ok(()),
        }
    }
}
