use serde::{Deserialize, Serialize};

use super::Event;
use crate::Subject;

/// `payment:created`: an order was paid (published by the payments service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCreated {
    pub id: String,
    pub order_id: String,
    pub stripe_id: String,
}

impl Event for PaymentCreated {
    const SUBJECT: Subject = Subject::PaymentCreated;

    fn message_id(&self) -> String {
        format!("{}:{}", Self::SUBJECT, self.id)
    }
}
