//! Orders: the reservation, the state changes with their version bumps, and the outbox.
//!
//! Double booking is impossible without a read-then-write: `reservation` has a unique index and
//! holds the ticket id while the order reserves its ticket (`created`, `awaiting:payment`,
//! `complete`), and the order's own id once cancelled. Inserting a second reserving order for one
//! ticket fails with a duplicate key, whatever the timing.
//!
//! Two changes of one order never both happen: each is claimed in `order_transitions` first
//! (a unique `_id` per order and version), and only the claimed change is applied
//! ([`super::transition`]).
//!
//! Events are not lost between the write and the publish: each change appends its event to the
//! order's `outbox` array in the same single-document update; the outbox relay publishes and
//! removes them.

use chrono::{DateTime, Utc};
use common::events::{
    OrderCancelled, OrderCancelledTicket, OrderCreated, OrderCreatedTicket, OrderStatus,
};
use common::{Event, Subject};
use futures::TryStreamExt;
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::transition::{Claim, Transition, Transitions};
use super::{StoreError, Ticket, is_duplicate_key};

/// An event waiting in an order's outbox: its `Nats-Msg-Id`, subject and JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: String,
    pub subject: String,
    pub body: String,
}

impl OutboxEntry {
    /// The entry publishing `event`.
    pub fn of<E: Event>(event: &E) -> Self {
        OutboxEntry {
            id: event.message_id(),
            subject: E::SUBJECT.as_str().to_owned(),
            body: serde_json::to_string(event).expect("events serialise to JSON"),
        }
    }

    /// The subject to publish on, if it is one of ours.
    pub fn subject(&self) -> Option<Subject> {
        Subject::parse(&self.subject)
    }

    /// The entry as stored. `$pull` removes it by equality with this document, so the field
    /// order must stay the one serde writes (FerretDB 1.24 ignores `$pull` conditions on fields).
    pub fn to_document(&self) -> Document {
        doc! { "id": &self.id, "subject": &self.subject, "body": &self.body }
    }
}

/// An order as stored in the `orders` collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub user_id: String,
    pub status: OrderStatus,
    pub expires_at: bson::DateTime,
    /// The ticket's id (its replica in `tickets`).
    pub ticket: ObjectId,
    #[serde(deserialize_with = "super::whole_number")]
    pub version: i64,
    /// Unique: the ticket id while this order reserves it, the order's own id once cancelled.
    pub reservation: ObjectId,
    /// Events written with the change that caused them, not yet acknowledged by JetStream.
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    /// The token of the claimed change that set the current status (none while `created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<ObjectId>,
}

impl Order {
    /// `expiresAt` as a UTC instant.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.expires_at.timestamp_millis()).unwrap_or_default()
    }
}

/// The outcome of inserting a reserving order.
#[derive(Debug, Clone)]
pub enum Reservation {
    /// The order now holds the ticket.
    Created(Order),
    /// Another order holds it.
    AlreadyReserved,
}

/// The outcome of a state change.
#[derive(Debug, Clone)]
pub enum OrderChange {
    /// Applied: the order after the change, its new event (if any) in the outbox.
    Changed(Order),
    /// Not applicable to the order's current status; nothing was written.
    Unchanged(Order),
    /// The order does not exist.
    Missing,
}

/// Statuses in which an order still holds its ticket and may be cancelled or paid.
pub(super) const OPEN: [&str; 2] = [
    OrderStatus::Created.as_str(),
    OrderStatus::AwaitingPayment.as_str(),
];

/// The `orders` collection, with the claims of its changes.
#[derive(Debug, Clone)]
pub struct Orders {
    collection: Collection<Order>,
    transitions: Transitions,
    /// Fault injection for crash tests: a claimed change is never applied by its claimer.
    hold_after_claim: bool,
}

impl Orders {
    /// The collection in `db`.
    pub fn new(db: &Database) -> Self {
        Orders {
            collection: db.collection("orders"),
            transitions: Transitions::new(db),
            hold_after_claim: false,
        }
    }

    /// These orders, with claimed changes never applied by their claimer (the request or
    /// listener hangs instead), as if the process died between the two: for crash tests.
    pub fn holding_claimed_changes(mut self) -> Self {
        self.hold_after_claim = true;
        self
    }

