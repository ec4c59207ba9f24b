mod jetstream;
mod streaming;

pub use jetstream::run_listener;
pub(crate) use streaming::run_streaming_listener;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Bus, BusMetrics, StreamSpec};
use crate::telemetry::{ErrorChain, truncate};
use crate::{Event, Subject};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Handles one kind of event for one queue group, on either transport: the handler never knows
/// which. The runner ([`supervise`]) owns acknowledgement: `Ok` acks; [`HandlerError::Retry`]
/// has the message delivered again later (JetStream: a nak with backoff; NATS Streaming: left
/// unacked, so the server sends it again after the ack wait) and gives up after
/// [`ListenerOptions::max_deliveries`]; [`HandlerError::Unavailable`] keeps the message and
/// tries again with backoff until the dependency answers; [`HandlerError::Reject`] drops it for
/// good (JetStream: terminated; NATS Streaming: acked).
/// Events that fail [`Event::validate`] never reach the handler. A handler never acks by hand,
/// and must be idempotent: delivery is at least once.
pub trait Listener: Send + Sync + 'static {
    /// The event this listener consumes; its subject is the consumer's filter.
    type Event: Event;
    /// The queue group: every replica of a service shares one durable consumer per subject.
    const QUEUE_GROUP: &'static str;

    /// Handles one event.
    fn on_message(
        &self,
        event: Self::Event,
        info: MessageInfo,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Where a message sits in the stream.
#[derive(Debug, Clone, Copy)]
pub struct MessageInfo {
    /// Sequence of the message in the stream (NATS Streaming: in its channel).
    pub stream_sequence: u64,
    /// How many times it has been delivered, this time included (1 the first time).
    pub delivered: u64,
}

/// Why a handler did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event cannot be applied yet (an earlier version is missing): redeliver after backoff,
    /// and give up after [`ListenerOptions::max_deliveries`] deliveries.
    #[error("will retry")]
    Retry(#[source] BoxError),
    /// A dependency (database, Redis) failed: nothing is wrong with the event. The runner keeps
    /// the message and calls the handler again after a backoff, for as long as it takes; these
    /// attempts do not count as deliveries.
    #[error("dependency unavailable")]
    Unavailable(#[source] BoxError),
    /// Can never succeed: stop redelivering and log it.
    #[error("rejected")]
    Reject(#[source] BoxError),
}

impl HandlerError {
    /// The event cannot be applied yet; worth a later delivery.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        HandlerError::Retry(error.into())
    }

    /// A dependency failed; the same event will do once it answers again.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        HandlerError::Unavailable(error.into())
    }

    /// A failure no retry can mend.
    pub fn reject(error: impl Into<BoxError>) -> Self {
        HandlerError::Reject(error.into())
    }
}

/// Exponential redelivery delay after a retryable failure: `initial`, doubled per delivery,
/// capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before the next delivery of a message that has failed `delivered` times.
    pub fn delay(&self, delivered: u64) -> Duration {
        let doublings = delivered.saturating_sub(1).min(30) as u32;
        self.initial
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// How a runner consumes.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// The stream to consume from.
    pub stream: StreamSpec,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Most messages handled at once by this runner (and fetched ahead of handling).
    pub max_in_flight: usize,
    /// NATS Streaming only: most messages its handler could not apply yet
    /// ([`HandlerError::Retry`]) left unacked while they wait for the server to send them again
    /// after the ack wait. They do not hold one of the `max_in_flight` handling slots, but they
    /// count against what the server may send unacked, so the subscription asks for
    /// `max_in_flight + max_waiting`. Past it, the message waiting longest is given up: acked,
    /// logged with its sequence, counted as `gave_up`. JetStream needs no such bound: a nak'd
    /// message is not held at all, and its consumer has no limit of pending acks.
    pub max_waiting: usize,
    /// Redelivery delay after a retryable failure ([`HandlerError::Retry`]).
    pub backoff: Backoff,
    /// Delay between attempts while a dependency is unavailable ([`HandlerError::Unavailable`]):
    /// short, so that a held message goes through soon after the dependency is back.
    pub unavailable_backoff: Backoff,
    /// Longest one call of the handler may take; past it the call is abandoned and counts as
    /// [`HandlerError::Unavailable`] (a frozen database never answers). Below `ack_wait`, so
    /// the server never redelivers a message whose handler is still running.
    pub handler_timeout: Duration,
    /// Deliveries after which an event its handler still cannot apply ([`HandlerError::Retry`])
    /// is given up: terminated, logged once with its key, counted as `gave_up`.
    pub max_deliveries: u64,
    /// Counters to update, if the service exposes them.
    pub metrics: Option<BusMetrics>,
}

/// Default of [`ListenerOptions::max_deliveries`]: with the default backoff (1 s doubling to
/// 60 s), about 14 minutes of retries.
pub const DEFAULT_MAX_DELIVERIES: u64 = 20;

/// Default of [`ListenerOptions::max_waiting`]: with 32 handled at once, a NATS Streaming
/// subscription may have 288 messages unacked.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// Default of [`ListenerOptions::unavailable_backoff`]: 250 ms doubling to 2 s.
pub const UNAVAILABLE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(2),
};

