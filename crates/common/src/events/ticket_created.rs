use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, price, validate};
use crate::Subject;

/// `ticket:created`: a ticket was put on sale (published by the tickets service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketCreated {
    pub id: String,
    pub version: u64,
    pub title: String,
    #[serde(serialize_with = "price::serialize")]
    pub price: f64,
    pub user_id: String,
}

impl Event for TicketCreated {
    const SUBJECT: Subject = Subject::TicketCreated;

    fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SUBJECT, self.id, self.version)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::object_id("id", &self.id)?;
        validate::version(self.version)?;
        validate::text("title", &self.title, validate::MAX_TITLE_BYTES)?;
        validate::price(self.price)?;
        validate::text("userId", &self.user_id, validate::MAX_ID_BYTES)
    }
}
