//! The listener runner on NATS Streaming: a durable queue subscription per (queue group,
//! channel), subscribed again on every new session.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    Listener, ListenerOptions, MessageInfo, Received, Settle, consumer_name, handle, log_join_error,
};
use crate::Event;
use crate::bus::BusError;
use crate::bus::streaming::{AckHandle, Connection, Delivery, StreamingError, SubscriptionSpec};

/// Runs `listener` until `shutdown`: joins the durable queue group `L::QUEUE_GROUP` on its
/// subject's channel (created from the channel's first message if new) and handles up to
/// `max_in_flight` messages at once. When the session is lost it subscribes again on the next
/// one. On shutdown it takes no new message, lets the ones in hand finish and be acked, then
/// closes the subscription (the group stays on the server).
///
/// A message its handler cannot apply yet is left unacked for the server to send again after
/// the ack wait (the protocol has no negative ack). While it waits it holds no handling slot,
/// only its ack handle in [`Waiting`]; the server counts it among the unacked messages it may
/// hand us, so the subscription asks for `max_in_flight + max_waiting` of them. When more than
/// `max_waiting` wait, the one waiting longest is given up (acked), so that a flood of
/// messages waiting for a later delivery never stops the server from sending the others.
///
/// The server cannot be told that a message is still being worked on, so it sends a message
/// held for a dependency outage, or received and not yet started, again after the ack wait,
/// maybe to this runner: a second copy of a message already in hand is skipped (the copy in
/// hand acks the sequence).
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
        max_in_flight: options.max_in_flight.max(1) + options.max_waiting,
    };
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let held = Arc::new(Mutex::new(Held::<AckHandle>::new(options.max_waiting)));
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
        // The ack handles of the last subscription are of no use: the server handed what they
        // held back to the group when it dropped that member.
        held.lock().expect("held lock").waiting.clear();
        tracing::info!(consumer = %name, channel = %spec.channel, "listening");
        // Sent to us but not started yet: the server may hand us more than we handle at once
        // (room for those waiting for a redelivery), and keeps their ack wait running. They are
        // read as they come (up to its max in flight), so that a copy it sends again meanwhile
        // is recognised and skipped.
        let mut queued = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    open = Some(subscription);
                    break 'subscribe;
                }
                permit = permits.clone().acquire_owned(), if !queued.is_empty() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let delivery: Delivery = queued.pop_front().expect("a queued delivery");
                    let sequence = delivery.sequence;
                    let (listener, options, shutdown, held) = (
                        listener.clone(),
                        options.clone(),
                        shutdown.clone(),
                        held.clone(),
                    );
                    in_hand.spawn(async move {
                        let message = StreamingMessage::new(delivery);
                        handle(&*listener, &message, &options, &shutdown).await;
                        // Waiting before leaving the hand: a copy arriving in between is
                        // either skipped (still in hand) or finds its handle waiting and takes
                        // it out.
                        let given_up = held
                            .lock()
                            .expect("held lock")
                            .done(sequence, message.waits().then(|| message.0.ack_handle()));
                        // The handling slot is free whatever the outcome; a message waiting for
                        // its redelivery does not keep the others from being handled.
                        drop(permit);
                        if let Some((_, given_up)) = given_up {
                            give_up(&given_up, &options, L::Event::SUBJECT).await;
                        }
                    });
                }
                // Bounded: in a queue group the server hands a message whose ack wait ran out
                // to another member and counts it as acked here, then sends this one more; past
                // the subscription's max in flight, further deliveries stay in the client's
                // bounded buffer (and what it drops, the server sends again).
                next = subscription.next(), if queued.len() < spec.max_in_flight => {
                    let Some(delivery) = next else {
                        tracing::info!(consumer = %name, "the NATS Streaming session was lost; subscribing again on the next one");
                        break;
                    };
                    let sequence = delivery.sequence;
                    if held.lock().expect("held lock").take_in_hand(sequence) {
                        queued.push_back(delivery);
                    } else {
                        tracing::debug!(consumer = %name, sequence, "sent again while still in hand; skipped");
                    }
                }
            }
            while let Some(done) = in_hand.try_join_next() {
                log_join_error(&name, done);
            }
        }
        // Not started: the server hands them to the group again.
        let mut guard = held.lock().expect("held lock");
        for delivery in queued {
            guard.done(delivery.sequence, None);
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

/// Sequences of a subscription the runner holds: those in hand (being handled, or received and
/// waiting for a handling slot), and those waiting for the server to send them again, with what
/// acks them (`H`: an [`AckHandle`]).
struct Held<H> {
    in_hand: HashSet<u64>,
    waiting: Waiting<H>,
}

impl<H> Held<H> {
    fn new(max_waiting: usize) -> Self {
        Held {
            in_hand: HashSet::new(),
            waiting: Waiting::new(max_waiting),
        }
    }

    /// Takes a delivery of `sequence` in hand (out of waiting, if it waited); false if a copy is
    /// in hand already.
    fn take_in_hand(&mut self, sequence: u64) -> bool {
        if !self.in_hand.insert(sequence) {
            return false;
        }
        self.waiting.remove(sequence);
        true
    }

    /// `sequence` is no longer in hand; `waits` is what acks it if it now waits for a
    /// redelivery. Returns the message given up to make room, if any.
    fn done(&mut self, sequence: u64, waits: Option<H>) -> Option<(u64, H)> {
        let given_up = waits.and_then(|handle| self.waiting.push(sequence, handle));
        self.in_hand.remove(&sequence);
        given_up
    }
}

/// Messages left unacked for a redelivery, in the order they began to wait; at most `capacity`.
struct Waiting<H> {
    capacity: usize,
    queue: VecDeque<(u64, H)>,
}

impl<H> Waiting<H> {
    fn new(capacity: usize) -> Self {
        Waiting {
            capacity,
            queue: VecDeque::new(),
        }
    }

    /// Adds `sequence` (last); returns the one waiting longest if that makes one too many.
    fn push(&mut self, sequence: u64, handle: H) -> Option<(u64, H)> {
        self.remove(sequence);
        self.queue.push_back((sequence, handle));
        if self.queue.len() > self.capacity {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Takes `sequence` out: it was sent again. A linear search, over at most `capacity`.
    fn remove(&mut self, sequence: u64) {
        if let Some(at) = self.queue.iter().position(|(s, _)| *s == sequence) {
            self.queue.remove(at);
        }
    }

    fn clear(&mut self) {
        self.queue.clear();
    }
}

/// Gives up a message pushed out of [`Waiting`]: acks it (never sent again), logs and counts it.
async fn give_up(handle: &AckHandle, options: &ListenerOptions, subject: crate::Subject) {
    tracing::error!(
        %subject,
        seq = handle.sequence,
        max_waiting = options.max_waiting,
        "giving up on an event its handler cannot apply yet: more than max_waiting wait for a redelivery, this one longest; dropping it for good"
    );
    if let Some(metrics) = &options.metrics {
        metrics.count_handled(subject.as_str(), "gave_up");
    }
    if let Err(e) = handle.ack().await {
        tracing::warn!(seq = handle.sequence, error = %e, "cannot send the ack; the message will be redelivered");
    }
}

/// A NATS Streaming delivery as the runner handles it, and whether it was left to wait for a
/// redelivery.
struct StreamingMessage(Delivery, AtomicBool);

impl StreamingMessage {
    fn new(delivery: Delivery) -> Self {
        StreamingMessage(delivery, AtomicBool::new(false))
    }

    /// Settled with [`Settle::Retry`]: left unacked for the server to send again.
    fn waits(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
}

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
            Settle::Retry(_) => self.1.store(true, Ordering::Relaxed),
            Settle::Release => {}
        }
    }

    async fn in_progress(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sequences waiting, longest waiting first.
    fn waiting(held: &Held<()>) -> Vec<u64> {
        held.waiting.queue.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn past_its_capacity_the_longest_waiting_is_pushed_out_and_a_redelivery_leaves() {
        let mut held = Held::new(2);
        for sequence in 1..=3 {
            assert!(held.take_in_hand(sequence));
        }
        assert!(!held.take_in_hand(2), "a copy of one in hand");
        assert_eq!(held.done(1, Some(())), None);
        assert_eq!(held.done(2, Some(())), None);
        assert_eq!(
            held.done(3, Some(())),
            Some((1, ())),
            "the one waiting longest"
        );
        assert_eq!(waiting(&held), [2, 3]);
        // 2 is sent again: in hand, no longer waiting; handled, it leaves for good.
        assert!(held.take_in_hand(2));
        assert_eq!(waiting(&held), [3]);
        assert_eq!(held.done(2, None), None);
        assert_eq!(waiting(&held), [3]);
        assert!(held.in_hand.is_empty());
    }

    #[test]
    fn with_no_room_to_wait_a_message_is_given_up_at_once() {
        let mut held = Held::new(0);
        assert!(held.take_in_hand(7));
        assert_eq!(held.done(7, Some(())), Some((7, ())));
    }
}
