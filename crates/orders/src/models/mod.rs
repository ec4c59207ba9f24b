//! MongoDB documents, their queries and their indexes.
//!
//! Only what MongoDB and FerretDB 1.24 both support is used: single-document atomic updates with
//! conditions, unique indexes and `$in`. Every change to an order is one conditional update that
//! also bumps its version and appends its events to the order's outbox.

pub mod order;
pub mod ticket;

pub use order::{Order, OrderChange, Orders, OutboxEntry};
pub use ticket::{Ticket, TicketUpdate, Tickets};

use mongodb::Database;

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
#[error("database operation failed")]
pub struct StoreError(#[from] pub mongodb::error::Error);

/// Whether `error` is a unique index violation (code 11000).
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

/// Creates the indexes the service's queries need; creating an existing index is a no-op.
pub async fn ensure_indexes(db: &Database) -> Result<(), StoreError> {
    Orders::new(db).ensure_indexes().await?;
    Ok(())
}
