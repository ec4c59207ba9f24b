//! The events of the ticketing stack, one file per subject.
//!
//! Bodies are the event's data object as JSON, with the Node stack's camelCase field names.
//! Unknown fields are ignored on input. Each type implements [`Event`], which names its subject,
//! the `Nats-Msg-Id` that makes a re-publish of the same event a duplicate, and what a valid
//! event looks like ([`validate`]).

mod expiration_complete;
mod order_cancelled;
mod order_created;
mod order_status;
mod payment_created;
mod ticket_created;
mod ticket_updated;
pub mod validate;

pub use expiration_complete::ExpirationComplete;
pub use order_cancelled::{OrderCancelled, OrderCancelledTicket};
pub use order_created::{OrderCreated, OrderCreatedTicket};
pub use order_status::OrderStatus;
pub use payment_created::PaymentCreated;
pub use ticket_created::TicketCreated;
pub use ticket_updated::TicketUpdated;
pub use validate::InvalidEvent;

use serde::{Serialize, de::DeserializeOwned};

use crate::Subject;

/// An event: a JSON body on one subject, with an id for deduplication.
pub trait Event:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The subject this event travels on.
    const SUBJECT: Subject;

    /// The `Nats-Msg-Id` of this event: equal for two publishes of the same change, so that
    /// JetStream keeps only one of them inside its duplicate window.
    fn message_id(&self) -> String;

    /// Refuses what no legitimate peer sends ([`validate`]): ids that are not ObjectIds,
    /// negative or unchargeable prices, oversized strings, versions beyond JavaScript's.
    /// Listeners terminate an invalid event instead of handling it.
    fn validate(&self) -> Result<(), InvalidEvent>;
}

/// `expiresAt` and other instants: ISO-8601 UTC with milliseconds and `Z` on output
/// (`2026-11-26T11:37:05.123Z`, what JavaScript's `toISOString` writes); any RFC 3339 on input.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats an instant the way the Node stack does.
    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Parses any RFC 3339 instant into UTC.
    pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|at| at.with_timezone(&Utc))
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Prices: read any JSON number as f64; write whole prices as integers (`20`, not `20.0`), as
/// JavaScript's `JSON.stringify` does, and fractional ones as they are (`12.5`).
pub mod price {
    use serde::Serializer;

    /// Largest integer a JavaScript number holds exactly.
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

    pub fn serialize<S: Serializer>(price: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if price.fract() == 0.0 && price.abs() <= MAX_SAFE_INTEGER {
            serializer.serialize_i64(*price as i64)
        } else {
            serializer.serialize_f64(*price)
        }
    }
}

#[cfg(test)]
mod tests;
