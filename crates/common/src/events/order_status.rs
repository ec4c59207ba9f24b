use serde::{Deserialize, Serialize};

/// The life of an order. The strings are fixed by the Node stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Reserved, waiting for payment.
    #[serde(rename = "created")]
    Created,
    /// Cancelled by the buyer or by expiry; the ticket is free again.
    #[serde(rename = "cancelled")]
    Cancelled,
    /// Payment under way.
    #[serde(rename = "awaiting:payment")]
    AwaitingPayment,
    /// Paid.
    #[serde(rename = "complete")]
    Complete,
}

impl OrderStatus {
    /// The exact string on the wire and in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::AwaitingPayment => "awaiting:payment",
            OrderStatus::Complete => "complete",
        }
    }

    /// Whether an order in this status keeps its ticket reserved.
    pub const fn reserves_ticket(self) -> bool {
        !matches!(self, OrderStatus::Cancelled)
    }
}
