//! The rest of the ticketing stack, played the way the Node services behave: the tickets service
//! announces tickets, the payments service announces payments, the auth service signs users in.

use common::Event;
use common::bus::Publisher;
use common::events::{PaymentCreated, TicketCreated};
use common::http::{JwtKey, UserPayload, auth::session_cookie};

use crate::ids::object_id;

/// A signed-in user: their id and the `Cookie` header a browser would send.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: String,
    pub email: String,
    pub cookie: String,
}

/// Signs a user in as the auth service does: an HS256 JWT `{id, email, iat}` in a
/// cookie-session `session` cookie.
pub fn sign_in(key: &JwtKey, email: &str) -> Buyer {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let user = UserPayload {
        id: object_id(),
        email: email.to_owned(),
        iat: Some(iat),
    };
    Buyer {
        id: user.id.clone(),
        email: user.email.clone(),
        cookie: session_cookie(&key.sign(&user)),
    }
}

/// Publishes what the tickets and payments services publish.
#[derive(Clone)]
pub struct Peers {
    publisher: Publisher,
}

impl Peers {
    /// Peers publishing with `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Peers { publisher }
    }

    /// `ticket:created` for a new ticket, as the tickets service announces it.
    pub async fn ticket_created(&self, title: &str, price: f64) -> anyhow::Result<TicketCreated> {
        let ticket = TicketCreated {
            id: object_id(),
            version: 0,
            title: title.to_owned(),
            price,
            user_id: object_id(),
        };
        self.publish(&ticket).await?;
        Ok(ticket)
    }

    /// `payment:created` for `order_id`, as the payments service announces a charge.
    pub async fn payment_created(&self, order_id: &str) -> anyhow::Result<PaymentCreated> {
        let payment = PaymentCreated {
            id: object_id(),
            order_id: order_id.to_owned(),
            stripe_id: format!("ch_{}", object_id()),
        };
        self.publish(&payment).await?;
        Ok(payment)
    }

    /// Publishes `event`, retrying for up to 20 s while the broker cannot take it (a clustered
    /// stream electing a new leader answers "no stream" for a moment). A retry carries the same
    /// message id, so JetStream stores it once; consumers are idempotent by version anyway.
    async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match self.publisher.publish(event).await {
                Ok(_) => return Ok(()),
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