    /// Creates the indexes of the reservation, the user's list and the relay's scan, if missing.
    ///
    /// Only the missing ones are sent: FerretDB 1.24 drops the connection when asked to create
    /// an index that already exists (so a restart, or a second replica, would fail to start).
    /// A replica starting at the same moment may still create one first; then look again.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |name: &str, keys: mongodb::bson::Document, unique: bool| {
            let options = IndexOptions::builder()
                .name(name.to_owned())
                .unique(unique.then_some(true))
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        };
        let wanted = [
            index("reservation_1", doc! { "reservation": 1 }, true),
            index("userId_1__id_1", doc! { "userId": 1, "_id": 1 }, false),
            index("outbox.id_1", doc! { "outbox.id": 1 }, false),
        ];
        let mut attempt = 0;
        loop {
            let existing = match self.collection.list_index_names().await {
                Ok(names) => names,
                // A collection that does not exist yet has no indexes.
                Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) => {
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            let missing: Vec<IndexModel> = wanted
                .iter()
                .filter(|model| {
                    let name = model.options.as_ref().and_then(|o| o.name.as_ref());
                    !name.is_some_and(|name| existing.contains(name))
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            match self.collection.create_indexes(missing).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "creating indexes failed; looking again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Inserts a `created` order at version 0 for `ticket`, with its `order:created` in the
    /// outbox, unless another order reserves the ticket.
    pub async fn reserve(
        &self,
        user_id: &str,
        ticket: &Ticket,
        expires_at: DateTime<Utc>,
    ) -> Result<Reservation, StoreError> {
        // Millisecond precision, as stored, so the event and the document agree.
        let expires_at = bson::DateTime::from_millis(expires_at.timestamp_millis());
        let mut order = Order {
            id: ObjectId::new(),
            user_id: user_id.to_owned(),
            status: OrderStatus::Created,
            expires_at,
            ticket: ticket.id,
            version: 0,
            reservation: ticket.id,
            outbox: Vec::new(),
            transition: None,
        };
        let event = OrderCreated {
            id: order.id.to_hex(),
            version: 0,
            status: OrderStatus::Created,
            user_id: order.user_id.clone(),
            expires_at: order.expires_at(),
            ticket: OrderCreatedTicket {
                id: ticket.id.to_hex(),
                price: ticket.price,
            },
        };
        order.outbox.push(OutboxEntry::of(&event));
        match self.collection.insert_one(&order).await {
            Ok(_) => Ok(Reservation::Created(order)),
            Err(e) if is_duplicate_key(&e) => Ok(Reservation::AlreadyReserved),
            Err(e) => Err(e.into()),
        }
    }

    /// The order reserving `ticket` (open or complete), if any.
    pub async fn reserving(&self, ticket: ObjectId) -> Result<Option<Order>, StoreError> {
        Ok(self
            .collection
            .find_one(doc! { "reservation": ticket })
            .await?)
    }

    /// The order with `id`.
    pub async fn get(&self, id: ObjectId) -> Result<Option<Order>, StoreError> {
        Ok(self.collection.find_one(doc! { "_id": id }).await?)
    }

    /// The orders of `user_id`, oldest first.
    pub async fn for_user(&self, user_id: &str) -> Result<Vec<Order>, StoreError> {
        Ok(self
            .collection
            .find(doc! { "userId": user_id })
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// Cancels `order` (as last read) if it is `created` or `awaiting:payment`: releases the
    /// ticket, bumps the version and queues `order:cancelled`. A `cancelled` or `complete` order
    /// is left as it is. Of racing writers (a DELETE, an expiry, a payment) exactly one changes
    /// the order: see [`super::transition`].
    pub async fn cancel(&self, order: Order) -> Result<OrderChange, StoreError> {
        self.change(order, OrderStatus::Cancelled, |current| {
            Some(OutboxEntry::of(&OrderCancelled {
                id: current.id.to_hex(),
                version: next_version(current),
                ticket: OrderCancelledTicket {
                    id: current.ticket.to_hex(),
                },
            }))
        })
        .await
    }

    /// Marks `order` paid if it is `created` or `awaiting:payment`; publishes nothing, as the
    /// Node service did not either.
    pub async fn complete(&self, order: Order) -> Result<OrderChange, StoreError> {
        self.change(order, OrderStatus::Complete, |_| None).await
    }

    /// Claims the change of `current` to `status`, applies it, and reports whether this call
    /// made it. A claim another writer holds is applied first (it may have died holding it),
    /// then the order is read again.
    async fn change(
        &self,
        mut current: Order,
        status: OrderStatus,
        event: impl Fn(&Order) -> Option<OutboxEntry>,
    ) -> Result<OrderChange, StoreError> {
        loop {
            if current.is_final() {
                return Ok(OrderChange::Unchanged(current));
            }
            let claim = Transition::new(current.id, current.version, status, event(&current));
            let found = match self.transitions.claim(&claim).await? {
                Claim::Taken => {
                    if self.hold_after_claim {
                        tracing::warn!(order_id = %current.id, "fault injection: holding a claimed change unapplied (tests only)");
                        std::future::pending::<()>().await;
                    }
                    let order = match self.apply(&claim).await? {
                        Some(order) => Some(order),
                        // Applied by a writer that found the claim first, or the order had
                        // already left this version when it was claimed.
                        None => self.get(current.id).await?,
                    };
                    self.release(&claim).await;
                    match order {
                        Some(order) if order.transition == Some(claim.token) => {
                            return Ok(OrderChange::Changed(order));
                        }
                        found => found,
                    }
                }
                Claim::Held => {
                    if let Some(held) = self.transitions.get(&claim.id).await? {
                        self.apply(&held).await?;
                        self.release(&held).await;
                    }
                    self.get(current.id).await?
                }
            };
            match found {
                Some(order) => current = order,
                None => return Ok(OrderChange::Missing),
            }
        }
    }

    /// Applies a claimed change if the order is still at its version; the order after it, or
    /// `None` when nothing matched (already applied, or the order moved on before the claim).
    async fn apply(&self, claim: &Transition) -> Result<Option<Order>, StoreError> {
        Ok(self
            .collection
            .find_one_and_update(claim.filter(), claim.update())
            .return_document(ReturnDocument::After)
            .await?)
    }

    /// Deletes an applied claim. A failure is only logged: the claim no longer changes
    /// anything, and the relay's next pass deletes it.
    async fn release(&self, claim: &Transition) {
        if let Err(e) = self.transitions.release(claim).await {
            tracing::warn!(claim = %claim.id, error = %common::telemetry::ErrorChain(&e), "cannot delete an applied claim; the relay will");
        }
    }

    /// Applies the claims a crashed or failed writer left behind (and deletes them); returns
    /// how many changed an order. The outbox relay calls this before it publishes.
    pub async fn finish_claimed(&self) -> Result<usize, StoreError> {
        let mut finished = 0;
        for claim in self.transitions.pending().await? {
            if self.apply(&claim).await?.is_some() {
                tracing::info!(order_id = %claim.order, from = claim.from, status = claim.status.as_str(), "finished a change claimed before a crash");
                finished += 1;
            }
            self.transitions.release(&claim).await?;
        }
        Ok(finished)
    }

    /// Empties the outbox of a cancelled or complete order at `version`; nothing else writes
    /// such an order, so this cannot overwrite a concurrent change (see [`super::published`]).
    pub async fn clear_outbox(&self, id: ObjectId, version: i64) -> Result<(), StoreError> {
        self.collection
            .update_one(
                doc! { "_id": id, "version": version, "status": { "$in": [OrderStatus::Cancelled.as_str(), OrderStatus::Complete.as_str()] } },
                doc! { "$set": { "outbox": [] } },
            )
            .await?;
        Ok(())
    }

    /// The ids of up to `limit` orders with outbox entries, after `after`, in id order. Only the
    /// ids: the relay reads each order as it is when it reaches it.
    pub async fn with_outbox(
        &self,
        after: Option<ObjectId>,
        limit: i64,
    ) -> Result<Vec<ObjectId>, StoreError> {
        let filter = match after {
            Some(after) => doc! { "outbox.id": { "$exists": true }, "_id": { "$gt": after } },
            None => doc! { "outbox.id": { "$exists": true } },
        };
        let ids: Vec<Document> = self
            .collection
            .clone_with_type::<Document>()
            .find(filter)
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(ids
            .iter()
            .filter_map(|id| id.get_object_id("_id").ok())
            .collect())
    }
}

impl Order {
    /// Whether the order can change no more (cancelled or paid).
    pub fn is_final(&self) -> bool {
        matches!(self.status, OrderStatus::Cancelled | OrderStatus::Complete)
    }
}

fn next_version(order: &Order) -> u64 {
    u64::try_from(order.version + 1).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_entry_carries_the_event_its_subject_and_its_message_id() {
        let event = OrderCancelled {
            id: "6745a1f0c2b1a4d5e6f70812".into(),
            version: 1,
            ticket: OrderCancelledTicket {
                id: "6745a1d2c2b1a4d5e6f70810".into(),
            },
        };
        let entry = OutboxEntry::of(&event);
        assert_eq!(entry.subject(), Some(Subject::OrderCancelled));
        assert_eq!(entry.id, "order:cancelled:6745a1f0c2b1a4d5e6f70812:1");
        assert_eq!(
            entry.body,
            r#"{"id":"6745a1f0c2b1a4d5e6f70812","version":1,"ticket":{"id":"6745a1d2c2b1a4d5e6f70810"}}"#
        );
        // `$pull` matches by whole-document equality: the stored form must be what serde writes.
        assert_eq!(entry.to_document(), bson::to_document(&entry).unwrap());
    }
}
