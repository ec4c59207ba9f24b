//! The worker's listeners, one per subject, in queue group `expiration-service`.

mod order_cancelled;
pub mod order_created;

pub use order_cancelled::OrderCancelledListener;
pub use order_created::OrderCreatedListener;

/// The queue group shared by every replica of the worker (docs/contract.md §7).
pub const QUEUE_GROUP: &str = "expiration-service";
