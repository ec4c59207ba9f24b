//! The bus against the real servers of the local stack (`scripts/stack up`): NATS with
//! JetStream, and NATS Streaming (`STAN_URL`). The listener's behaviours are checked on both
//! transports (`jetstream::*` and `streaming::*`); what only one transport has (JetStream's
//! de-duplication and stream set-up; a NATS Streaming session lost and rebuilt) on that one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Subject;
use common::bus::{
    Backoff, Bus, BusMetrics, HandlerError, Listener, ListenerOptions, MessageInfo, Transport,
    consumer_name,
};
use common::events::{ExpirationComplete, OrderCancelled, OrderCancelledTicket, TicketCreated};
use common::testing::{StanServer, TestBus, TestChannels, TestStream, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records what it handled; fails the first `failures` deliveries of each event, answers the
/// first `outage` calls as if its database were down, never answers the first `hangs` calls (as
/// with a frozen database), panics in the first `panics` calls, and takes `delay` per message.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<(String, MessageInfo, Instant)>>,
    failures: u64,
    outage: AtomicU64,
    hangs: AtomicU64,
    panics: AtomicU64,
    delay: Duration,
}

impl Recorder {
    fn ids(&self) -> Vec<String> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect()
    }
}

impl Listener for Recorder {
    type Event = ExpirationComplete;
    const QUEUE_GROUP: &'static str = "test-service";

    async fn on_message(
        &self,
        event: ExpirationComplete,
        info: MessageInfo,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(self.delay).await;
        self.handled
            .lock()
            .unwrap()
            .push((event.order_id.clone(), info, Instant::now()));
        let take = |counter: &AtomicU64| {
            counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
        };
        if take(&self.outage) {
            return Err(HandlerError::unavailable("database down"));
        }
        if take(&self.hangs) {
            std::future::pending::<()>().await;
        }
        if take(&self.panics) {
            panic!("a bug in the handler");
        }
        if info.delivered <= self.failures {
            return Err(HandlerError::retry("not yet"));
        }
        Ok(())
    }
}

/// What the tests below ask of it about the recorder's group.
trait RecorderGroup {
    async fn pending(&self) -> u64;
    async fn all_acked(&self);
    /// Messages the server sent more than once (JetStream counts them; on NATS Streaming the
    /// recorder's `delivered` shows it instead).
    async fn redelivered(&self) -> Option<u64>;
}

impl RecorderGroup for TestBus {
    async fn pending(&self) -> u64 {
        self.pending_acks(Subject::ExpirationComplete, Recorder::QUEUE_GROUP)
            .await
    }

    async fn all_acked(&self) {
        TestBus::all_acked(self, Subject::ExpirationComplete, Recorder::QUEUE_GROUP).await
    }

    async fn redelivered(&self) -> Option<u64> {
        match self {
            TestBus::JetStream(stream) => Some(consumer_info(stream).await.num_redelivered as u64),
            TestBus::Streaming(_) => None,
        }
    }
}

fn options(under: &TestBus) -> ListenerOptions {
    let mut options = ListenerOptions::new(under.spec().clone());
    options.ack_wait = Duration::from_secs(2);
    options
}

/// [`options`] with a backoff from `initial` to `max` milliseconds, and counters to read.
fn counted_options(under: &TestBus, initial: u64, max: u64) -> (ListenerOptions, BusMetrics) {
    let mut options = options(under);
    options.backoff = Backoff {
        initial: Duration::from_millis(initial),
        max: Duration::from_millis(max),
    };
    options.unavailable_backoff = options.backoff;
    let metrics = BusMetrics::default();
    options.metrics = Some(metrics.clone());
    (options, metrics)
}

/// Stops the runner, waits for it, and deletes the stream.
async fn finish(under: TestBus, shutdown: CancellationToken, task: JoinHandle<()>) {
    shutdown.cancel();
    task.await.unwrap();
    under.delete().await;
}

fn start<L: Listener>(
    under: &TestBus,
    listener: Arc<L>,
    options: ListenerOptions,
) -> (CancellationToken, JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let bus = under.bus();
    let token = shutdown.clone();
    let task =
        tokio::spawn(async move { bus.run_listener(listener, &options, token).await.unwrap() });
    (shutdown, task)
}

fn ticket_created() -> TicketCreated {
    TicketCreated {
        id: format!("{:024x}", 1),
        version: 0,
        title: "t".into(),
        price: 1.5,
        user_id: format!("{:024x}", 2),
    }
}

fn expiration(n: usize) -> ExpirationComplete {
    ExpirationComplete {
        order_id: format!("{n:024x}"),
    }
}

/// The consumer's state; `None` until the runner has created it.
async fn try_consumer_info(stream: &TestStream) -> Option<async_nats::jetstream::consumer::Info> {
    let name = consumer_name(Recorder::QUEUE_GROUP, Subject::ExpirationComplete);
    let js_stream = stream.js.get_stream(&stream.spec.name).await.ok()?;
    js_stream.consumer_info(name).await.ok()
}

async fn consumer_info(stream: &TestStream) -> async_nats::jetstream::consumer::Info {
    try_consumer_info(stream)
        .await
        .expect("the consumer exists")
}

/// Runs each listed test on both transports: `jetstream::<name>` and `streaming::<name>`.
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        mod jetstream {
            $(#[tokio::test]
            async fn $name() {
                super::$name(common::bus::Transport::JetStream).await
            })*
        }
        mod streaming {
            $(#[tokio::test]
            async fn $name() {
                super::$name(common::bus::Transport::Streaming).await
            })*
        }
    };
}

on_both_transports!(
    a_published_event_reaches_the_handler_typed,
    two_runners_in_one_queue_group_split_the_messages,
    a_restarted_runner_resumes_after_the_last_acked_message,
    a_failed_handler_is_redelivered_after_the_backoff_not_before,
    a_poison_body_is_dropped_and_the_messages_after_it_still_flow,
    an_event_still_not_applicable_after_the_delivery_limit_is_given_up_and_counted,
    a_dependency_outage_keeps_the_message_without_using_up_its_deliveries,
    a_handler_that_never_answers_is_abandoned_and_called_again_without_a_redelivery,
    a_message_whose_handler_panicked_is_redelivered_and_the_listener_keeps_going,
    invalid_events_are_dropped_before_they_reach_the_handler,
    shutdown_lets_the_message_in_hand_finish_and_be_acked,
    a_listener_sees_only_its_own_subject,
    a_flood_of_events_waiting_for_a_later_delivery_does_not_hold_up_the_others,
);

