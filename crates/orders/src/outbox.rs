//! Publishing the events waiting in orders' outboxes.
//!
//! A request (or listener) writes its change and its event in one update, then calls
//! [`Outbox::publish_now`] before answering. When NATS is down, slow, or the process dies
//! first, the event stays in the document and the relay ([`Outbox::run`]) publishes it later: at
//! start-up, on an interval, when woken, and once more at shutdown. Entries of one order go out
//! in the order they were written, and each is removed only after JetStream acknowledged it; the
//! event's message id makes a second publish of the same entry a duplicate JetStream drops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use common::bus::{PublishError, Publisher};
use common::telemetry::ErrorChain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::models::{Order, Orders, StoreError};

/// How many orders the relay reads per batch.
const BATCH: i64 = 100;

/// Longest the final flush at shutdown may take.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Why an outbox could not be emptied; the relay tries again later.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("JetStream did not acknowledge in time")]
    Timeout,
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The publisher of outbox entries, shared by requests, listeners and the relay.
pub struct Outbox {
    orders: Orders,
    publisher: Publisher,
    client: async_nats::Client,
    publish_timeout: Duration,
    wake: Notify,
}

impl Outbox {
    /// An outbox over `orders` publishing with `publisher` on `client`'s connection.
    pub fn new(
        orders: Orders,
        publisher: Publisher,
        client: async_nats::Client,
        publish_timeout: Duration,
    ) -> Self {
        Outbox {
            orders,
            publisher,
            client,
            publish_timeout,
            wake: Notify::new(),
        }
    }

    /// Publishes `order`'s pending events right away, waiting at most the publish timeout. On
    /// failure the events stay where they are for the relay; the caller's answer does not change.
    pub async fn publish_now(&self, order: &Order) {
        if order.outbox.is_empty() {
            return;
        }
        let result = match tokio::time::timeout(self.publish_timeout, self.flush(order)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(OutboxError::Timeout),
        };
        if let Err(e) = result {
            tracing::warn!(order_id = %order.id, error = %ErrorChain(&e), "event left to the outbox relay");
            self.wake.notify_one();
        }
    }

    /// Publishes `order`'s entries oldest first and removes each once acknowledged; stops at the
    /// first failure so that no event overtakes an earlier one of the same order.
    pub async fn flush(&self, order: &Order) -> Result<usize, OutboxError> {
        let mut published = 0;
        for entry in &order.outbox {
            if self.client.connection_state() != State::Connected {
                // Publishing now would only queue in the client until a timeout.
                return Err(OutboxError::Disconnected);
            }
            match entry.subject() {
                Some(subject) => {
                    self.publisher
                        .publish_body(subject, &entry.id, Bytes::from(entry.body.clone()))
                        .await?;
                    published += 1;
                }
                None => {
                    // Blocking the order's outbox forever would be worse than losing it.
                    tracing::error!(order_id = %order.id, subject = %entry.subject, message_id = %entry.id, "dropping an outbox entry with an unknown subject");
                }
            }
            self.orders.pull(order.id, entry).await?;
        }
        Ok(published)
    }

    /// One pass over every order with pending events; returns how many events it published.
    pub async fn flush_pending(&self) -> Result<usize, OutboxError> {
        let mut published = 0;
        loop {
            let orders = self.orders.pending(BATCH).await?;
            for order in &orders {
                published += self.flush(order).await?;
            }
            if (orders.len() as i64) < BATCH {
                return Ok(published);
            }
        }
    }

    /// Asks the relay for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The relay: a pass at start, every `interval`, when woken, and a last one when `shutdown`
    /// is cancelled (after requests and listeners have finished).
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.flush_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(published = n, "outbox relay published pending events"),
                Err(OutboxError::Disconnected) => {
                    tracing::debug!("outbox relay waiting for NATS")
                }
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "outbox relay pass failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        match tokio::time::timeout(FINAL_FLUSH, self.flush_pending()).await {
            Ok(Ok(n)) => tracing::info!(published = n, "outbox flushed at shutdown"),
            Ok(Err(e)) => {
                tracing::warn!(error = %ErrorChain(&e), "events left in the outbox at shutdown; the next start publishes them")
            }
            Err(_) => tracing::warn!(
                "outbox flush at shutdown timed out; the next start publishes what is left"
            ),
        }
    }
}
