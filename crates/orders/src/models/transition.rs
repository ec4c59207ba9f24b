//! Claims of state changes (`order_transitions`): what makes every change of an order exclusive
//! on any store that enforces unique indexes, FerretDB 1.24 as well as MongoDB.
//!
//! FerretDB 1.24 runs a conditional update as a read followed by a whole-document write, so two
//! updates guarded on the same version can both match (measured: 20 concurrent guarded updates
//! of one order had up to 11 winners). What both stores make atomic is an insert checked by a
//! unique index. So a change is first *claimed*: inserting `{_id: "<order id>:<version it
//! leaves>"}` succeeds for exactly one writer, and every other writer of that version gets a
//! duplicate key.
//!
//! A claim holds the whole change (new status, the event, a token), so anyone can apply it: the
//! claimer right away, or, when the claimer died or failed between claiming and applying,
//! whoever finds the claim next (a racing writer that hit the duplicate key, a redelivered event,
//! the outbox relay's pass at start-up and on its sweep). Applying is an update guarded on the
//! claimed version that sets the claimed status, the next version and the claim's token, and
//! appends the claimed event; whoever applies it writes the same document, so applying twice
//! changes nothing. A claim is deleted once an apply of it has completed.
//!
//! Why a deleted claim lets no second change in: by then the order has left the claimed version
//! for good, so a later claim of that version (by a writer that read the order before the
//! change) matches nothing when applied; its claimer finds another token on the order and
//! reports the change as not its own.

use futures::TryStreamExt;
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use common::events::OrderStatus;

use super::{OutboxEntry, StoreError, is_duplicate_key};

/// A claimed change of one order from one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// `<order id>:<version>`: unique, so one claim per version of an order.
    #[serde(rename = "_id")]
    pub id: String,
    pub order: ObjectId,
    /// The version the change leaves; the order is at `from + 1` afterwards.
    #[serde(deserialize_with = "super::whole_number")]
    pub from: i64,
    /// The status the change sets.
    pub status: OrderStatus,
    /// The event the change publishes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<OutboxEntry>,
    /// Written into the order by the apply, so the claimer can tell its own change.
    pub token: ObjectId,
    pub claimed_at: bson::DateTime,
}

impl Transition {
    /// A change of `order` from version `from` to `status`, publishing `event`.
    pub fn new(
        order: ObjectId,
        from: i64,
        status: OrderStatus,
        event: Option<OutboxEntry>,
    ) -> Self {
        Transition {
            id: format!("{}:{from}", order.to_hex()),
            order,
            from,
            status,
            event,
            token: ObjectId::new(),
            claimed_at: bson::DateTime::now(),
        }
    }

    /// The guard of the apply: the order still at the claimed version and open.
    pub fn filter(&self) -> Document {
        doc! {
            "_id": self.order,
            "version": self.from,
            "status": { "$in": super::order::OPEN.as_slice() },
        }
    }

    /// The apply: the same document whoever sends it, so sending it twice changes nothing.
    pub fn update(&self) -> Document {
        let mut set = doc! {
            "status": self.status.as_str(),
            "version": self.from + 1,
            "transition": self.token,
        };
        if !self.status.reserves_ticket() {
            // A cancelled order releases its ticket: its reservation becomes its own id.
            set.insert("reservation", self.order);
        }
        let mut update = doc! { "$set": set };
        if let Some(event) = &self.event {
            update.insert("$push", doc! { "outbox": event.to_document() });
        }
        update
    }
}

/// Whether a claim was taken.
#[derive(Debug)]
pub enum Claim {
    /// This writer holds the claim.
    Taken,
    /// Another writer claimed the same version first.
    Held,
}

/// The `order_transitions` collection: only claims not yet applied, or applied a moment ago.
#[derive(Debug, Clone)]
pub struct Transitions {
    collection: Collection<Transition>,
}

impl Transitions {
    /// The collection in `db`.
    pub fn new(db: &Database) -> Self {
        Transitions {
            collection: db.collection("order_transitions"),
        }
    }

    /// Claims `transition`; exactly one claim of an order's version succeeds at a time.
    pub async fn claim(&self, transition: &Transition) -> Result<Claim, StoreError> {
        match self.collection.insert_one(transition).await {
            Ok(_) => Ok(Claim::Taken),
            Err(e) if is_duplicate_key(&e) => Ok(Claim::Held),
            Err(e) => Err(e.into()),
        }
    }

    /// The claim with `id`, if it is still there.
    pub async fn get(&self, id: &str) -> Result<Option<Transition>, StoreError> {
        Ok(self.collection.find_one(doc! { "_id": id }).await?)
    }

    /// Deletes `transition` once applied (a later claim of the same id is left alone).
    pub async fn release(&self, transition: &Transition) -> Result<(), StoreError> {
        self.collection
            .delete_one(doc! { "_id": &transition.id, "token": transition.token })
            .await?;
        Ok(())
    }

    /// Every claim still present, oldest first: those a crash left unapplied, and those being
    /// applied right now.
    pub async fn pending(&self) -> Result<Vec<Transition>, StoreError> {
        Ok(self
            .collection
            .find(doc! {})
            .sort(doc! { "claimedAt": 1 })
            .await?
            .try_collect()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use common::events::{OrderCancelled, OrderCancelledTicket};

    use super::*;

    #[test]
    fn a_claim_is_keyed_by_the_order_and_the_version_it_leaves() {
        let order = ObjectId::parse_str("6745a1f0c2b1a4d5e6f70812").unwrap();
        let claim = Transition::new(order, 0, OrderStatus::Complete, None);
        assert_eq!(claim.id, "6745a1f0c2b1a4d5e6f70812:0");
        assert_eq!(
            claim.filter(),
            doc! { "_id": order, "version": 0_i64, "status": { "$in": ["created", "awaiting:payment"] } }
        );
        assert_eq!(
            claim.update(),
            doc! { "$set": { "status": "complete", "version": 1_i64, "transition": claim.token } }
        );
    }

    #[test]
    fn a_cancelling_claim_releases_the_ticket_and_appends_its_event() {
        let order = ObjectId::new();
        let event = OutboxEntry::of(&OrderCancelled {
            id: order.to_hex(),
            version: 4,
            ticket: OrderCancelledTicket {
                id: ObjectId::new().to_hex(),
            },
        });
        let claim = Transition::new(order, 3, OrderStatus::Cancelled, Some(event.clone()));
        assert_eq!(
            claim.update(),
            doc! {
                "$set": { "status": "cancelled", "version": 4_i64, "transition": claim.token, "reservation": order },
                "$push": { "outbox": event.to_document() },
            }
        );
        let stored = bson::to_document(&claim).unwrap();
        assert_eq!(bson::from_document::<Transition>(stored).unwrap(), claim);
    }
}
