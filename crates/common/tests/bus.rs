//! The bus against the real NATS server of the local stack (`scripts/stack up`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Subject;
use common::bus::{
    Backoff, BusMetrics, HandlerError, Listener, ListenerOptions, MessageInfo, consumer_name,
    run_listener,
};
use common::events::{ExpirationComplete, OrderCancelled, OrderCancelledTicket, TicketCreated};
use common::testing::{TestStream, eventually};
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

fn options(stream: &TestStream) -> ListenerOptions {
    let mut options = ListenerOptions::new(stream.spec.clone());
    options.ack_wait = Duration::from_secs(2);
    options
}

/// [`options`] with a backoff from `initial` to `max` milliseconds, and counters to read.
fn counted_options(stream: &TestStream, initial: u64, max: u64) -> (ListenerOptions, BusMetrics) {
    let mut options = options(stream);
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
async fn finish(stream: TestStream, shutdown: CancellationToken, task: JoinHandle<()>) {
    shutdown.cancel();
    task.await.unwrap();
    stream.delete().await;
}

fn start(
    stream: &TestStream,
    listener: Arc<Recorder>,
    options: ListenerOptions,
) -> (CancellationToken, JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let js = stream.js.clone();
    let token = shutdown.clone();
    let task =
        tokio::spawn(async move { run_listener(&js, listener, &options, token).await.unwrap() });
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

#[tokio::test]
async fn a_published_event_reaches_the_handler_typed() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&stream, recorder.clone(), options(&stream));
    stream.publish(&expiration(7)).await;
    eventually(Duration::from_secs(10), "the event", || async {
        recorder.ids().len() == 1
    })
    .await;
    assert_eq!(recorder.ids(), [expiration(7).order_id]);
    assert_eq!(
        stream.bodies(Subject::ExpirationComplete).await,
        [r#"{"orderId":"000000000000000000000007"}"#]
    );
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn two_runners_in_one_queue_group_split_the_messages() {
    let stream = TestStream::new().await;
    let mut opts = options(&stream);
    opts.max_in_flight = 1;
    let first = Arc::new(Recorder {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let second = Arc::new(Recorder {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let (stop_first, first_task) = start(&stream, first.clone(), opts.clone());
    let (stop_second, second_task) = start(&stream, second.clone(), opts);
    for n in 0..60 {
        stream.publish(&expiration(n)).await;
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
    stream.delete().await;
}

#[tokio::test]
async fn a_restarted_runner_resumes_after_the_last_acked_message() {
    let stream = TestStream::new().await;
    let before = Arc::new(Recorder::default());
    let (shutdown, task) = start(&stream, before.clone(), options(&stream));
    for n in 0..5 {
        stream.publish(&expiration(n)).await;
    }
    eventually(Duration::from_secs(10), "the first five", || async {
        before.ids().len() == 5
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        consumer_info(&stream).await.num_ack_pending,
        0,
        "all five acked before the runner returned"
    );

    for n in 5..10 {
        stream.publish(&expiration(n)).await;
    }
    let after = Arc::new(Recorder::default());
    let (shutdown, task) = start(&stream, after.clone(), options(&stream));
    eventually(Duration::from_secs(10), "the next five", || async {
        after.ids().len() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<String> = (5..10).map(|n| expiration(n).order_id).collect();
    let mut got = after.ids();
    got.sort();
    assert_eq!(got, expected, "nothing lost, nothing acked handled twice");
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_failed_handler_is_redelivered_after_the_backoff_not_before() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        failures: 1,
        ..Default::default()
    });
    let mut opts = options(&stream);
    opts.backoff = Backoff {
        initial: Duration::from_millis(800),
        max: Duration::from_secs(5),
    };
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    stream.publish(&expiration(1)).await;
    eventually(Duration::from_secs(10), "the redelivery", || async {
        recorder.ids().len() == 2
    })
    .await;
    let handled = recorder.handled.lock().unwrap().clone();
    let gap = handled[1].2 - handled[0].2;
    assert_eq!((handled[0].1.delivered, handled[1].1.delivered), (1, 2));
    assert!(
        gap >= Duration::from_millis(750),
        "redelivered after {gap:?}, before the 800 ms backoff"
    );
    assert!(
        gap < Duration::from_millis(2000),
        "redelivered after {gap:?}: the nak delay, not the ack wait, should decide"
    );
    eventually(Duration::from_secs(5), "the ack", || async {
        consumer_info(&stream).await.num_ack_pending == 0
    })
    .await;
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_poison_body_is_terminated_and_the_messages_after_it_still_flow() {
    let stream = TestStream::new().await;
    stream
        .js
        .publish(
            stream.spec.subject(Subject::ExpirationComplete),
            "{not json".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    stream.publish(&expiration(2)).await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&stream, recorder.clone(), options(&stream));
    eventually(Duration::from_secs(10), "the good message", || async {
        recorder.ids().len() == 1
    })
    .await;
    // Past the 2 s ack wait: a poison message that was not terminated would be redelivered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = consumer_info(&stream).await;
    assert_eq!((info.num_ack_pending, info.num_redelivered), (0, 0));
    assert_eq!(info.ack_floor.stream_sequence, 2);
    assert_eq!(recorder.ids(), [expiration(2).order_id]);
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn an_event_still_not_applicable_after_the_delivery_limit_is_given_up_and_counted() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        failures: u64::MAX,
        ..Default::default()
    });
    let (mut opts, metrics) = counted_options(&stream, 100, 200);
    opts.max_deliveries = 3;
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    stream.publish(&expiration(4)).await;
    eventually(Duration::from_secs(10), "three deliveries", || async {
        recorder.ids().len() == 3
    })
    .await;
    // Past the 2 s ack wait: a message that was not terminated would come back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(recorder.ids().len(), 3, "no fourth delivery");
    let info = consumer_info(&stream).await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(metrics.handled_count(subject, "retry"), 2);
    assert_eq!(metrics.handled_count(subject, "gave_up"), 1);
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_dependency_outage_keeps_the_message_without_using_up_its_deliveries() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        outage: AtomicU64::new(5),
        ..Default::default()
    });
    let (mut opts, _) = counted_options(&stream, 300, 1000);
    // A limit of one delivery: an outage that counted would give the event up at once.
    opts.max_deliveries = 1;
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    stream.publish(&expiration(5)).await;
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
    eventually(Duration::from_secs(5), "the ack", || async {
        consumer_info(&stream).await.num_ack_pending == 0
    })
    .await;
    assert_eq!(consumer_info(&stream).await.num_redelivered, 0);
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_handler_that_never_answers_is_abandoned_and_called_again_without_a_redelivery() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        hangs: AtomicU64::new(2),
        ..Default::default()
    });
    let (mut opts, metrics) = counted_options(&stream, 100, 200);
    opts.handler_timeout = Duration::from_millis(500);
    opts.max_deliveries = 1;
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    let started = Instant::now();
    stream.publish(&expiration(6)).await;
    eventually(Duration::from_secs(10), "the third call", || async {
        recorder.ids().len() == 3
    })
    .await;
    // Two calls abandoned after 0.5 s each, with 0.1 s and 0.2 s between them.
    assert!(started.elapsed() >= Duration::from_millis(1300));
    eventually(Duration::from_secs(5), "the ack", || async {
        consumer_info(&stream).await.num_ack_pending == 0
    })
    .await;
    let handled = recorder.handled.lock().unwrap().clone();
    assert!(handled.iter().all(|(_, info, _)| info.delivered == 1));
    assert_eq!(consumer_info(&stream).await.num_redelivered, 0);
    let subject = Subject::ExpirationComplete.as_str();
    assert_eq!(metrics.handled_count(subject, "unavailable"), 2);
    assert_eq!(metrics.handled_count(subject, "ack"), 1);
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_message_whose_handler_panicked_is_redelivered_and_the_listener_keeps_going() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        panics: AtomicU64::new(1),
        ..Default::default()
    });
    let (opts, metrics) = counted_options(&stream, 100, 200);
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    stream.publish(&expiration(8)).await;
    stream.publish(&expiration(9)).await;
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
    eventually(Duration::from_secs(5), "both acked", || async {
        consumer_info(&stream).await.num_ack_pending == 0
    })
    .await;
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn a_supervised_listener_that_cannot_start_is_started_again_until_it_can() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder::default());
    let (mut opts, metrics) = counted_options(&stream, 1000, 60_000);
    // A stream that does not exist yet: the runner fails to set up its consumer.
    opts.stream.name = format!("{}-later", stream.spec.name);
    opts.stream.subject_prefix = format!("{}later.", stream.spec.subject_prefix);
    let shutdown = CancellationToken::new();
    let supervised = tokio::spawn(common::bus::supervise(
        stream.js.clone(),
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
async fn invalid_events_are_terminated_before_they_reach_the_handler() {
    let stream = TestStream::new().await;
    let subject = stream.spec.subject(Subject::ExpirationComplete);
    let huge = format!(r#"{{"orderId":"{}"}}"#, "a".repeat(500_000));
    for body in [r#"{"orderId":"not-an-object-id"}"#.to_owned(), huge] {
        stream
            .js
            .publish(subject.clone(), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    stream.publish(&expiration(6)).await;
    let recorder = Arc::new(Recorder::default());
    let (opts, metrics) = counted_options(&stream, 1000, 60_000);
    let (shutdown, task) = start(&stream, recorder.clone(), opts);
    eventually(Duration::from_secs(10), "the valid event", || async {
        recorder.ids().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(recorder.ids(), [expiration(6).order_id]);
    let info = consumer_info(&stream).await;
    assert_eq!((info.num_ack_pending, info.num_redelivered), (0, 0));
    assert_eq!(
        metrics.handled_count(Subject::ExpirationComplete.as_str(), "invalid"),
        2
    );
    finish(stream, shutdown, task).await;
}

#[tokio::test]
async fn shutdown_lets_the_message_in_hand_finish_and_be_acked() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(700),
        ..Default::default()
    });
    let (shutdown, task) = start(&stream, recorder.clone(), options(&stream));
    stream.publish(&expiration(3)).await;
    eventually(Duration::from_secs(10), "delivery", || async {
        try_consumer_info(&stream)
            .await
            .is_some_and(|info| info.num_ack_pending == 1)
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        recorder.ids().len(),
        1,
        "the handler finished before the runner returned"
    );
    assert_eq!(
        consumer_info(&stream).await.num_ack_pending,
        0,
        "and its message was acked"
    );
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
async fn a_listener_sees_only_its_own_subject() {
    let stream = TestStream::new().await;
    let recorder = Arc::new(Recorder::default());
    let (shutdown, task) = start(&stream, recorder.clone(), options(&stream));
    stream.publish(&ticket_created()).await;
    stream.publish(&expiration(4)).await;
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
    finish(stream, shutdown, task).await;
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
