//! MongoDB documents, their queries and their indexes.
//!
//! Correctness rests only on what MongoDB and FerretDB 1.24 both guarantee: an insert checked by
//! a unique index is atomic. A conditional update is NOT atomic on FerretDB 1.24 (it reads the
//! document, then writes it back whole), so no exclusivity may rest on one. Hence:
//!
//! - [`order`]: a reservation is an insert into a unique index; every change of an order is
//!   claimed first ([`transition`]), then applied with its version bump and its event appended
//!   to the order's outbox in the same single-document update.
//! - [`transition`]: the claims (`order_transitions`).
//! - [`published`]: the outbox entries JetStream has acknowledged.
//! - [`ticket`]: the replica of the tickets service's tickets.

pub mod order;
pub mod published;
pub mod ticket;
pub mod transition;

pub use order::{Order, OrderChange, Orders, OutboxEntry};
pub use published::PublishedEvents;
pub use ticket::{Ticket, TicketUpdate, Tickets};
pub use transition::{Transition, Transitions};

use mongodb::Database;

/// Reads a whole number stored as Int32, Int64 or Double (as a shell or another tool may write
/// `version`), refusing fractions.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!("{v} is not a whole number")))
            }
        }
    }
    deserializer.deserialize_any(Visitor)
}

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

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc, oid::ObjectId};

    use super::Ticket;

    #[test]
    fn reads_prices_and_versions_stored_as_any_numeric_type() {
        for (price, version) in [
            (bson::Bson::Int32(20), bson::Bson::Int32(3)),
            (bson::Bson::Int64(20), bson::Bson::Int64(3)),
            (bson::Bson::Double(20.0), bson::Bson::Double(3.0)),
        ] {
            let stored =
                doc! { "_id": ObjectId::new(), "title": "t", "price": price, "version": version };
            let ticket: Ticket = bson::from_document(stored).unwrap();
            assert_eq!((ticket.price, ticket.version), (20.0, 3));
        }
        let fractional = doc! { "_id": ObjectId::new(), "title": "t", "price": 1, "version": 1.5 };
        assert!(bson::from_document::<Ticket>(fractional).is_err());
    }
}
