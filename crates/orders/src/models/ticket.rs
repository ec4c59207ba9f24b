//! The replica of the tickets service's tickets: what an order shows and reserves.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{StoreError, is_duplicate_key};

/// A ticket as replicated from `ticket:created` / `ticket:updated`; `_id` is the tickets
/// service's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub title: String,
    /// Stored as a double; an Int32 or Int64 written by another tool reads as well.
    pub price: f64,
    #[serde(deserialize_with = "super::whole_number")]
    pub version: i64,
}

/// What applying a `ticket:updated` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketUpdate {
    /// The replica was at `version - 1` and now holds the update.
    Applied,
    /// The replica already holds this version or a later one.
    AlreadyApplied,
    /// An earlier version is missing (or the ticket itself): apply later.
    Gap { current: Option<i64> },
}

/// The `tickets` collection.
#[derive(Debug, Clone)]
pub struct Tickets {
    collection: Collection<Ticket>,
}

impl Tickets {
    /// The collection in `db`.
    pub fn new(db: &Database) -> Self {
        Tickets {
            collection: db.collection("tickets"),
        }
    }

    /// The ticket with `id`, if replicated.
    pub async fn get(&self, id: ObjectId) -> Result<Option<Ticket>, StoreError> {
        Ok(self.collection.find_one(doc! { "_id": id }).await?)
    }

    /// The tickets among `ids` that exist, by id.
    pub async fn get_many(
        &self,
        ids: &[ObjectId],
    ) -> Result<HashMap<ObjectId, Ticket>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let tickets: Vec<Ticket> = self
            .collection
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        Ok(tickets.into_iter().map(|t| (t.id, t)).collect())
    }

    /// Stores a new replica; `false` when it already exists (a redelivered `ticket:created`).
    pub async fn insert(&self, ticket: &Ticket) -> Result<bool, StoreError> {
        match self.collection.insert_one(ticket).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies an update carrying `version` only if the replica is at `version - 1`.
    pub async fn apply_update(
        &self,
        id: ObjectId,
        version: i64,
        title: &str,
        price: f64,
    ) -> Result<TicketUpdate, StoreError> {
        let updated = self
            .collection
            .update_one(
                doc! { "_id": id, "version": version - 1 },
                doc! { "$set": { "title": title, "price": price, "version": version } },
            )
            .await?;
        if updated.matched_count == 1 {
            return Ok(TicketUpdate::Applied);
        }
        Ok(match self.get(id).await? {
            Some(ticket) if ticket.version >= version => TicketUpdate::AlreadyApplied,
            Some(ticket) => TicketUpdate::Gap {
                current: Some(ticket.version),
            },
            None => TicketUpdate::Gap { current: None },
        })
    }
}
