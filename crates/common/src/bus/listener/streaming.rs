//! The listener runner on NATS Streaming: a durable queue subscription per (queue group,
//! channel), subscribed again on every new session.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    Listener, ListenerOptions, MessageInfo, Received, Settle, consumer_name, handle, log_join_error,
};
use crate::Event;
use crate::bus::BusError;
use crate::bus::streaming::{Connection, Delivery, StreamingError, SubscriptionSpec};

/// Runs `listener` until `shutdown`: joins the durable queue group `L::QUEUE_GROUP` on its
/// subject's channel (created from the channel's first message if new) and handles up to
/// `max_in_flight` messages at once (also what the server may send unacked). When the session is
/// lost it subscribes again on the next one. On shutdown it takes no new message, lets the ones
/// in hand finish and be acked, then closes the subscription (the group stays on the server).
///
/// The server cannot be told that a message is still being worked on, so it sends a message
/// held for a dependency outage again after the ack wait, maybe to this runner: a second copy
/// of a message already in hand is skipped (the copy in hand acks the sequence).
pub(crate) async fn run_streaming_listener<L: Listener>(
    connection: &Connection,
    listener: Arc<L>,
    options: &ListenerOptions,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let subject = L::Event::SUBJECT;
    let name = consumer_name(L::QUEUE_GROUP, subject);
    let spec = SubscriptionSpec {
        channel: options.stream.subject(subject),
        queue_group: L::QUEUE_GROUP.to_owned(),
        ack_wait: options.ack_wait,
        max_in_flight: options.max_in_flight.max(1),
    };
    let permits = Arc::new(Semaphore::new(spec.max_in_flight));
    let sequences_in_hand = Arc::new(Mutex::new(HashSet::new()));
    let mut in_hand = JoinSet::new();
    let mut open = None;

    'subscribe: while !shutdown.is_cancelled() {
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => break,
            subscribed = connection.subscribe(&spec) => subscribed,
        };
        let mut subscription = match subscribed {
            Ok(subscription) => subscription,
            Err(StreamingError::Closed) => break,
            // Lost while subscribing: the next session will do.
            Err(StreamingError::SessionLost) => continue,
            Err(e) => {
                return Err(BusError::Consumer {
                    consumer: name,
                    source: e.into(),
                });
            }
        };
        tracing::info!(consumer = %name, channel = %spec.channel, "listening");
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    open = Some(subscription);
                    break 'subscribe;
                }
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    open = Some(subscription);
                    break 'subscribe;
                }
                next = subscription.next() => next,
            };
            let Some(delivery) = next else {
                tracing::info!(consumer = %name, "the NATS Streaming session was lost; subscribing again on the next one");
                break;
            };
            let sequence = delivery.sequence;
            if !sequences_in_hand
                .lock()
                .expect("in-hand lock")
                .insert(sequence)
            {
                tracing::debug!(consumer = %name, sequence, "sent again while still in hand; skipped");
                continue;
            }
            let (listener, options, shutdown, sequences_in_hand) = (
                listener.clone(),
                options.clone(),
                shutdown.clone(),
                sequences_in_hand.clone(),
            );
            in_hand.spawn(async move {
                handle(&*listener, &StreamingMessage(delivery), &options, &shutdown).await;
                sequences_in_hand
                    .lock()
                    .expect("in-hand lock")
                    .remove(&sequence);
                drop(permit);
            });
            while let Some(done) = in_hand.try_join_next() {
                log_join_error(&name, done);
            }
        }
    }
    while let Some(done) = in_hand.join_next().await {
        log_join_error(&name, done);
    }
    if let Some(subscription) = open {
        subscription.close().await;
    }
    tracing::info!(consumer = %name, "stopped");
    Ok(())
}

/// A NATS Streaming delivery as the runner handles it.
struct StreamingMessage(Delivery);

impl Received for StreamingMessage {
    fn payload(&self) -> &[u8] {
        &self.0.data
    }

    fn info(&self) -> MessageInfo {
        MessageInfo {
            stream_sequence: self.0.sequence,
            delivered: self.0.delivered(),
        }
    }

    /// Handled or dropped for good: acked. To be delivered again: left unacked, so that the
    /// server sends it again after the ack wait (the protocol has no negative ack).
    async fn settle(&self, how: Settle) {
        match how {
            Settle::Ack | Settle::Term => {
                if let Err(e) = self.0.ack().await {
                    tracing::warn!(error = %e, "cannot send the ack; the message will be redelivered");
                }
            }
            Settle::Retry(_) | Settle::Release => {}
        }
    }

    async fn in_progress(&self) {}
}