async fn a_published_event_reaches_the_handler_typed(kind: Transport) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    under.publish(&expiration(7)).await;
    eventually(Duration::from_secs(10), "the event", || async {
        recorder.ids().len() == 1
    })
    .await;
    assert_eq!(recorder.ids(), [expiration(7).order_id]);
    // On the wire: the event's JSON, no envelope.
    let bodies: Vec<String> = match &under {
        TestBus::JetStream(stream) => stream.bodies(Subject::ExpirationComplete).await,
        TestBus::Streaming(channels) => {
            let log = channels.log().await;
            log.wait_until(Duration::from_secs(5), "the message", |all| !all.is_empty())
                .await;
            log.all().into_iter().map(|logged| logged.body).collect()
        }
    };
    assert_eq!(bodies, [r#"{"orderId":"000000000000000000000007"}"#]);
    finish(under, shutdown, task).await;
}

async fn two_runners_in_one_queue_group_split_the_messages(kind: Transport) {
    let under = TestBus::new(kind).await;
    let mut opts = options(&under);
    opts.max_in_flight = 1;
    let first = Arc::new(Recorder {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let second = Arc::new(Recorder {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let (stop_first, first_task) = start(&under, first.clone(), opts.clone());
    let (stop_second, second_task) = start(&under, second.clone(), opts);
    // Both members in the group before anything arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..60 {
        under.publish(&expiration(n)).await;
    }
    eventually(Duration::from_secs(20), "60 messages handled", || async {
        first.ids().len() + second.ids().len() >= 60
    })
    .await;
    // Give a wrongly redelivered message time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all: Vec<String> = first.ids().into_iter().chain(second.ids()).collect();
    assert!(
        !first.ids().is_empty() && !second.ids().is_empty(),
        "one runner got nothing: {} / {}",
        first.ids().len(),
        second.ids().len()
    );
    all.sort();
    let expected: Vec<String> = (0..60).map(|n| expiration(n).order_id).collect();
    assert_eq!(all, expected, "every message exactly once");
    stop_first.cancel();
    stop_second.cancel();
    first_task.await.unwrap();
    second_task.await.unwrap();
    under.delete().await;
}

async fn a_restarted_runner_resumes_after_the_last_acked_message(kind: Transport) {
    let under = TestBus::new(kind).await;
    let before = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, before.clone(), options(&under));
    for n in 0..5 {
        under.publish(&expiration(n)).await;
    }
    eventually(Duration::from_secs(10), "the first five", || async {
        before.ids().len() == 5
    })
    .await;
    RecorderGroup::all_acked(&under).await;
    shutdown.cancel();
    task.await.unwrap();

    for n in 5..10 {
        under.publish(&expiration(n)).await;
    }
    let after = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, after.clone(), options(&under));
    eventually(Duration::from_secs(10), "the next five", || async {
        after.ids().len() == 5
    })
    .await;
    // Past the 2 s ack wait: anything acked that came back, or anything unacked, shows up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expected: Vec<String> = (5..10).map(|n| expiration(n).order_id).collect();
    let mut got = after.ids();
    got.sort();
    assert_eq!(got, expected, "nothing lost, nothing acked handled twice");
    finish(under, shutdown, task).await;
}

/// JetStream redelivers after the backoff (a nak with a delay); NATS Streaming has no negative
/// ack, so it redelivers after the ack wait (2 s here), never before.
async fn a_failed_handler_is_redelivered_after_the_backoff_not_before(kind: Transport) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        failures: 1,
        ..Default::default()
    });
    let mut opts = options(&under);
    opts.backoff = Backoff {
        initial: Duration::from_millis(800),
        max: Duration::from_secs(5),
    };
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    under.publish(&expiration(1)).await;
    eventually(Duration::from_secs(10), "the redelivery", || async {
        recorder.ids().len() == 2
    })
    .await;
    let handled = recorder.handled.lock().unwrap().clone();
    let gap = handled[1].2 - handled[0].2;
    assert_eq!((handled[0].1.delivered, handled[1].1.delivered), (1, 2));
    let (earliest, latest) = match kind {
        Transport::JetStream => (Duration::from_millis(750), Duration::from_millis(2000)),
        Transport::Streaming => (Duration::from_millis(1900), Duration::from_millis(4000)),
    };
    assert!(
        gap >= earliest && gap < latest,
        "redelivered after {gap:?}, expected between {earliest:?} and {latest:?}"
    );
    RecorderGroup::all_acked(&under).await;
    finish(under, shutdown, task).await;
}

async fn a_poison_body_is_dropped_and_the_messages_after_it_still_flow(kind: Transport) {
    let under = TestBus::new(kind).await;
    under
        .publish_raw(Subject::ExpirationComplete, b"{not json")
        .await;
    under.publish(&expiration(2)).await;
    let recorder = Arc::new(Recorder::default());
    let (opts, metrics) = counted_options(&under, 1000, 60_000);
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    eventually(Duration::from_secs(10), "the good message", || async {
        recorder.ids().len() == 1
    })
    .await;
    // Past the 2 s ack wait: a poison message that was not dropped would be redelivered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    RecorderGroup::all_acked(&under).await;
    assert_eq!(under.redelivered().await.unwrap_or(0), 0);
    if let TestBus::JetStream(stream) = &under {
        assert_eq!(consumer_info(stream).await.ack_floor.stream_sequence, 2);
    }
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(
        metrics.handled_count(subject, "undecodable"),
        1,
        "dropped once, never redelivered"
    );
    assert_eq!(recorder.ids(), [expiration(2).order_id]);
    finish(under, shutdown, task).await;
}

async fn an_event_still_not_applicable_after_the_delivery_limit_is_given_up_and_counted(
    kind: Transport,
) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        failures: u64::MAX,
        ..Default::default()
    });
    let (mut opts, metrics) = counted_options(&under, 100, 200);
    opts.max_deliveries = 3;
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    under.publish(&expiration(4)).await;
    eventually(Duration::from_secs(15), "three deliveries", || async {
        recorder.ids().len() == 3
    })
    .await;
    // Past the 2 s ack wait: a message that was not dropped would come back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(recorder.ids().len(), 3, "no fourth delivery");
    RecorderGroup::all_acked(&under).await;
    if let TestBus::JetStream(stream) = &under {
        assert_eq!(consumer_info(stream).await.num_pending, 0);
    }
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(metrics.handled_count(subject, "retry"), 2);
    assert_eq!(metrics.handled_count(subject, "gave_up"), 1);
    finish(under, shutdown, task).await;
}

