//! The listener runner on JetStream: a durable pull consumer per (queue group, subject).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{FromConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    BoxError, Listener, ListenerOptions, MessageInfo, Received, Settle, consumer_name, handle,
    log_join_error, sleep_or_shutdown,
};
use crate::Event;
use crate::bus::BusError;
use crate::telemetry::ErrorChain;

/// Runs `listener` until `shutdown` is cancelled: creates (or joins) the durable pull consumer for
/// its queue group and subject, delivering everything from the start of the stream, and handles
/// up to `max_in_flight` messages at once. On shutdown it takes no new message, lets the ones in
/// hand finish and be acknowledged, then returns. Messages fetched but not yet started are
/// redelivered after the ack wait.
pub async fn run_listener<L: Listener>(
    js: &jetstream::Context,
    listener: Arc<L>,
    options: &ListenerOptions,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let subject = L::Event::SUBJECT;
    let name = consumer_name(L::QUEUE_GROUP, subject);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: options.stream.subject(subject),
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_ack_pending: UNLIMITED_ACK_PENDING,
        ..Default::default()
    };
    let consumer_error = |source: BoxError| BusError::Consumer {
        consumer: name.clone(),
        source,
    };
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let mut in_hand = JoinSet::new();
    let mut pause = Duration::from_millis(100);

    'connect: while !shutdown.is_cancelled() {
        let stream = js
            .get_stream(&options.stream.name)
            .await
            .map_err(|e| consumer_error(e.into()))?;
        let consumer = durable_consumer(&stream, &name, &config)
            .await
            .map_err(consumer_error)?;
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(options.max_in_flight.max(1))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(consumer = %name, error = %ErrorChain(&e), "cannot pull; trying again");
                if sleep_or_shutdown(&shutdown, &mut pause).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!(consumer = %name, %subject, "listening");

        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'connect,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'connect,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    pause = Duration::from_millis(100);
                    let listener = listener.clone();
                    let options = options.clone();
                    let shutdown = shutdown.clone();
                    in_hand.spawn(async move {
                        match JetStreamMessage::new(message).await {
                            Some(message) => {
                                handle(&*listener, &message, &options, &shutdown).await
                            }
                            None => {
                                if let Some(metrics) = &options.metrics {
                                    metrics
                                        .count_handled(L::Event::SUBJECT.as_str(), "undecodable");
                                }
                            }
                        }
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(consumer = %name, error = %ErrorChain(&e), "pull interrupted; resuming");
                    break;
                }
                None => break,
            }
            while let Some(done) = in_hand.try_join_next() {
                log_join_error(&name, done);
            }
        }
        if sleep_or_shutdown(&shutdown, &mut pause).await {
            break;
        }
    }
    while let Some(done) = in_hand.join_next().await {
        log_join_error(&name, done);
    }
    tracing::info!(consumer = %name, "stopped");
    Ok(())
}

/// `max_ack_pending` without a limit. Messages nak'd with a delay (waiting for an earlier
/// version) stay pending until they are acked or terminated; with the server's default limit
/// (1,000) a flood of them would stop the consumer from delivering anything else, the events
/// they wait for included. What this runner holds at once is bounded by `max_in_flight` instead.
const UNLIMITED_ACK_PENDING: i64 = -1;

/// The durable consumer `name`, created with `config` if missing. One that an earlier version
/// created with a limit of pending acks (the server's default) is updated in place to
/// [`UNLIMITED_ACK_PENDING`], keeping the rest of its configuration and its position; if the
/// server refuses the update, it is used as it is, with a warning.
async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    config: &pull::Config,
) -> Result<jetstream::consumer::PullConsumer, BoxError> {
    let consumer: jetstream::consumer::PullConsumer =
        stream.get_or_create_consumer(name, config.clone()).await?;
    let limit = consumer.cached_info().config.max_ack_pending;
    if limit == config.max_ack_pending {
        return Ok(consumer);
    }
    let mut unlimited = consumer.cached_info().config.clone();
    unlimited.max_ack_pending = config.max_ack_pending;
    let unlimited = <pull::Config as FromConsumer>::try_from_consumer_config(unlimited)?;
    match stream.create_consumer(unlimited).await {
        Ok(updated) => {
            tracing::info!(consumer = %name, from = limit, to = config.max_ack_pending, "consumer's limit of pending acks lifted");
            Ok(updated)
        }
        Err(e) => {
            tracing::warn!(consumer = %name, max_ack_pending = limit, error = %ErrorChain(&e), "cannot lift the consumer's limit of pending acks; a flood of messages waiting for a redelivery may hold up the others");
            Ok(consumer)
        }
    }
}

/// Sends the acknowledgement and waits for the server to confirm it, so that a message reported
/// as acked is never delivered again. A lost ack only means a redelivery, which handlers absorb.
async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.double_ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "acknowledgement not confirmed; the message may be redelivered");
    }
}

/// A message of a JetStream consumer, with its delivery metadata.
struct JetStreamMessage {
    message: jetstream::Message,
    info: MessageInfo,
}

impl JetStreamMessage {
    /// `None` (after terminating it) for a message without JetStream metadata: not from a
    /// consumer, it can never be handled and must not come back.
    async fn new(message: jetstream::Message) -> Option<Self> {
        match message.info() {
            Ok(info) => {
                let info = MessageInfo {
                    stream_sequence: info.stream_sequence,
                    delivered: info.delivered.max(1) as u64,
                };
                Some(JetStreamMessage { message, info })
            }
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %e, "message without JetStream metadata; terminating it");
                acknowledge(&message, AckKind::Term).await;
                None
            }
        }
    }
}

impl Received for JetStreamMessage {
    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn info(&self) -> MessageInfo {
        self.info
    }

    async fn settle(&self, how: Settle) {
        let kind = match how {
            Settle::Ack => AckKind::Ack,
            Settle::Term => AckKind::Term,
            Settle::Retry(delay) => AckKind::Nak(Some(delay)),
            Settle::Release => AckKind::Nak(None),
        };
        acknowledge(&self.message, kind).await;
    }

    async fn in_progress(&self) {
        if let Err(e) = self.message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %e, "cannot extend the ack wait");
        }
    }
}