impl ListenerOptions {
    /// Defaults of docs/contract.md §2.4 for `stream`: ack wait 5 s, handler timeout 4 s, 32 in
    /// flight, [`DEFAULT_MAX_WAITING`] waiting for a redelivery (NATS Streaming), given up after
    /// [`DEFAULT_MAX_DELIVERIES`].
    pub fn new(stream: StreamSpec) -> Self {
        ListenerOptions {
            stream,
            ack_wait: Duration::from_secs(5),
            max_in_flight: 32,
            max_waiting: DEFAULT_MAX_WAITING,
            backoff: Backoff::default(),
            unavailable_backoff: UNAVAILABLE_BACKOFF,
            handler_timeout: Duration::from_secs(4),
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            metrics: None,
        }
    }
}

/// The durable consumer name of (queue group, subject), e.g. `orders-service-ticket-created`.
pub fn consumer_name(queue_group: &str, subject: Subject) -> String {
    format!("{queue_group}-{}", subject.token())
}

/// Runs `listener` on `bus` until `shutdown`, starting it again whenever it stops on an error
/// (NATS away long enough for the consumer lookup or the subscribe to fail, the stream
/// recreated) or panics: each restart is logged with its cause and counted
/// (`listener_restarts_total`), after a pause growing from 200 ms to 5 s (back to 200 ms after
/// a run of more than 30 s). The service keeps serving meanwhile.
pub async fn supervise<L: Listener>(
    bus: Bus,
    listener: Arc<L>,
    options: ListenerOptions,
    shutdown: CancellationToken,
) {
    let name = consumer_name(L::QUEUE_GROUP, L::Event::SUBJECT);
    let mut pause = Duration::from_millis(200);
    loop {
        let started = tokio::time::Instant::now();
        let run = tokio::spawn({
            let (bus, listener, options, shutdown) = (
                bus.clone(),
                listener.clone(),
                options.clone(),
                shutdown.clone(),
            );
            async move { bus.run_listener(listener, &options, shutdown).await }
        });
        let cause = match run.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => ErrorChain(&e).to_string(),
            Err(e) if e.is_panic() => format!("panic: {}", panic_message(&*e.into_panic())),
            Err(e) => e.to_string(),
        };
        if shutdown.is_cancelled() {
            return;
        }
        // A listener that ran a good while before stopping starts again promptly.
        if started.elapsed() > Duration::from_secs(30) {
            pause = Duration::from_millis(200);
        }
        tracing::warn!(consumer = %name, cause = %truncate(&cause, LOGGED_BYTES), ?pause, "listener stopped; starting it again");
        if let Some(metrics) = &options.metrics {
            metrics.count_restart(&name);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Sleeps `pause` (then doubles it, up to 5 s); returns true if shutdown came first.
async fn sleep_or_shutdown(shutdown: &CancellationToken, pause: &mut Duration) -> bool {
    let slept = tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(*pause) => true,
    };
    *pause = (*pause * 2).min(Duration::from_secs(5));
    !slept
}

/// Handlers' panics are caught in [`handle`]; this reports anything else that ended a message's
/// task abnormally, which would be a bug of the runner itself.
fn log_join_error(consumer: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(%consumer, error = %e, "a message task failed; the message is redelivered after the ack wait");
    }
}

/// Longest text of an event or an error a log line carries: a hostile body cannot flood the log.
const LOGGED_BYTES: usize = 300;

/// How a runner ends a message's delivery; each transport maps it onto what its server offers.
#[derive(Debug, Clone, Copy)]
enum Settle {
    /// Handled: never deliver it again.
    Ack,
    /// Can never be handled (undecodable, invalid, rejected, given up): never deliver it again.
    Term,
    /// Deliver it again after about this delay.
    Retry(Duration),
    /// Shutting down with it in hand: deliver it again soon, to anyone.
    Release,
}

/// A message as a runner received it, whatever the transport.
trait Received: Send + Sync {
    fn payload(&self) -> &[u8];
    fn info(&self) -> MessageInfo;
    fn settle(&self, how: Settle) -> impl Future<Output = ()> + Send;
    /// Tells the server the message is still being worked on, where it can be told.
    fn in_progress(&self) -> impl Future<Output = ()> + Send;
}

