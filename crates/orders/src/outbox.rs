//! Publishing the events waiting in orders' outboxes.
//!
//! A request (or listener) writes its change and its event in one update, then calls
//! [`Outbox::publish_now`] before answering. When NATS is down, slow, or the process dies
//! first, the event stays in the document and the relay ([`Outbox::run`]) publishes it later.
//! Entries of one order go out in the order they were written; each is marked published (in
//! `published_events`, see [`crate::models::published`], in batches off the request path) once
//! the bus acknowledged it, and the outbox of an order is emptied when the order is final
//! (cancelled or complete) and all its entries are published. The event's message id makes a
//! second publish of the same entry a duplicate JetStream drops; on NATS Streaming consumers
//! ignore it by version.
//!
//! The relay's pass first finishes the changes a crashed writer claimed but did not apply
//! ([`crate::models::transition`]), then looks for orders with pending events. On FerretDB 1.24 such a query scans the
//! whole collection (it pushes down only `{_id: ...}` filters), so the relay does not poll while
//! all is well: it makes a pass at start-up (what a crash left), while any `publish_now` of this
//! process has failed since its last successful pass (retrying every `retry`), on a slow `sweep`
//! as a safety net, and at shutdown if anything is outstanding.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bus::{Backoff, PublishError, Publisher};
use common::telemetry::ErrorChain;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::models::{Order, Orders, PublishedEvents, StoreError};

/// How many orders the relay reads per batch.
const BATCH: i64 = 100;

/// Longest the final flush at shutdown may take.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Longest one relay pass may take: a database that stopped answering (frozen, cut off) must
/// not hold the relay forever; the next pass starts where this one stopped.
const PASS_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an outbox could not be emptied; the relay tries again later.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no answer in time (JetStream or the database)")]
    Timeout,
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The publisher of outbox entries, shared by requests, listeners and the relay.
pub struct Outbox {
    orders: Orders,
    published: PublishedEvents,
    publisher: Publisher,
    publish_timeout: Duration,
    wake: Notify,
    /// Counts failed `publish_now` calls; the relay is clean up to the count it last saw before a
    /// successful pass.
    failures: AtomicU64,
}

/// Whether an order's entries may have been published before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// Inserted by the caller a moment ago: nothing of it is published yet.
    Yes,
    /// Anything may have been published by anyone: ask.
    No,
}

/// How often waiting marks are written: at most this long after the first of a batch.
const MARKS_BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Longest one write of marks may take before it is tried again.
const MARKS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// When the relay makes its passes.
#[derive(Debug, Clone, Copy)]
pub struct RelaySchedule {
    /// Delay between passes while events are known to be outstanding.
    pub retry: Duration,
    /// Delay between passes while none are (a safety net).
    pub sweep: Duration,
}

impl Outbox {
    /// An outbox over `orders` publishing with `publisher`.
    pub fn new(
        orders: Orders,
        published: PublishedEvents,
        publisher: Publisher,
        publish_timeout: Duration,
    ) -> Self {
        Outbox {
            orders,
            published,
            publisher,
            publish_timeout,
            wake: Notify::new(),
            failures: AtomicU64::new(0),
        }
    }

    /// Publishes `order`'s pending events right away, waiting at most the publish timeout. On
    /// failure the events stay where they are for the relay; the caller's answer does not change.
    pub async fn publish_now(&self, order: &Order) {
        self.publish_within_timeout(order, Fresh::No).await
    }

    /// [`Outbox::publish_now`] for an order this request has just inserted: none of its entries
    /// can have been published yet, so the database is not asked which were.
    pub async fn publish_new(&self, order: &Order) {
        self.publish_within_timeout(order, Fresh::Yes).await
    }