/// On NATS Streaming the server cannot be told the message is in hand, so it sends it again
/// after the ack wait; the runner skips that copy and the first one is handled and acked.
async fn a_dependency_outage_keeps_the_message_without_using_up_its_deliveries(kind: Transport) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        outage: AtomicU64::new(5),
        ..Default::default()
    });
    let (mut opts, metrics) = counted_options(&under, 300, 1000);
    // A limit of one delivery: an outage that counted would give the event up at once.
    opts.max_deliveries = 1;
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    under.publish(&expiration(5)).await;
    // Five failed attempts over about 4 s, longer than the 2 s ack wait, then success.
    eventually(Duration::from_secs(15), "six attempts", || async {
        recorder.ids().len() == 6
    })
    .await;
    let handled = recorder.handled.lock().unwrap().clone();
    assert!(
        handled.iter().all(|(_, info, _)| info.delivered == 1),
        "every attempt on the first delivery: {handled:?}"
    );
    RecorderGroup::all_acked(&under).await;
    // A copy sent meanwhile would be handled a seventh time if it were not skipped.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        recorder.ids().len(),
        6,
        "no copy of the held message handled"
    );
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(metrics.handled_count(subject, "ack"), 1);
    if kind == Transport::JetStream {
        assert_eq!(under.redelivered().await, Some(0));
    }
    finish(under, shutdown, task).await;
}

async fn a_handler_that_never_answers_is_abandoned_and_called_again_without_a_redelivery(
    kind: Transport,
) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        hangs: AtomicU64::new(2),
        ..Default::default()
    });
    let (mut opts, metrics) = counted_options(&under, 100, 200);
    opts.handler_timeout = Duration::from_millis(500);
    opts.max_deliveries = 1;
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    let started = Instant::now();
    under.publish(&expiration(6)).await;
    eventually(Duration::from_secs(10), "the third call", || async {
        recorder.ids().len() == 3
    })
    .await;
    // Two calls abandoned after 0.5 s each, with 0.1 s and 0.2 s between them.
    assert!(started.elapsed() >= Duration::from_millis(1300));
    RecorderGroup::all_acked(&under).await;
    let handled = recorder.handled.lock().unwrap().clone();
    assert!(handled.iter().all(|(_, info, _)| info.delivered == 1));
    assert_eq!(under.redelivered().await.unwrap_or(0), 0);
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(metrics.handled_count(subject, "unavailable"), 2);
    assert_eq!(metrics.handled_count(subject, "ack"), 1);
    finish(under, shutdown, task).await;
}

async fn a_message_whose_handler_panicked_is_redelivered_and_the_listener_keeps_going(
    kind: Transport,
) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        panics: AtomicU64::new(1),
        ..Default::default()
    });
    let (opts, metrics) = counted_options(&under, 100, 200);
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    under.publish(&expiration(8)).await;
    under.publish(&expiration(9)).await;
    let subject = Subject::ExpirationComplete.as_str();
    eventually(Duration::from_secs(10), "both acked", || async {
        metrics.handled_count(subject, "ack") == 2
    })
    .await;
    assert_eq!(metrics.handled_count(subject, "panic"), 1);
    // Three calls: the one that panicked, its redelivery, and the other event.
    let mut ids = recorder.ids();
    assert_eq!(ids.len(), 3, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids, [expiration(8).order_id, expiration(9).order_id]);
    RecorderGroup::all_acked(&under).await;
    finish(under, shutdown, task).await;
}

