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
        validate::ticket(
            &self.id,
            self.version,
            &self.title,
            self.price,
            &self.user_id,
        )
    }
}
