//! The ids of outbox entries JetStream has acknowledged (`published_events`, `_id` = message id).
//!
//! Publishing marks an entry here instead of removing it from its order: on FerretDB 1.24 an
//! update is a read followed by a whole-document write, so removing an entry from an open order
//! could overwrite a payment or cancellation written in between. Only an order's state changes
//! write an open order; its outbox is emptied once the order is cancelled or complete, when
//! nothing else writes it any more.

use std::collections::HashSet;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};

use super::{StoreError, is_duplicate_key};

/// The `published_events` collection.
#[derive(Clone)]
pub struct PublishedEvents {
    collection: Collection<Document>,
}

impl PublishedEvents {
    /// The collection in `db`.
    pub fn new(db: &Database) -> Self {
        PublishedEvents {
            collection: db.collection("published_events"),
        }
    }

    /// Records that the entry `message_id` was acknowledged; recording it twice is harmless.
    pub async fn mark(&self, message_id: &str) -> Result<(), StoreError> {
        match self.collection.insert_one(doc! { "_id": message_id }).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Which of `message_ids` are recorded.
    pub async fn marked(&self, message_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        if message_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let found: Vec<Document> = self
            .collection
            .find(doc! { "_id": { "$in": message_ids } })
            .await?
            .try_collect()
            .await?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Forgets `message_ids` once their order's outbox no longer holds them.
    pub async fn forget(&self, message_ids: &[String]) -> Result<(), StoreError> {
        if !message_ids.is_empty() {
            self.collection
                .delete_many(doc! { "_id": { "$in": message_ids } })
                .await?;
        }
        Ok(())
    }
}
