use serde::{Deserialize, Serialize};

use super::{Event, InvalidEvent, validate};
use crate::Subject;

/// `expiration:complete`: the reservation window of an order has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationComplete {
    pub order_id: String,
}

impl Event for ExpirationComplete {
    const SUBJECT: Subject = Subject::ExpirationComplete;

    /// One expiry per order: a re-publish (after a crash, or from another replica) is a duplicate.
    fn message_id(&self) -> String {
        format!("{}:{}", Self::SUBJECT, self.order_id)
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        validate::object_id("orderId", &self.order_id)
    }
}
