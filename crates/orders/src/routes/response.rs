//! The order JSON of docs/contract.md §4.2.

use common::events::{OrderStatus, price, timestamp};
use serde::Serialize;

use crate::models::{Order, Ticket};

/// `{"id","status","userId","expiresAt","ticket":{"id","title","price","version"},"version"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    pub id: String,
    pub status: OrderStatus,
    pub user_id: String,
    pub expires_at: String,
    /// `null` only if the ticket replica vanished, which the service never does.
    pub ticket: Option<TicketResponse>,
    pub version: i64,
}

/// The ticket embedded in an order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketResponse {
    pub id: String,
    pub title: String,
    #[serde(serialize_with = "price::serialize")]
    pub price: f64,
    pub version: i64,
}

impl OrderResponse {
    /// The JSON of `order` with `ticket` embedded.
    pub fn new(order: &Order, ticket: Option<&Ticket>) -> Self {
        OrderResponse {
            id: order.id.to_hex(),
            status: order.status,
            user_id: order.user_id.clone(),
            expires_at: timestamp::format(&order.expires_at()),
            ticket: ticket.map(|ticket| TicketResponse {
                id: ticket.id.to_hex(),
                title: ticket.title.clone(),
                price: ticket.price,
                version: ticket.version,
            }),
            version: order.version,
        }
    }
}