async fn invalid_events_are_dropped_before_they_reach_the_handler(kind: Transport) {
    let under = TestBus::new(kind).await;
    let huge = format!(r#"{{"orderId":"{}"}}"#, "a".repeat(500_000));
    for body in [r#"{"orderId":"not-an-object-id"}"#.to_owned(), huge] {
        under
            .publish_raw(Subject::ExpirationComplete, body.as_bytes())
            .await;
    }
    under.publish(&expiration(6)).await;
    let recorder = Arc::new(Recorder::default());
    let (opts, metrics) = counted_options(&under, 1000, 60_000);
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    eventually(Duration::from_secs(10), "the valid event", || async {
        recorder.ids().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(recorder.ids(), [expiration(6).order_id]);
    RecorderGroup::all_acked(&under).await;
    assert_eq!(under.redelivered().await.unwrap_or(0), 0);
    assert_eq!(
        metrics.handled_count(Subject::ExpirationComplete.as_str(), "invalid"),
        2,
        "each dropped once, never redelivered"
    );
    finish(under, shutdown, task).await;
}

async fn shutdown_lets_the_message_in_hand_finish_and_be_acked(kind: Transport) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(700),
        ..Default::default()
    });
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    under.publish(&expiration(3)).await;
    eventually(Duration::from_secs(10), "delivery", || async {
        match &under {
            TestBus::JetStream(stream) => try_consumer_info(stream)
                .await
                .is_some_and(|info| info.num_ack_pending == 1),
            TestBus::Streaming(_) => under.pending().await == 1,
        }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        recorder.ids().len(),
        1,
        "the handler finished before the runner returned"
    );
    match &under {
        TestBus::JetStream(stream) => assert_eq!(
            consumer_info(stream).await.num_ack_pending,
            0,
            "and its message was acked"
        ),
        // The group has no member left to report on: a new member must not get it again.
        TestBus::Streaming(_) => {
            let again = Arc::new(Recorder::default());
            let (shutdown, task) = start(&under, again.clone(), options(&under));
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(again.ids().is_empty(), "and its message was acked");
            shutdown.cancel();
            task.await.unwrap();
        }
    }
    under.delete().await;
}

async fn a_listener_sees_only_its_own_subject(kind: Transport) {
    let under = TestBus::new(kind).await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    under.publish(&ticket_created()).await;
    under.publish(&expiration(4)).await;
    eventually(Duration::from_secs(10), "the expiration", || async {
        recorder.ids().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorder.ids(),
        [expiration(4).order_id],
        "the ticket event never reached it"
    );
    finish(under, shutdown, task).await;
}

/// Answers "cannot apply yet" (an earlier version is missing) to every event but
/// [`LEGITIMATE`]'s, which it applies, noting when.
#[derive(Default)]
struct WaitsForEarlierVersions {
    applied: Mutex<Option<Instant>>,
}

/// The one event [`WaitsForEarlierVersions`] can apply.
const LEGITIMATE: usize = 0xbeef;

impl Listener for WaitsForEarlierVersions {
    type Event = ExpirationComplete;
    const QUEUE_GROUP: &'static str = "test-service";

    async fn on_message(
        &self,
        event: ExpirationComplete,
        _: MessageInfo,
    ) -> Result<(), HandlerError> {
        if event.order_id != expiration(LEGITIMATE).order_id {
            return Err(HandlerError::retry("an earlier version is missing"));
        }
        self.applied
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Events in the flood: more than JetStream's default limit of pending acks (1,000), and many
/// times what a NATS Streaming member may hold unacked.
const FLOOD: usize = 1_100;

/// With the default options, 1,100 events the handler cannot apply yet (each retried, as it
/// should be) are published, then one it can: it is handled within 2 s of its publish. Before,
/// the retried ones held every place the server allows unacked (JetStream: `max_ack_pending`,
/// 1,000; NATS Streaming: the subscription's max in flight, 32), and it waited minutes.
async fn a_flood_of_events_waiting_for_a_later_delivery_does_not_hold_up_the_others(
    kind: Transport,
) {
    let under = TestBus::new(kind).await;
    let listener = Arc::new(WaitsForEarlierVersions::default());
    let mut opts = ListenerOptions::new(under.spec().clone());
    let metrics = BusMetrics::default();
    opts.metrics = Some(metrics.clone());
    let (shutdown, task) = start(&under, listener.clone(), opts);
    let publisher = under.publisher();
    let flood = (0..FLOOD).map(|n| {
        let publisher = publisher.clone();
        async move { publisher.publish(&expiration(n)).await }
    });
    let flooded = futures::future::join_all(flood).await;
    assert!(flooded.iter().all(Result::is_ok), "every publish acked");
    let subject = Subject::ExpirationComplete.as_str();
    // The listener is taken up with the flood: every handling slot has had one.
    eventually(
        Duration::from_secs(10),
        "the flood being retried",
        || async { metrics.handled_count(subject, "retry") >= 32 },
    )
    .await;

    let published = Instant::now();
    under.publish(&expiration(LEGITIMATE)).await;
    let limit = Duration::from_secs(2);
    // Waits longer than the limit, so that the figure is seen either way.
    eventually(Duration::from_secs(10), "the legitimate event", || async {
        listener.applied.lock().unwrap().is_some()
    })
    .await;
    let took = listener.applied.lock().unwrap().unwrap() - published;
    println!(
        "{kind:?}: the legitimate event handled {took:?} after its publish, behind {FLOOD} waiting"
    );
    assert!(
        took < limit,
        "handled {took:?} after its publish, expected under {limit:?}"
    );
    match &under {
        // Nothing given up early: the flood goes on being retried, up to its delivery limit.
        TestBus::JetStream(stream) => {
            assert_eq!(metrics.handled_count(subject, "gave_up"), 0);
            assert_eq!(consumer_info(stream).await.config.max_ack_pending, -1);
        }
        // The server sent all 1,101 with at most 32 + 256 unacked: the rest were given up.
        TestBus::Streaming(_) => {
            let at_least = (FLOOD - 32 - common::bus::DEFAULT_MAX_WAITING) as u64;
            eventually(
                Duration::from_secs(5),
                "the flood given up but 288",
                || async { metrics.handled_count(subject, "gave_up") >= at_least },
            )
            .await;
        }
    }
    finish(under, shutdown, task).await;
}

/// The server may send a member more than it handles at once (room for messages waiting for a
/// redelivery), and sends again what is not acked within the ack wait, also a message still
/// waiting for a handling slot: that copy is skipped, so each message is handled once.
#[tokio::test]
async fn on_streaming_a_copy_sent_again_while_its_message_waits_for_a_handling_slot_is_skipped() {
    let under = TestBus::new(Transport::Streaming).await;
    // One handled at a time, 700 ms each; up to five sent unacked, so the last ones wait for
    // their slot past the 2 s ack wait and the server sends them again.
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(700),
        ..Default::default()
    });
    let mut opts = options(&under);
    opts.max_in_flight = 1;
    opts.max_waiting = 4;
    for n in 0..5 {
        under.publish(&expiration(n)).await;
    }
    let (shutdown, task) = start(&under, recorder.clone(), opts);
    eventually(Duration::from_secs(15), "five messages handled", || async {
        recorder.ids().len() >= 5
    })
    .await;
    RecorderGroup::all_acked(&under).await;
    // Past the ack wait again, and time for any copy read late to be handled.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ids = recorder.ids();
    ids.sort();
    let expected: Vec<String> = (0..5).map(|n| expiration(n).order_id).collect();
    assert_eq!(ids, expected, "each handled once");
    finish(under, shutdown, task).await;
}

/// A consumer created by an earlier version (with the server's default limit of 1,000 pending
/// acks) is updated in place: unlimited, and where it stood.
#[tokio::test]
async fn a_consumer_an_earlier_version_created_is_updated_in_place_to_unlimited_pending_acks() {
    let under = TestBus::new(Transport::JetStream).await;
    let TestBus::JetStream(stream) = &under else {
        unreachable!()
    };
    let name = consumer_name(Recorder::QUEUE_GROUP, Subject::ExpirationComplete);
    let js_stream = stream.js.get_stream(&stream.spec.name).await.unwrap();
    // As the earlier version created it.
    let earlier: async_nats::jetstream::consumer::PullConsumer = js_stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: stream.spec.subject(Subject::ExpirationComplete),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        earlier.cached_info().config.max_ack_pending,
        1000,
        "the server's default"
    );
    // The earlier version handled the first event.
    under.publish(&expiration(1)).await;
    let mut batch = earlier.fetch().max_messages(1).messages().await.unwrap();
    use futures::StreamExt;
    batch
        .next()
        .await
        .unwrap()
        .unwrap()
        .double_ack()
        .await
        .unwrap();

    under.publish(&expiration(2)).await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    eventually(Duration::from_secs(10), "the second event", || async {
        recorder.ids().len() == 1
    })
    .await;
    let info = consumer_info(stream).await;
    assert_eq!(info.config.max_ack_pending, -1, "updated in place");
    assert_eq!(
        recorder.ids(),
        [expiration(2).order_id],
        "from where it stood"
    );
    assert_eq!(
        info.created,
        earlier.cached_info().created,
        "the same consumer, not a new one"
    );
    finish(under, shutdown, task).await;
}

#[tokio::test]
async fn a_supervised_listener_that_cannot_start_is_started_again_until_it_can() {
    let under = TestBus::new(Transport::JetStream).await;
    let (mut opts, metrics) = counted_options(&under, 1000, 60_000);
    let TestBus::JetStream(stream) = under else {
        unreachable!()
    };
    let recorder = Arc::new(Recorder::default());
    // A stream that does not exist yet: the runner fails to set up its consumer.
    opts.stream.name = format!("{}-later", stream.spec.name);
    opts.stream.subject_prefix = format!("{}later.", stream.spec.subject_prefix);
    let shutdown = CancellationToken::new();
    let supervised = tokio::spawn(common::bus::supervise(
        Bus::jetstream(stream.js.clone(), stream.spec.clone()),
        recorder.clone(),
        opts.clone(),
        shutdown.clone(),
    ));
    let consumer = consumer_name(Recorder::QUEUE_GROUP, Subject::ExpirationComplete);
    let restarts = || {
        metrics
            .restarts
            .get_or_create(&common::bus::ConsumerLabels {
                consumer: consumer.clone(),
            })
            .get()
    };
    eventually(Duration::from_secs(10), "a restart", || async {
        restarts() >= 1
    })
    .await;
    common::bus::ensure_stream(&stream.js, &opts.stream)
        .await
        .unwrap();
    common::bus::Publisher::new(stream.js.clone(), opts.stream.clone(), None)
        .publish(&expiration(10))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the event once the stream exists",
        || async { recorder.ids() == [expiration(10).order_id] },
    )
    .await;
    shutdown.cancel();
    supervised.await.unwrap();
    let _ = stream.js.delete_stream(&opts.stream.name).await;
    stream.delete().await;
}

