//! The listeners of docs/contract.md §6, queue group `orders-service`, one file per subject.
//! Each is idempotent: JetStream delivers at least once.

mod expiration_complete;
mod payment_created;
mod ticket_created;
mod ticket_updated;

pub use expiration_complete::ExpirationCompleteListener;
pub use payment_created::PaymentCreatedListener;
pub use ticket_created::TicketCreatedListener;
pub use ticket_updated::TicketUpdatedListener;

use common::bus::HandlerError;
use mongodb::bson::oid::ObjectId;

/// The queue group every replica of the service shares.
pub const QUEUE_GROUP: &str = "orders-service";

/// An id in an event; a malformed one can never be handled, so the event is rejected.
fn parse_id(field: &str, id: &str) -> Result<ObjectId, HandlerError> {
    ObjectId::parse_str(id)
        .map_err(|e| HandlerError::reject(format!("`{field}` is not an ObjectId ({id:?}): {e}")))
}

/// A version that MongoDB's signed integers hold.
fn version(version: u64) -> Result<i64, HandlerError> {
    i64::try_from(version)
        .map_err(|_| HandlerError::reject(format!("version {version} is out of range")))
}