    async fn publish_within_timeout(&self, order: &Order, fresh: Fresh) {
        if order.outbox.is_empty() {
            return;
        }
        let flush = self.flush_order(order, fresh);
        let result = match tokio::time::timeout(self.publish_timeout, flush).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(OutboxError::Timeout),
        };
        if let Err(e) = result {
            tracing::warn!(order_id = %order.id, error = %ErrorChain(&e), "event left to the outbox relay");
            self.wake();
        }
    }

    /// Publishes `order`'s unpublished entries oldest first, marking each once acknowledged;
    /// stops at the first failure so that no event overtakes an earlier one of the same order.
    /// Empties the outbox of a final order whose entries are all published.
    pub async fn flush(&self, order: &Order) -> Result<usize, OutboxError> {
        self.flush_order(order, Fresh::No).await
    }

    async fn flush_order(&self, order: &Order, fresh: Fresh) -> Result<usize, OutboxError> {
        let ids: Vec<String> = order.outbox.iter().map(|entry| entry.id.clone()).collect();
        let already = match fresh {
            Fresh::Yes => HashSet::new(),
            Fresh::No => self.published.marked(&ids).await?,
        };
        let mut published = 0;
        for entry in order
            .outbox
            .iter()
            .filter(|entry| !already.contains(&entry.id))
        {
            if !self.publisher.connected() {
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
            self.published.mark_later(&entry.id);
        }
        if order.is_final() && !ids.is_empty() {
            self.orders.clear_outbox(order.id, order.version).await?;
            self.published.forget(&ids).await?;
        }
        Ok(published)
    }

    /// One pass: finishes the changes a crash left claimed but unapplied (their events land in
    /// outboxes), then publishes every order's outbox entries; returns how many events it
    /// published.
    pub async fn flush_pending(&self) -> Result<usize, OutboxError> {
        self.orders.finish_claimed().await?;
        if !self.publisher.connected() {
            // Spare the database a scan whose events could not be published anyway.
            return Err(OutboxError::Disconnected);
        }
        let mut published = 0;
        let mut after = None;
        loop {
            let ids = self.orders.with_outbox(after, BATCH).await?;
            for &id in &ids {
                // Read when its turn comes, not with the batch: a request or listener may have
                // published this order's events and emptied its outbox meanwhile (forgetting
                // their marks), and flushing an older copy would publish them again (JetStream
                // drops such a copy by its message id; NATS Streaming would deliver it).
                let Some(current) = self.orders.get(id).await? else {
                    continue;
                };
                published += self.flush(&current).await?;
            }
            match ids.last() {
                Some(&last) if ids.len() as i64 == BATCH => after = Some(last),
                _ => return Ok(published),
            }
        }
    }

    /// The entries of `order` not yet acknowledged by JetStream, oldest first.
    pub async fn unpublished(
        &self,
        order: &Order,
    ) -> Result<Vec<crate::models::OutboxEntry>, StoreError> {
        let ids: Vec<String> = order.outbox.iter().map(|entry| entry.id.clone()).collect();
        let marked = self.published.marked(&ids).await?;
        Ok(order
            .outbox
            .iter()
            .filter(|entry| !marked.contains(&entry.id))
            .cloned()
            .collect())
    }

    /// Tells the relay that events are outstanding: it makes a pass now and retries until one
    /// succeeds.
    pub fn wake(&self) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The relay: passes as described in the module documentation, until `shutdown` is
    /// cancelled (after requests and listeners have finished), then a last one if needed.
    pub async fn run(self: Arc<Self>, schedule: RelaySchedule, shutdown: CancellationToken) {
        let marks_stop = CancellationToken::new();
        let marks = tokio::spawn(write_marks(self.published.clone(), marks_stop.clone()));
        self.relay(schedule, shutdown).await;
        marks_stop.cancel();
        if let Err(e) = marks.await {
            tracing::error!(error = %e, "the task writing published marks failed");
        }
    }

    async fn relay(&self, schedule: RelaySchedule, shutdown: CancellationToken) {
        // Start dirty: a crash may have left events behind.
        let mut clean_up_to = None;
        let mut last_pass = Instant::now();
        loop {
            let failures = self.failures.load(Ordering::SeqCst);
            let due = clean_up_to != Some(failures) || last_pass.elapsed() >= schedule.sweep;
            if due {
                let pass = tokio::time::timeout(PASS_TIMEOUT, self.flush_pending()).await;
                match pass.unwrap_or(Err(OutboxError::Timeout)) {
                    Ok(published) => {
                        if published > 0 {
                            tracing::info!(published, "outbox relay published pending events");
                        }
                        clean_up_to = Some(failures);
                        last_pass = Instant::now();
                    }
                    Err(OutboxError::Disconnected) => {
                        tracing::debug!("outbox relay waiting for NATS")
                    }
                    Err(e) => tracing::warn!(error = %ErrorChain(&e), "outbox relay pass failed"),
                }
            }
            let delay = if clean_up_to == Some(self.failures.load(Ordering::SeqCst)) {
                schedule.sweep
            } else {
                schedule.retry
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if clean_up_to == Some(self.failures.load(Ordering::SeqCst)) {
            return;
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

/// Writes the marks of published entries in batches, until `stop`; then the last ones.
async fn write_marks(published: PublishedEvents, stop: CancellationToken) {
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = published.marks_waiting() => {}
        }
        // Let the marks of a few more requests join the batch.
        tokio::time::sleep(MARKS_BATCH_WINDOW).await;
        match write_marks_within(&published, MARKS_WRITE_TIMEOUT).await {
            Ok(_) => failures = 0,
            Err(error) => {
                failures += 1;
                let pause = backoff.delay(failures);
                tracing::warn!(%error, ?pause, "cannot write published marks yet");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    if let Err(error) = write_marks_within(&published, FINAL_FLUSH).await {
        tracing::warn!(%error, "published marks left unwritten at shutdown; their events are published again at the next start");
    }
}

/// One batch of marks, within `limit`: a database that stopped answering must not hold the
/// writing lock, which `forget` waits for, forever. A batch cut short stays waiting.
async fn write_marks_within(published: &PublishedEvents, limit: Duration) -> Result<usize, String> {
    match tokio::time::timeout(limit, published.write_marks()).await {
        Ok(Ok(written)) => Ok(written),
        Ok(Err(e)) => Err(ErrorChain(&e).to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}