#[tokio::test]
async fn publishing_the_same_event_twice_stores_one_message() {
    let stream = TestStream::new().await;
    let publisher = stream.publisher();
    let event = OrderCancelled {
        id: format!("{:024x}", 9),
        version: 1,
        ticket: OrderCancelledTicket {
            id: format!("{:024x}", 8),
        },
    };
    let first = publisher.publish(&event).await.unwrap();
    let second = publisher.publish(&event).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let next = publisher
        .publish(&OrderCancelled {
            version: 2,
            ..event
        })
        .await
        .unwrap();
    assert!(!next.duplicate);
    assert_eq!(stream.events::<OrderCancelled>().await.len(), 2);
    stream.delete().await;
}

#[tokio::test]
async fn ensure_stream_adds_missing_subjects_to_a_stream_another_service_created() {
    let stream = TestStream::new().await;
    let spec = common::bus::StreamSpec {
        name: format!("{}-other", stream.spec.name),
        subject_prefix: format!("{}other.", stream.spec.subject_prefix),
        replicas: 1,
    };
    // The tickets service got there first, with its own subjects only.
    stream
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: spec.name.clone(),
            subjects: vec![
                spec.subject(Subject::TicketCreated),
                spec.subject(Subject::TicketUpdated),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    common::bus::ensure_stream(&stream.js, &spec).await.unwrap();
    common::bus::ensure_stream(&stream.js, &spec).await.unwrap();
    let info = stream
        .js
        .get_stream(&spec.name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    let mut subjects = info.config.subjects.clone();
    subjects.sort();
    let mut expected: Vec<String> = Subject::ALL.iter().map(|s| spec.subject(*s)).collect();
    expected.sort();
    assert_eq!(subjects, expected);
    let _ = stream.js.delete_stream(&spec.name).await;
    stream.delete().await;
}

#[tokio::test]
async fn a_new_stream_whose_subjects_another_stream_holds_names_that_stream_and_the_fix() {
    let stream = TestStream::new().await;
    // NATS_CLUSTER_ID changed, but the old stream still captures the same subjects.
    let renamed = common::bus::StreamSpec {
        name: format!("{}-renamed", stream.spec.name),
        subject_prefix: stream.spec.subject_prefix.clone(),
        replicas: 1,
    };
    let error = common::bus::ensure_stream(&stream.js, &renamed)
        .await
        .unwrap_err()
        .to_string();
    let holder = &stream.spec.name;
    assert!(
        error.contains(&format!("stream `{holder}` already does"))
            && error.contains(&format!("Set NATS_CLUSTER_ID={holder}"))
            && error.contains(&format!("`{}`", stream.spec.subject(Subject::OrderCreated))),
        "{error}"
    );
    stream.delete().await;
}

#[tokio::test]
async fn the_event_log_sees_every_subject_with_its_store_time() {
    let stream = TestStream::new().await;
    stream.publish(&expiration(5)).await;
    let log = stream.log().await;
    let before = chrono::Utc::now();
    stream.publish(&ticket_created()).await;
    log.wait_until(Duration::from_secs(5), "two messages", |all| all.len() == 2)
        .await;
    let all = log.all();
    assert_eq!(
        all.iter().map(|l| l.subject).collect::<Vec<_>>(),
        [Subject::ExpirationComplete, Subject::TicketCreated]
    );
    assert_eq!(log.events::<ExpirationComplete>()[0].0, expiration(5));
    let stored = all[1].stored_at;
    assert!(
        stored >= before - chrono::Duration::milliseconds(50) && stored <= chrono::Utc::now(),
        "stored at {stored}, published after {before}"
    );
    drop(log);
    stream.delete().await;
}

#[tokio::test]
async fn a_wait_on_the_event_log_that_times_out_says_what_the_log_and_the_consumers_hold() {
    let stream = TestStream::new().await;
    stream.publish(&expiration(5)).await;
    let log = stream.log().await;
    log.wait_until(Duration::from_secs(5), "one message", |all| all.len() == 1)
        .await;
    let panic = tokio::spawn(async move {
        log.wait_until_explained(
            Duration::from_millis(200),
            "a second message",
            |all| all.len() == 2,
            |all| format!("explained over {} messages", all.len()),
        )
        .await
    });
    let message = panic.await.expect_err("the wait times out").into_panic();
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.starts_with("timed out after 200ms waiting for a second message\n"),
        "{message}"
    );
    assert!(
        message.contains("the log holds: 1 expiration:complete"),
        "{message}"
    );
    assert!(
        message.contains(&format!("consumers of stream {}:", stream.spec.name)),
        "{message}"
    );
    assert!(message.contains("pending 0"), "{message}");
    assert!(message.ends_with("explained over 1 messages"), "{message}");
    stream.delete().await;
}

#[tokio::test]
async fn on_a_cluster_the_event_log_carries_on_within_seconds_when_the_server_holding_it_dies() {
    let mut nats = common::testing::clusters::NatsCluster::start(3).await;
    let stream = TestStream::replicated(&nats.url_list(), 3).await;
    stream.publish(&expiration(1)).await;

    // The log's consumer lives on one server: make one that lives elsewhere than the server
    // the client talks to (losing that one, the client would reconnect and pull again at once).
    let connected = stream.client.server_info().server_name;
    let mut tries = 0;
    let (log, server) = loop {
        let log = stream.log().await;
        let server = newest_consumer_server(&stream).await;
        if server != connected {
            break (log, server);
        }
        tries += 1;
        assert!(tries < 20, "every log's consumer was placed on {connected}");
    };
    log.wait_until(Duration::from_secs(10), "the first message", |all| {
        all.len() == 1
    })
    .await;
    nats.kill(nats.index_of(&server)).await;

    let publisher = stream.publisher();
    eventually(
        Duration::from_secs(20),
        "the stream taking a publish",
        || async { publisher.publish(&expiration(2)).await.is_ok() },
    )
    .await;
    let published = Instant::now();
    log.wait_until(
        Duration::from_secs(90),
        "the message published after the kill",
        |all| all.len() == 2,
    )
    .await;
    let seen = published.elapsed();
    println!(
        "server {server}, holding the log's consumer, killed: the log saw the next message {seen:?} after its publish"
    );
    assert!(
        seen < Duration::from_secs(5),
        "the log took {seen:?} to carry on without its consumer"
    );
    drop(log);
    stream.delete().await;
}

/// The server holding the consumer of `stream` created last.
async fn newest_consumer_server(stream: &TestStream) -> String {
    use futures::StreamExt;
    let js_stream = stream.js.get_stream(&stream.spec.name).await.unwrap();
    let infos: Vec<_> = js_stream.consumers().collect().await;
    infos
        .into_iter()
        .map(|info| info.expect("a consumer's info"))
        .max_by_key(|info| info.created)
        .and_then(|info| info.cluster)
        .and_then(|cluster| cluster.leader)
        .expect("a consumer in a cluster names its server")
}

/// `NatsConfig` as a service reads it from `pairs`.
fn nats_config(pairs: &[(&str, &str)]) -> common::bus::NatsConfig {
    #[derive(clap::Parser, Debug)]
    struct OnlyNats {
        #[command(flatten)]
        nats: common::bus::NatsConfig,
    }
    impl common::config::Settings for OnlyNats {}
    use common::config::Settings;
    OnlyNats::from_lookup(|name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .expect("valid settings")
    .nats
}

#[tokio::test]
async fn auto_chooses_streaming_where_a_streaming_server_answers_and_jetstream_elsewhere() {
    let stan = common::testing::stan_url();
    let nats = common::testing::nats_url();
    let bus = Bus::connect(&nats_config(&[("NATS_URL", &stan)]), "test")
        .await
        .unwrap();
    assert_eq!(bus.transport(), common::bus::Transport::Streaming);
    assert!(
        bus.describe().contains(
            "NATS_TRANSPORT=auto and a NATS Streaming server answers _STAN.discover.ticketing"
        ),
        "{}",
        bus.describe()
    );
    assert_eq!(bus.check()().await, Ok(()));
    bus.close().await;

    let name = common::testing::unique_name("auto");
    let prefix = format!("{name}.");
    let bus = Bus::connect(
        &nats_config(&[
            ("NATS_URL", &nats),
            ("NATS_CLUSTER_ID", &name),
            ("NATS_SUBJECT_PREFIX", &prefix),
        ]),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(bus.transport(), common::bus::Transport::JetStream);
    assert!(
        bus.describe().contains(&format!(
            "no NATS Streaming server answers _STAN.discover.{name}"
        )),
        "{}",
        bus.describe()
    );
    assert_eq!(bus.check()().await, Ok(()));
    let _ = async_nats::jetstream::new(bus.client().clone())
        .delete_stream(&name)
        .await;
    bus.close().await;
}

#[tokio::test]
async fn a_wrong_cluster_id_is_named_in_the_error() {
    let stan = common::testing::stan_url();
    let forced = Bus::connect(
        &nats_config(&[
            ("NATS_URL", &stan),
            ("NATS_CLUSTER_ID", "tickets"),
            ("NATS_TRANSPORT", "streaming"),
        ]),
        "test",
    )
    .await
    .err()
    .expect("no server answers for `tickets`")
    .to_string();
    assert!(
        forced.contains("cluster id `tickets`") && forced.contains("NATS_CLUSTER_ID"),
        "{forced}"
    );
    // The course's broker has no JetStream: auto cannot fall back to it either.
    let auto = Bus::connect(
        &nats_config(&[("NATS_URL", &stan), ("NATS_CLUSTER_ID", "tickets")]),
        "test",
    )
    .await
    .err()
    .expect("neither transport answers")
    .to_string();
    assert!(
        auto.contains("cluster id `tickets`") && auto.contains("JetStream cannot be used either"),
        "{auto}"
    );
    let bad_id = Bus::connect(
        &nats_config(&[
            ("NATS_URL", &stan),
            ("NATS_TRANSPORT", "streaming"),
            ("NATS_CLIENT_ID", "orders.depl"),
        ]),
        "test",
    )
    .await
    .err()
    .expect("a client id with a dot")
    .to_string();
    assert!(
        bad_id.contains("`orders.depl` cannot be a NATS Streaming client id"),
        "{bad_id}"
    );
}

#[tokio::test]
async fn many_publishes_wait_for_their_own_acks_at_once() {
    let channels = TestChannels::new().await;
    let publisher = channels.publisher();
    let started = Instant::now();
    let publishes = (0..2000).map(|n| {
        let publisher = publisher.clone();
        async move { publisher.publish(&expiration(n)).await }
    });
    let results = futures::future::join_all(publishes).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "every publish acked");
    let log = channels.log().await;
    log.wait_until(Duration::from_secs(10), "2000 messages", |all| {
        all.len() == 2000
    })
    .await;
    let mut ids: Vec<String> = log
        .events::<ExpirationComplete>()
        .into_iter()
        .map(|(event, _)| event.order_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2000, "each stored once");
    println!("2000 concurrent publishes acked in {elapsed:?}");
}

#[tokio::test]
async fn on_streaming_a_listener_subscribes_as_the_course_listener_does() {
    let under = TestBus::new(Transport::Streaming).await;
    // Published before anyone listens: "deliver all available" hands it over.
    under.publish(&expiration(1)).await;
    let recorder = Arc::new(Recorder::default());
    let defaults = ListenerOptions::new(under.spec().clone());
    let (shutdown, task) = start(&under, recorder.clone(), defaults);
    eventually(Duration::from_secs(10), "the earlier event", || async {
        recorder.ids().len() == 1
    })
    .await;
    let TestBus::Streaming(channels) = &under else {
        unreachable!()
    };
    let members = channels
        .subscriptions(Subject::ExpirationComplete, Recorder::QUEUE_GROUP)
        .await;
    assert_eq!(members.len(), 1, "{members:?}");
    let member = &members[0];
    // Durable name = queue group ("test-service:test-service"), ack wait 5 s, 288 unacked: 32
    // in hand, and up to 256 left unacked while they wait to be sent again (the course's
    // listener asks for 32; ours does not hold a handling slot for a message that waits).
    assert_eq!(
        (
            member["is_durable"].as_bool(),
            member["ack_wait"].as_u64(),
            member["max_inflight"].as_u64()
        ),
        (Some(true), Some(5), Some(288)),
        "{member}"
    );
    finish(under, shutdown, task).await;
}

#[tokio::test]
async fn a_client_id_whose_holder_is_gone_is_taken_over() {
    let url = common::testing::stan_url();
    let id = common::testing::unique_name("pod");
    let first = common::testing::channels::connect(&url, "ticketing", &id)
        .await
        .unwrap();
    // While the holder answers heartbeats, the id is refused to anyone else.
    let refused = common::testing::channels::connect(&url, "ticketing", &id)
        .await
        .err()
        .expect("a live holder keeps its id")
        .to_string();
    assert!(refused.contains("refused"), "{refused}");
    // The holder's process dies: its NATS connection goes, without closing the session.
    first.client().drain().await.unwrap();
    let started = Instant::now();
    let second = common::testing::channels::connect(&url, "ticketing", &id)
        .await
        .expect("the id of a dead holder is taken over");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(second.check().await, Ok(()));
    second.close().await;
}

/// The course's broker keeps everything in memory: restarted, it forgets our session, our
/// durable group and every message. The bus notices (ping, or a refusal), opens a new session and
/// subscribes again without the process restarting; `/readyz` says so meanwhile.
#[tokio::test]
async fn a_restarted_broker_gets_a_new_session_and_the_listener_subscribes_again() {
    let mut server = StanServer::start().await;
    let under = TestBus::on(Transport::Streaming, &server.url()).await;
    let bus = under.bus();
    let recorder = Arc::new(Recorder::default());
    // Three members of the group, as three replicas: each must come back as one member, never
    // leave a second one behind on the server that nobody reads (its messages would wait for
    // it forever).
    let runners: Vec<_> = (0..3)
        .map(|_| start(&under, recorder.clone(), options(&under)))
        .collect();
    under.publish(&expiration(1)).await;
    eventually(Duration::from_secs(10), "the first event", || async {
        recorder.ids().len() == 1
    })
    .await;

    server.restart().await;
    let check = bus.check();
    eventually(Duration::from_secs(20), "/readyz to fail", || async {
        check().await.is_err()
    })
    .await;
    eventually(Duration::from_secs(20), "a new session", || async {
        check().await.is_ok()
    })
    .await;
    let TestBus::Streaming(channels) = &under else {
        unreachable!()
    };
    let publisher = channels.publisher();
    eventually(
        Duration::from_secs(10),
        "a publish on the new session",
        || async { publisher.publish(&expiration(2)).await.is_ok() },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the event after the restart",
        || async { recorder.ids().contains(&expiration(2).order_id) },
    )
    .await;
    // Every member is back: thirty events are all handled well within the 2 s ack wait, none
    // handed to a member nobody reads.
    let published = Instant::now();
    for n in 10..40 {
        publisher.publish(&expiration(n)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "thirty events", || async {
        (10..40).all(|n| recorder.ids().contains(&expiration(n).order_id))
    })
    .await;
    assert!(
        published.elapsed() < Duration::from_millis(1500),
        "the last of thirty events took {:?}: some went to a member nobody reads",
        published.elapsed()
    );
    let mut runners = runners.into_iter();
    let (shutdown, task) = runners.next().unwrap();
    for (other, other_task) in runners {
        other.cancel();
        other_task.await.unwrap();
    }
    finish(under, shutdown, task).await;
    bus.close().await;
}

/// A broker that stops answering (frozen, or cut off) is noticed by the client's pings: after
/// three unanswered, 3 s apart, the session counts as lost and `/readyz` says so; once the
/// broker answers again a session is open again and messages flow.
#[tokio::test]
async fn a_frozen_broker_is_noticed_by_the_pings_and_the_bus_recovers_once_it_answers() {
    let server = StanServer::start().await;
    let under = TestBus::on(Transport::Streaming, &server.url()).await;
    let bus = under.bus();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    under.publish(&expiration(1)).await;
    eventually(Duration::from_secs(10), "the first event", || async {
        recorder.ids().len() == 1
    })
    .await;

    server.freeze();
    let frozen = Instant::now();
    let publisher = under.publisher();
    eventually(
        Duration::from_secs(25),
        "the session counted lost",
        || async { !publisher.connected() },
    )
    .await;
    let noticed = frozen.elapsed();
    assert!(
        noticed >= Duration::from_secs(6),
        "lost after {noticed:?}: before three pings could go unanswered"
    );
    assert!(bus.check()().await.is_err(), "/readyz says so");
    server.thaw();
    eventually(Duration::from_secs(20), "a session again", || async {
        bus.check()().await.is_ok()
    })
    .await;
    eventually(Duration::from_secs(10), "a publish", || async {
        publisher.publish(&expiration(2)).await.is_ok()
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the event after the thaw",
        || async { recorder.ids().contains(&expiration(2).order_id) },
    )
    .await;
    println!("frozen broker noticed after {noticed:?}");
    finish(under, shutdown, task).await;
    bus.close().await;
}

#[tokio::test]
async fn a_list_of_servers_is_tried_in_turn_when_the_first_does_not_answer() {
    let dead = format!("nats://127.0.0.1:{}", common::testing::free_port());
    let urls = format!("{dead},{}", common::testing::nats_url());
    let name = common::testing::unique_name("list");
    let prefix = format!("{name}.");
    let bus = Bus::connect(
        &nats_config(&[
            ("NATS_URL", &urls),
            ("NATS_TRANSPORT", "jetstream"),
            ("NATS_CLUSTER_ID", &name),
            ("NATS_SUBJECT_PREFIX", &prefix),
        ]),
        "test",
    )
    .await
    .expect("the second server of the list answers");
    assert_eq!(bus.check()().await, Ok(()));
    let _ = async_nats::jetstream::new(bus.client().clone())
        .delete_stream(&name)
        .await;
    bus.close().await;
}

#[tokio::test]
async fn an_existing_stream_with_other_replicas_is_reported_and_left_as_it_is() {
    let stream = TestStream::new().await;
    // One server cannot hold three replicas: asking for them must not touch the stream.
    let wanted = common::bus::StreamSpec {
        replicas: 3,
        ..stream.spec.clone()
    };
    let setup = common::bus::ensure_stream(&stream.js, &wanted)
        .await
        .unwrap();
    assert_eq!(setup, common::bus::StreamSetup::Existing { replicas: 1 });
    let info = stream
        .js
        .get_stream(&stream.spec.name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.num_replicas, 1);
    stream.delete().await;
}

/// `NATS_URL`'s credentials are used on both transports, through the services' own connect
/// path: a user and a password holding `@`, `:` and `/` (percent-encoded in the URL) on a
/// JetStream server, a token on a NATS Streaming server; each carries an event from publisher to
/// listener. Wrong ones are one error line showing the URL's credentials as `<redacted>`.
#[tokio::test]
async fn credentials_in_the_nats_url_are_used_on_both_transports() {
    let nats = common::testing::NatsWithPassword::start().await;
    let stan = common::testing::StanWithToken::start().await;
    let cases = [
        (
            Transport::JetStream,
            nats.url_with_credentials(),
            nats.url_with("ticketing:wrong-secret"),
        ),
        (
            Transport::Streaming,
            stan.url_with_credentials(),
            stan.url_with("wrong-secret"),
        ),
    ];
    for (transport, url, wrong) in cases {
        let name = common::testing::unique_name("creds");
        let prefix = format!("{name}.");
        let cluster_id = match transport {
            Transport::JetStream => name.as_str(),
            Transport::Streaming => "ticketing",
        };
        let settings = |url: &str| {
            nats_config(&[
                ("NATS_URL", url),
                ("NATS_TRANSPORT", transport.as_str()),
                ("NATS_CLUSTER_ID", cluster_id),
                ("NATS_SUBJECT_PREFIX", &prefix),
            ])
        };
        let bus = Bus::connect(&settings(&url), "test")
            .await
            .unwrap_or_else(|e| panic!("{transport}: {}", common::telemetry::ErrorChain(&e)));
        assert_eq!(bus.transport(), transport);
        assert_eq!(bus.check()().await, Ok(()), "{transport}");
        let recorder = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let task = {
            let (bus, recorder, token) = (bus.clone(), recorder.clone(), shutdown.clone());
            let options = ListenerOptions::new(bus.stream().clone());
            tokio::spawn(async move { bus.run_listener(recorder, &options, token).await.unwrap() })
        };
        bus.publisher(None)
            .publish(&expiration(1))
            .await
            .unwrap_or_else(|e| panic!("{transport}: {}", common::telemetry::ErrorChain(&e)));
        eventually(Duration::from_secs(10), "the event", || async {
            recorder.ids() == [expiration(1).order_id]
        })
        .await;
        shutdown.cancel();
        task.await.unwrap();
        bus.close().await;

        let refused = Bus::connect(&settings(&wrong), "test")
            .await
            .err()
            .expect("wrong credentials are refused");
        let line = common::telemetry::ErrorChain(&refused).to_string();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains("nats://<redacted>@127.0.0.1:")
                && !line.contains("wrong-secret")
                && line.contains("authorization"),
            "{transport}: {line}"
        );
        println!("{transport}: wrong credentials: {line}");
    }
}

/// The log lines written while the guard lives, on this thread (a `#[tokio::test]` runs every
/// task it spawns there).
fn captured_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (buffer, guard)
}

/// NATS Streaming does not authenticate clients: any client on the broker can end our session
/// (the close request for our client id) and then connect with our client id. While it holds
/// the id, `/readyz` says so and the log says it once, as an error; once it lets go (closing its
/// session, or its connection dropping as when its process dies), the session is open again and
/// events flow within seconds.
#[tokio::test]
async fn a_client_id_taken_by_another_client_is_reported_and_back_within_seconds_of_its_release() {
    let (logs, _guard) = captured_logs();
    let text = || String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let under = TestBus::new(Transport::Streaming).await;
    let TestBus::Streaming(channels) = &under else {
        unreachable!()
    };
    let ours = channels.connection.client_id().to_owned();
    let bus = under.bus();
    let check = bus.check();
    let publisher = channels.publisher();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&under, recorder.clone(), options(&under));
    under.publish(&expiration(1)).await;
    eventually(Duration::from_secs(10), "the first event", || async {
        recorder.ids().len() == 1
    })
    .await;
    let (url, cluster_id) = (channels.url.clone(), channels.cluster_id.clone());
    let other = common::testing::channels::connect(
        &url,
        &cluster_id,
        &common::testing::unique_name("other"),
    )
    .await
    .unwrap();
    let reason = "another client holds our client id";

    for (round, closes) in [(1, true), (2, false)] {
        // The squatter ends our session from a connection of its own, then takes our client id.
        other.close_session_of(&ours).await.unwrap();
        let squatter = common::testing::channels::connect(&url, &cluster_id, &ours)
            .await
            .expect("our client id is free once our session is closed");
        let taken = Instant::now();
        eventually(
            Duration::from_secs(15),
            "/readyz to name the squatter",
            || async { check().await.is_err_and(|e| e.contains(reason)) },
        )
        .await;
        let noticed = taken.elapsed();
        // Held for a few more retries (every 2 s at most): still reported, logged once.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let answer = check().await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains(reason)),
            "{answer:?}"
        );
        println!("/readyz while held: {}", answer.unwrap_err());
        let logged = text()
            .lines()
            .filter(|line| {
                line.contains("ERROR")
                    && line.contains("another client holds our NATS Streaming client id")
            })
            .count();
        assert_eq!(logged, round, "logged once per hold:\n{}", text());

        if closes {
            squatter.close().await;
        } else {
            // Its process dies: the connection goes, the session is not closed.
            squatter.client().drain().await.unwrap();
        }
        let released = Instant::now();
        let n = 10 * round;
        eventually(
            Duration::from_secs(10),
            "a publish after the release",
            || async { publisher.publish(&expiration(n)).await.is_ok() },
        )
        .await;
        eventually(
            Duration::from_secs(10),
            "the event after the release",
            || async { recorder.ids().contains(&expiration(n).order_id) },
        )
        .await;
        let back = released.elapsed();
        assert_eq!(check().await, Ok(()));
        assert!(
            back < Duration::from_secs(4),
            "back {back:?} after the release"
        );
        let let_go = text()
            .matches("the other client let go of our client id")
            .count();
        assert_eq!(let_go, round, "{}", text());
        let how = if closes {
            "closed its session"
        } else {
            "lost its connection"
        };
        println!(
            "squatter noticed after {noticed:?}; it {how}: session back and an event handled {back:?} later"
        );
    }
    other.close().await;
    finish(under, shutdown, task).await;
}
