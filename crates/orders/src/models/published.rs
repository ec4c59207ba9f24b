//! The ids of outbox entries JetStream has acknowledged (`published_events`, `_id` = message id).
//!
//! Publishing marks an entry here instead of removing it from its order: on FerretDB 1.24 an
//! update is a read followed by a whole-document write, so removing an entry from an open order
//! could overwrite a payment or cancellation written in between. Only an order's state changes
//! write an open order; its outbox is emptied once the order is cancelled or complete, when
//! nothing else writes it any more.
//!
//! Marks are written off the request path, in batches ([`PublishedEvents::mark_later`] and
//! [`PublishedEvents::write_marks`], one `insert` for all the marks of a few milliseconds): a
//! request publishes its event and answers without a second write. Until written, a mark is
//! known to this process only; if it dies first, the relay of the next start publishes the entry
//! again (JetStream drops the copy by its message id; on NATS Streaming consumers ignore it by
//! version). Lookups go by `_id` one at a time: FerretDB 1.24 answers `{_id: {$in: …}}` by
//! scanning the collection.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use mongodb::bson::{Document, doc};
use mongodb::{Collection, Database};
use tokio::sync::Notify;

use super::{StoreError, is_duplicate_key};

/// The `published_events` collection, and the marks not written to it yet.
#[derive(Clone)]
pub struct PublishedEvents {
    collection: Collection<Document>,
    unwritten: Arc<Mutex<HashSet<String>>>,
    marked_later: Arc<Notify>,
    /// Held while a batch of marks is being written.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl PublishedEvents {
    /// The collection in `db`.
    pub fn new(db: &Database) -> Self {
        PublishedEvents {
            collection: db.collection("published_events"),
            unwritten: Arc::default(),
            marked_later: Arc::default(),
            writing: Arc::default(),
        }
    }

    /// Records that the entry `message_id` was acknowledged, in the next batch
    /// ([`PublishedEvents::write_marks`]); at once for this process.
    pub fn mark_later(&self, message_id: &str) {
        self.unwritten
            .lock()
            .expect("marks lock")
            .insert(message_id.to_owned());
        self.marked_later.notify_one();
    }

    /// Resolves once marks wait to be written.
    pub async fn marks_waiting(&self) {
        if self.unwritten.lock().expect("marks lock").is_empty() {
            self.marked_later.notified().await;
        }
    }

    /// Writes every mark waiting, in one command; returns how many. Marks stay waiting if the
    /// write fails, for the next call.
    pub async fn write_marks(&self) -> Result<usize, StoreError> {
        let _writing = self.writing.lock().await;
        let batch: Vec<String> = self
            .unwritten
            .lock()
            .expect("marks lock")
            .iter()
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let documents = batch.iter().map(|id| doc! { "_id": id });
        match self.collection.insert_many(documents).ordered(false).await {
            Ok(_) => {}
            // Some were written before (a mark twice is harmless); the others were written.
            Err(e) if only_duplicates(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let mut unwritten = self.unwritten.lock().expect("marks lock");
        for id in &batch {
            unwritten.remove(id);
        }
        Ok(batch.len())
    }

    /// Which of `message_ids` are recorded (written, or waiting to be).
    pub async fn marked(&self, message_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut marked = HashSet::new();
        let mut look_up = Vec::new();
        {
            let unwritten = self.unwritten.lock().expect("marks lock");
            for id in message_ids {
                if unwritten.contains(id) {
                    marked.insert(id.clone());
                } else {
                    look_up.push(id);
                }
            }
        }
        let found = futures::future::try_join_all(look_up.iter().map(|id| {
            self.collection
                .find_one(doc! { "_id": id.as_str() })
                .into_future()
        }))
        .await?;
        for (id, document) in look_up.into_iter().zip(found) {
            if document.is_some() {
                marked.insert(id.clone());
            }
        }
        Ok(marked)
    }

    /// Forgets `message_ids` once their order's outbox no longer holds them: marks not
    /// written yet are dropped (after any batch being written, so that none lands afterwards),
    /// the others deleted.
    pub async fn forget(&self, message_ids: &[String]) -> Result<(), StoreError> {
        let written: Vec<&String> = {
            let _writing = self.writing.lock().await;
            let mut unwritten = self.unwritten.lock().expect("marks lock");
            message_ids
                .iter()
                .filter(|id| !unwritten.remove(*id))
                .collect()
        };
        futures::future::try_join_all(written.iter().map(|id| {
            self.collection
                .delete_one(doc! { "_id": id.as_str() })
                .into_future()
        }))
        .await?;
        Ok(())
    }
}

/// Whether an unordered insert failed only because some documents existed already.
fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == 11000))
        }
        _ => is_duplicate_key(error),
    }
}
