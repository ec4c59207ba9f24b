use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, validate};
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

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::text("id", &self.id, validate::MAX_ID_BYTES)?;
        validate::object_id("orderId", &self.order_id)?;
        validate::text("stripeId", &self.stripe_id, validate::MAX_ID_BYTES)
    }
}