/// Decodes, validates and hands one message to `listener`, then settles it by the outcome.
async fn handle<L: Listener, R: Received>(
    listener: &L,
    message: &R,
    options: &ListenerOptions,
    shutdown: &CancellationToken,
) {
    let subject = L::Event::SUBJECT;
    let count = |outcome: &str| {
        if let Some(metrics) = &options.metrics {
            metrics.count_handled(subject.as_str(), outcome);
        }
    };
    let info = message.info();
    let span = tracing::info_span!("message", %subject, seq = info.stream_sequence, delivered = info.delivered);
    async {
        let payload = message.payload();
        let head = || {
            let end = payload.len().min(LOGGED_BYTES);
            String::from_utf8_lossy(&payload[..end]).into_owned()
        };
        let event = match serde_json::from_slice::<L::Event>(payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %truncate(&e.to_string(), LOGGED_BYTES), body = %head(), "undecodable body; dropping it for good");
                count("undecodable");
                message.settle(Settle::Term).await;
                return;
            }
        };
        if let Err(invalid) = event.validate() {
            tracing::error!(error = %invalid, body = %head(), "invalid event; dropping it for good");
            count("invalid");
            message.settle(Settle::Term).await;
            return;
        }
        // Never as long as the ack wait: the server would redeliver a message still in hand.
        let handler_timeout = options.handler_timeout.min(options.ack_wait.mul_f64(0.8));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let call = AssertUnwindSafe(listener.on_message(event.clone(), info)).catch_unwind();
            let outcome = match tokio::time::timeout(handler_timeout, call).await {
                Ok(outcome) => outcome.unwrap_or_else(|panic| {
                    let message = panic_message(&*panic);
                    tracing::error!(panic = %truncate(&message, LOGGED_BYTES), "handler panicked; the message will be redelivered");
                    count("panic");
                    Err(HandlerError::Retry(format!("handler panicked: {message}").into()))
                }),
                // Handlers are idempotent, so abandoning one half-way and calling it again is safe.
                Err(_) => Err(HandlerError::Unavailable(
                    format!("no answer within {handler_timeout:?}").into(),
                )),
            };
            match outcome {
                Ok(()) => {
                    count("ack");
                    message.settle(Settle::Ack).await;
                }
                Err(HandlerError::Retry(e)) if info.delivered >= options.max_deliveries => {
                    tracing::error!(
                        message_id = %truncate(&event.message_id(), LOGGED_BYTES),
                        error = %truncate(&ErrorChain(&*e).to_string(), LOGGED_BYTES),
                        max_deliveries = options.max_deliveries,
                        "giving up on an event its handler still cannot apply; dropping it for good"
                    );
                    count("gave_up");
                    message.settle(Settle::Term).await;
                }
                Err(HandlerError::Retry(e)) => {
                    let delay = options.backoff.delay(info.delivered);
                    tracing::warn!(error = %truncate(&ErrorChain(&*e).to_string(), LOGGED_BYTES), ?delay, "handler failed; the message will be redelivered");
                    count("retry");
                    message.settle(Settle::Retry(delay)).await;
                }
                Err(HandlerError::Unavailable(e)) => {
                    let delay = options.unavailable_backoff.delay(attempt);
                    tracing::warn!(error = %truncate(&ErrorChain(&*e).to_string(), LOGGED_BYTES), ?delay, attempt, "a dependency is unavailable; keeping the message and trying again");
                    count("unavailable");
                    if hold(message, delay, options.ack_wait, shutdown).await {
                        continue;
                    }
                    // Shutting down: another replica, or the next start, takes it.
                    message.settle(Settle::Release).await;
                }
                Err(HandlerError::Reject(e)) => {
                    tracing::error!(error = %truncate(&ErrorChain(&*e).to_string(), LOGGED_BYTES), "handler rejected the event; dropping it for good");
                    count("reject");
                    message.settle(Settle::Term).await;
                }
            }
            return;
        }
    }
    .instrument(span)
    .await
}

/// The text a panic carried, if it was a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Keeps `message` in hand for `delay` (telling the server the work is in progress, so it does
/// not redeliver it meanwhile, where it can); false if `shutdown` came first.
async fn hold<R: Received>(
    message: &R,
    delay: Duration,
    ack_wait: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        message.in_progress().await;
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(left.min(ack_wait / 2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_delivery_up_to_its_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let delays: Vec<_> = (1..=5).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        assert_eq!(backoff.delay(0), Duration::from_millis(500));
        assert_eq!(backoff.delay(u64::MAX), Duration::from_secs(3));
    }

    #[test]
    fn consumer_names_hold_no_characters_nats_forbids() {
        assert_eq!(
            consumer_name("orders-service", Subject::TicketUpdated),
            "orders-service-ticket-updated"
        );
    }
}
