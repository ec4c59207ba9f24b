//! The queue and the worker against real Redis and NATS: the local stack's (`scripts/stack up`),
//! and servers of a test's own for the tests that kill or stop them.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Subject;
use common::bus::Backoff;
use common::events::ExpirationComplete;
use common::testing::{TestStream, eventually, redis_url};
use expiration::metrics::Metrics;
use expiration::queue::{Job, Queue};
use expiration::worker::{BoxError, JobHandler, Worker, WorkerOptions};
use helpers::*;

const LEASE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The queue alone

#[tokio::test]
async fn a_job_is_claimed_only_once_its_due_time_has_come() {
    let queue = test_queue().await;
    let due = now_ms() + 400;
    queue.schedule("a", due).await.unwrap();
    let early = queue.claim(10, LEASE).await.unwrap();
    assert!(early.jobs.is_empty(), "claimed before due: {early:?}");
    let wait = early
        .next_in()
        .expect("the claim tells when the job is due");
    assert!(
        wait > Duration::from_millis(250) && wait <= Duration::from_millis(400),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    let claim = queue.claim(10, LEASE).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    let job = &claim.jobs[0];
    assert_eq!((job.id.as_str(), job.due_ms, job.attempts), ("a", due, 1));
    assert!(
        claim.now_us >= due * 1000,
        "claimed before due by Redis' clock"
    );
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn scheduling_is_keyed_the_same_due_time_changes_nothing_and_a_new_one_moves_the_job() {
    let queue = test_queue().await;
    let due = now_ms() + 60_000;
    let first = queue.schedule("order", due).await.unwrap();
    assert_eq!((first.added, first.woke), (1, true));
    let again = queue.schedule("order", due).await.unwrap();
    assert_eq!((again.added, again.moved, again.unchanged), (0, 0, 1));
    assert!(!again.woke, "nothing moved earlier");
    let later = queue.schedule("other", due + 1000).await.unwrap();
    assert!(!later.woke, "a later job does not wake anyone");
    let moved = queue.schedule("order", due - 30_000).await.unwrap();
    assert_eq!((moved.added, moved.moved, moved.woke), (0, 1, true));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.next_due_ms), (2, Some(due - 30_000)));
    // Twice in one batch behaves as two calls.
    let batch = queue
        .schedule_many(&[("x", due), ("x", due), ("x", due + 5)])
        .await
        .unwrap();
    assert_eq!((batch.added, batch.unchanged, batch.moved), (1, 1, 1));
    assert_eq!(queue.stats().await.unwrap().waiting, 3);
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn concurrent_claimers_never_get_the_same_job() {
    let first = test_queue().await;
    let past = now_ms() - 1000;
    let jobs: Vec<(String, i64)> = (0..2000).map(|n| (format!("job-{n}"), past)).collect();
    assert_eq!(first.schedule_many(&jobs).await.unwrap().added, 2000);
    let name = first.name().clone();
    let mut claimers = Vec::new();
    for _ in 0..4 {
        // Each claimer on a connection of its own, as separate replicas are.
        let queue = Queue::connect(&redis_url(), name.clone()).await.unwrap();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claim = queue.claim(37, LEASE).await.unwrap();
                if claim.jobs.is_empty() {
                    return mine;
                }
                mine.extend(claim.jobs.into_iter().map(|job| job.id));
            }
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut busy = 0;
    for claimer in claimers {
        let mine = claimer.await.unwrap();
        busy += usize::from(!mine.is_empty());
        for id in mine {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 2000, "every job claimed");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert!(busy >= 2, "the claimers really competed");
    first.delete().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_its_old_holder_can_no_longer_complete_it() {
    let queue = test_queue().await;
    queue.schedule("a", now_ms() - 10).await.unwrap();
    let lease = Duration::from_millis(300);
    let held = queue.claim(10, lease).await.unwrap();
    assert_eq!(held.jobs.len(), 1);
    assert!(
        queue.claim(10, lease).await.unwrap().jobs.is_empty(),
        "leased"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let claim = queue.claim(10, lease).await.unwrap();
        if !claim.jobs.is_empty() {
            break claim;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again.reclaimed, 1);
    let (old, new) = (&held.jobs[0], &again.jobs[0]);
    assert_eq!((new.id.as_str(), new.attempts), ("a", 2));
    assert_ne!(old.token, new.token);
    assert_eq!(
        queue
            .complete(&[(old.id.clone(), old.token)])
            .await
            .unwrap(),
        0,
        "the stale holder cannot complete"
    );
    assert_eq!(queue.stats().await.unwrap().leased, 1);
    assert_eq!(
        queue
            .complete(&[(new.id.clone(), new.token)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(queue.stats().await.unwrap().pending(), 0);
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn a_job_moved_while_it_is_being_fired_survives_the_old_completion() {
    let queue = test_queue().await;
    queue.schedule("a", now_ms() - 10).await.unwrap();
    let held = queue.claim(10, LEASE).await.unwrap().jobs.remove(0);
    let later = now_ms() + 60_000;
    let moved = queue.schedule("a", later).await.unwrap();
    assert_eq!(moved.moved, 1);
    assert_eq!(
        queue
            .complete(&[(held.id.clone(), held.token)])
            .await
            .unwrap(),
        0
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.waiting, stats.leased, stats.next_due_ms),
        (1, 0, Some(later))
    );
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn cancel_removes_waiting_and_leased_jobs() {
    let queue = test_queue().await;
    let now = now_ms();
    queue
        .schedule_many(&[("leased", now - 10), ("waiting", now + 60_000)])
        .await
        .unwrap();
    let held = queue.claim(10, LEASE).await.unwrap().jobs.remove(0);
    assert_eq!(held.id, "leased");
    assert_eq!(
        queue
            .cancel(&["leased", "waiting", "unknown"])
            .await
            .unwrap(),
        2
    );
    assert_eq!(queue.stats().await.unwrap().pending(), 0);
    assert_eq!(
        queue
            .complete(&[(held.id.clone(), held.token)])
            .await
            .unwrap(),
        0
    );
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn a_cancellation_that_overtakes_the_creation_keeps_the_job_from_being_scheduled() {
    let queue = test_queue().await;
    assert_eq!(queue.cancel(&["late"]).await.unwrap(), 0);
    let scheduled = queue.schedule("late", now_ms() - 10).await.unwrap();
    assert_eq!((scheduled.added, scheduled.skipped), (0, 1));
    assert_eq!(queue.stats().await.unwrap().pending(), 0);
    assert!(queue.claim(10, LEASE).await.unwrap().jobs.is_empty());
    queue.delete().await.unwrap();
}

/// Fails while `failing` is set; counts calls.
#[derive(Default)]
struct Flaky {
    failing: AtomicBool,
    calls: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("NATS is away")]
struct Away;

struct FlakyHandler(Arc<Flaky>);

impl JobHandler for FlakyHandler {
    async fn fire(&self, _: &Job) -> Result<(), BoxError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.failing.load(Ordering::SeqCst) {
            Err(Box::new(Away))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_failing_job_is_retried_after_backoff_then_dead_lettered_and_can_be_requeued() {
    let queue = test_queue().await;
    let handler = Arc::new(Flaky::default());
    handler.failing.store(true, Ordering::SeqCst);
    let metrics = Metrics::default();
    let options = WorkerOptions {
        max_attempts: 3,
        backoff: Backoff {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(1),
        },
        ..WorkerOptions::default()
    };
    let worker = Worker::new(
        queue.clone(),
        FlakyHandler(handler.clone()),
        options,
        metrics.clone(),
    );
    queue.schedule("a", now_ms() - 10).await.unwrap();

    let step = worker.step().await.unwrap();
    assert_eq!((step.claimed, step.failed), (1, 1));
    let stats = queue.stats().await.unwrap();
    let wait = stats.next_due_ms.unwrap() - stats.now_ms;
    assert!(
        (200..=300).contains(&wait),
        "due again after the backoff, in {wait} ms"
    );
    assert_eq!(worker.step().await.unwrap().claimed, 0, "not before it");

    eventually(Duration::from_secs(10), "the dead letter", || async {
        worker.step().await.unwrap();
        queue.stats().await.unwrap().dead == 1
    })
    .await;
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        3,
        "max_attempts fires"
    );
    assert_eq!((metrics.retried.get(), metrics.dead_lettered.get()), (2, 1));
    let dead = queue.dead().await.unwrap();
    assert_eq!((dead[0].id.as_str(), dead[0].attempts), ("a", 3));
    assert!(dead[0].reason.contains("NATS is away"), "{:?}", dead[0]);
    assert_eq!(queue.stats().await.unwrap().pending(), 0);

    handler.failing.store(false, Ordering::SeqCst);
    assert_eq!(queue.requeue_dead(&[]).await.unwrap(), 1);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.dead), (1, 0));
    let step = worker.step().await.unwrap();
    assert_eq!((step.claimed, step.fired), (1, 1));
    assert_eq!(queue.stats().await.unwrap().pending(), 0);
    assert_eq!(metrics.fired.get(), 1);
    queue.delete().await.unwrap();
}

/// Records when each job fired.
struct Recorder(tokio::sync::mpsc::UnboundedSender<(String, i64, i64)>);

impl JobHandler for Recorder {
    async fn fire(&self, job: &Job) -> Result<(), BoxError> {
        let _ = self.0.send((job.id.clone(), job.due_ms, now_ms()));
        Ok(())
    }
}

#[tokio::test]
async fn a_job_scheduled_by_another_replica_wakes_a_sleeping_worker() {
    let queue = test_queue().await;
    let other = Queue::connect(&redis_url(), queue.name().clone())
        .await
        .unwrap();
    queue.schedule("far", now_ms() + 60_000).await.unwrap();
    let (fired, mut fires) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Metrics::default();
    let options = WorkerOptions {
        // Without the wake-up the worker would sleep until `far`, a minute away.
        max_idle: Duration::from_secs(60),
        ..WorkerOptions::default()
    };
    let worker = Worker::new(queue.clone(), Recorder(fired), options, metrics.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let wakes = tokio::spawn(queue.clone().watch_wakes(shutdown.clone()));
    let running = tokio::spawn(worker.run(shutdown.clone()));
    eventually(Duration::from_secs(5), "the first claim", || async {
        metrics.pending.get() == 1
    })
    .await;
    // Let the subscription settle: it wakes the worker once when it subscribes.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let due = now_ms() + 300;
    assert!(other.schedule("soon", due).await.unwrap().woke);
    let (id, job_due, at) = tokio::time::timeout(Duration::from_secs(5), fires.recv())
        .await
        .expect("the job fired within 5 s")
        .unwrap();
    assert_eq!((id.as_str(), job_due), ("soon", due));
    assert!(at >= due, "fired {} ms early", due - at);
    assert!(at - due < 200, "fired {} ms late", at - due);
    shutdown.cancel();
    running.await.unwrap();
    wakes.await.unwrap();
    queue.delete().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The worker in-process, on the local stack

async fn start_app() -> (TestStream, TestApp) {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let env = worker_env(&stream.env(), &redis_url(), queue.name());
    let app = TestApp::start(&env).await;
    (stream, app)
}

async fn finish(stream: TestStream, app: TestApp) {
    let queue = app.queue.clone();
    app.stop().await;
    queue.delete().await.unwrap();
    stream.delete().await;
}

#[tokio::test]
async fn order_created_fires_expiration_complete_at_its_due_time() {
    let (stream, app) = start_app().await;
    let id = order_id();
    let due = now_ms() + 700;
    stream.publish(&order_created(&id, due)).await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events, [ExpirationComplete { order_id: id }]);
    let message = stream
        .js
        .get_stream(&stream.spec.name)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&stream.spec.subject(Subject::ExpirationComplete))
        .await
        .unwrap();
    let at = |ms: i64| async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000).unwrap();
    assert!(message.time >= at(due), "published before expiresAt");
    assert!(
        message.time <= at(due + 250),
        "published more than 250 ms after expiresAt"
    );
    assert_eq!(app.metric("jobs_fired_total").await, 1.0);
    assert_eq!(app.metric("job_lateness_seconds_count").await, 1.0);
    finish(stream, app).await;
}

#[tokio::test]
async fn a_redelivered_order_created_fires_once() {
    let (stream, app) = start_app().await;
    let id = order_id();
    let event = order_created(&id, now_ms() + 500);
    stream.publish(&event).await;
    publish_again(&stream, &event, "redelivery").await;
    eventually(
        Duration::from_secs(10),
        "both deliveries handled",
        || async {
            app.metric(r#"events_handled_total{subject="order:created",outcome="ack"}"#)
                .await
                == 2.0
        },
    )
    .await;
    assert_eq!(app.metric("jobs_scheduled_total").await, 1.0);
    stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    eventually(Duration::from_secs(5), "the job completed", || async {
        app.queue.stats().await.unwrap().pending() == 0
    })
    .await;
    // JetStream would hide a second publish behind the message id: count the fires themselves.
    assert_eq!(app.metric("jobs_fired_total").await, 1.0);
    assert_eq!(stream.events::<ExpirationComplete>().await.len(), 1);
    finish(stream, app).await;
}

#[tokio::test]
async fn an_order_created_whose_id_is_not_an_object_id_is_never_scheduled() {
    let (stream, app) = start_app().await;
    let (bad, huge, control) = (
        "not-an-object-id".to_owned(),
        "a".repeat(500_000),
        order_id(),
    );
    let due = now_ms() + 300;
    stream.publish(&order_created(&bad, due)).await;
    // Published raw: the message id of a 500 KB id would not fit in a header.
    let body = serde_json::to_vec(&order_created(&huge, due)).unwrap();
    stream
        .js
        .publish(stream.spec.subject(Subject::OrderCreated), body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    stream.publish(&order_created(&control, due)).await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events, [ExpirationComplete { order_id: control }]);
    let invalid = r#"events_handled_total{subject="order:created",outcome="invalid"}"#;
    eventually(Duration::from_secs(5), "both refused", || async {
        app.metric(invalid).await == 2.0
    })
    .await;
    assert_eq!(app.metric("jobs_scheduled_total").await, 1.0);
    assert_eq!(app.queue.stats().await.unwrap().pending(), 0);
    finish(stream, app).await;
}

#[tokio::test]
async fn order_cancelled_before_the_due_time_fires_nothing() {
    let (stream, app) = start_app().await;
    let (cancelled, control) = (order_id(), order_id());
    let due = now_ms() + 600;
    stream.publish(&order_created(&cancelled, due)).await;
    stream.publish(&order_created(&control, due + 200)).await;
    stream.publish(&order_cancelled(&cancelled)).await;
    eventually(
        Duration::from_secs(10),
        "the three events handled",
        || async {
            app.metric(r#"events_handled_total{subject="order:created",outcome="ack"}"#)
                .await
                == 2.0
                && app
                    .metric(r#"events_handled_total{subject="order:cancelled",outcome="ack"}"#)
                    .await
                    == 1.0
        },
    )
    .await;
    // The control order fires after the cancelled one would have: by then it would be there.
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events, [ExpirationComplete { order_id: control }]);
    assert_eq!(app.metric("jobs_fired_total").await, 1.0);
    finish(stream, app).await;
}

#[tokio::test]
async fn a_new_expires_at_for_the_same_order_moves_its_job() {
    let (stream, app) = start_app().await;
    let (earlier, later, control) = (order_id(), order_id(), order_id());
    let now = now_ms();
    stream.publish(&order_created(&earlier, now + 60_000)).await;
    stream.publish(&order_created(&later, now + 400)).await;
    stream.publish(&order_created(&control, now + 900)).await;
    let mut moved_earlier = order_created(&earlier, now + 500);
    moved_earlier.version = 1;
    stream.publish(&moved_earlier).await;
    let mut moved_later = order_created(&later, now + 1500);
    moved_later.version = 1;
    stream.publish(&moved_later).await;
    let events = stream
        .wait_for::<ExpirationComplete>(3, Duration::from_secs(10))
        .await;
    let order: Vec<String> = events.into_iter().map(|e| e.order_id).collect();
    assert_eq!(order, [earlier, control, later], "fired in the moved order");
    assert_eq!(app.metric("jobs_fired_total").await, 3.0);
    finish(stream, app).await;
}

#[tokio::test]
async fn a_past_expires_at_fires_at_once() {
    let (stream, app) = start_app().await;
    let id = order_id();
    let start = Instant::now();
    stream
        .publish(&order_created(&id, now_ms() - 3_600_000))
        .await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(5))
        .await;
    assert_eq!(events[0].order_id, id);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    finish(stream, app).await;
}

#[tokio::test]
async fn idle_sockets_to_the_ops_port_are_capped_and_closed() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let mut env = worker_env(&stream.env(), &redis_url(), queue.name());
    env.insert("HTTP_MAX_CONNECTIONS".into(), "5".into());
    env.insert("HTTP_HEADER_TIMEOUT_SECONDS".into(), "0.3".into());
    let app = TestApp::start(&env).await;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut socket = tokio::net::TcpStream::connect(app.ops).await.unwrap();
        idle.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buffer = [0u8; 64];
            while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
        }));
    }
    // Eight rounds of five, 0.3 s each.
    for socket in idle {
        tokio::time::timeout(Duration::from_secs(10), socket)
            .await
            .expect("every idle socket is closed by the worker")
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2000),
        "{took:?}: more than 5 open at once"
    );
    assert_eq!(http_get(app.ops, "/readyz").await.0, "HTTP/1.1 200 OK");
    assert_eq!(
        app.metric("http_connections_open").await,
        1.0,
        "only this request"
    );
    finish(stream, app).await;
}

#[tokio::test]
async fn the_ops_port_answers_health_readiness_and_metrics() {
    let (stream, app) = start_app().await;
    assert_eq!(http_get(app.ops, "/healthz").await.0, "HTTP/1.1 200 OK");
    let (status, body) = http_get(app.ops, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.contains(r#""nats":"ok""#) && body.contains(r#""redis":"ok""#),
        "{body}"
    );
    let (_, metrics) = http_get(app.ops, "/metrics").await;
    for name in [
        "jobs_scheduled_total",
        "jobs_fired_total",
        "jobs_cancelled_total",
        "jobs_retried_total",
        "jobs_dead_lettered_total",
        "jobs_pending",
        "job_lateness_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }
    finish(stream, app).await;
}

// ---------------------------------------------------------------------------------------------
// The worker as processes

#[tokio::test]
async fn a_worker_killed_between_claim_and_publish_fires_the_job_after_a_restart() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let mut env = worker_env(&stream.env(), &redis_url(), queue.name());
    env.insert("EXPIRATION_LEASE_MS".into(), "1500".into());
    // Holding the job after its claim is the only deterministic way to be between claim and
    // publish when the kill lands; with NATS down instead, the publish would fail and take the
    // retry path, not the lease path this test is about.
    let mut held = env.clone();
    held.insert("EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH".into(), "true".into());
    let first = WorkerProcess::spawn(&held).await;
    let id = order_id();
    stream.publish(&order_created(&id, now_ms())).await;
    eventually(Duration::from_secs(10), "the job to be claimed", || async {
        queue.stats().await.unwrap().leased == 1
    })
    .await;
    first.kill().await;
    assert!(stream.events::<ExpirationComplete>().await.is_empty());

    let second = WorkerProcess::spawn(&env).await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events[0].order_id, id);
    assert_eq!(second.metric("jobs_fired_total").await, 1.0);
    assert!(second.terminate().await, "exit status 0");
    queue.delete().await.unwrap();
    stream.delete().await;
}

#[tokio::test]
async fn sigterm_finishes_the_publishes_in_flight_and_exits_zero() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let mut env = worker_env(&stream.env(), &redis_url(), queue.name());
    // One publish at a time, so that SIGTERM lands while jobs are still being fired.
    env.insert("EXPIRATION_CONCURRENCY".into(), "1".into());
    let worker = WorkerProcess::spawn(&env).await;
    let past = now_ms() - 1;
    let jobs: Vec<(String, i64)> = (0..300).map(|_| (order_id(), past)).collect();
    queue.schedule_many(&jobs).await.unwrap();
    eventually(Duration::from_secs(10), "the first fires", || async {
        worker.metric("jobs_fired_total").await >= 1.0
    })
    .await;
    let (exited_zero, log) = worker.terminate_with_log().await;
    assert!(exited_zero, "exit status 0: {log}");
    assert!(log.contains("expiration worker stopped"), "{log}");
    // Every job claimed before the signal was published and completed; none was left leased.
    let stats = queue.stats().await.unwrap();
    let published = stream.events::<ExpirationComplete>().await.len() as u64;
    assert_eq!(stats.leased, 0, "a claimed job was abandoned");
    assert_eq!(
        published + stats.waiting,
        300,
        "{stats:?}, {published} published"
    );
    queue.delete().await.unwrap();
    stream.delete().await;
}

#[tokio::test]
async fn three_replicas_fire_each_of_a_thousand_jobs_exactly_once() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let env = worker_env(&stream.env(), &redis_url(), queue.name());
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(WorkerProcess::spawn(&env).await);
    }
    let due = now_ms() + 1500;
    let ids: Vec<String> = (0..1000).map(|_| order_id()).collect();
    // Pipelined publishes: send all, then await the acks.
    let mut acks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let body = serde_json::to_vec(&order_created(id, due + (n as i64 % 200))).unwrap();
        acks.push(
            stream
                .js
                .publish(stream.spec.subject(Subject::OrderCreated), body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let fired = || async {
        let mut total = 0.0;
        for replica in &replicas {
            total += replica.metric("jobs_fired_total").await;
        }
        total
    };
    eventually(Duration::from_secs(30), "1,000 fires", || async {
        fired().await >= 1000.0
    })
    .await;
    eventually(Duration::from_secs(5), "every job completed", || async {
        queue.stats().await.unwrap().pending() == 0
    })
    .await;
    let mut per_replica = Vec::new();
    let mut duplicates = 0.0;
    for replica in &replicas {
        per_replica.push(replica.metric("jobs_fired_total").await);
        duplicates += replica
            .metric(r#"events_published_total{subject="expiration:complete",outcome="duplicate"}"#)
            .await;
    }
    assert_eq!(
        per_replica.iter().sum::<f64>(),
        1000.0,
        "fires per replica {per_replica:?}"
    );
    assert_eq!(duplicates, 0.0, "no job was published twice");
    assert!(
        per_replica.iter().filter(|n| **n > 0.0).count() >= 2,
        "the replicas shared the work: {per_replica:?}"
    );
    let published: Vec<String> = stream
        .events::<ExpirationComplete>()
        .await
        .into_iter()
        .map(|e| e.order_id)
        .collect();
    assert_eq!(published.len(), 1000);
    let unique: HashSet<&String> = published.iter().collect();
    assert_eq!(unique, ids.iter().collect::<HashSet<_>>());
    for replica in replicas {
        assert!(replica.terminate().await);
    }
    queue.delete().await.unwrap();
    stream.delete().await;
}

#[tokio::test]
async fn the_inspect_command_shows_pending_and_dead_jobs_and_requeues_them() {
    let queue = test_queue().await;
    let now = now_ms();
    queue
        .schedule_many(&[("waiting", now + 60_000), ("doomed", now - 10)])
        .await
        .unwrap();
    let doomed = queue.claim(10, LEASE).await.unwrap().jobs.remove(0);
    queue
        .retry(&doomed, Duration::ZERO, 1, "NATS is away")
        .await
        .unwrap();
    let inspect = |args: &'static [&'static str]| {
        let name = queue.name().clone();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_expiration"))
                .args(args)
                .env_clear()
                .env("REDIS_URL", redis_url())
                .env("REDIS_KEY_PREFIX", &name.prefix)
                .env("EXPIRATION_QUEUE", &name.name)
                .output()
                .await
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let report = inspect(&["inspect"]).await;
    assert!(
        report.contains("pending      1 (1 waiting, 0 being fired)"),
        "{report}"
    );
    assert!(report.contains("(in "), "{report}");
    assert!(report.contains("dead-letter  1"), "{report}");
    assert!(
        report.contains("doomed")
            && report.contains("attempts 1")
            && report.contains("NATS is away"),
        "{report}"
    );
    assert_eq!(
        inspect(&["inspect", "requeue"]).await.trim(),
        "requeued 1 dead-lettered job(s)"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.dead), (2, 0));
    queue.delete().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Servers of the test's own

#[tokio::test]
async fn pending_jobs_survive_a_redis_restart_with_append_only_persistence() {
    let mut redis = RedisServer::start().await;
    let stream = TestStream::new().await;
    let queue = queue_on(&redis.url()).await;
    let env = worker_env(&stream.env(), &redis.url(), queue.name());
    let app = TestApp::start(&env).await;
    let due = now_ms() + 1500;
    let ids: Vec<String> = (0..20).map(|_| order_id()).collect();
    for id in &ids {
        stream.publish(&order_created(id, due)).await;
    }
    eventually(Duration::from_secs(10), "20 jobs scheduled", || async {
        queue.stats().await.is_ok_and(|stats| stats.pending() == 20)
    })
    .await;

    redis.kill_and_restart().await;
    let survived = Queue::connect(&redis.url(), queue.name().clone())
        .await
        .unwrap()
        .stats()
        .await
        .unwrap();
    assert_eq!(survived.pending(), 20, "every job came back from the AOF");

    let events = stream
        .wait_for::<ExpirationComplete>(20, Duration::from_secs(15))
        .await;
    let fired: HashSet<String> = events.into_iter().map(|e| e.order_id).collect();
    assert_eq!(fired, ids.into_iter().collect());
    app.stop().await;
    stream.delete().await;
}

#[tokio::test]
async fn a_job_due_while_nats_is_down_is_retried_and_fires_once_nats_is_back() {
    let mut nats = NatsServer::start().await;
    let own = OwnStream::new(&nats.url()).await;
    let queue = test_queue().await;
    let env = worker_env(&own.env(&nats.url()), &redis_url(), queue.name());
    let app = TestApp::start(&env).await;
    let id = order_id();
    own.publish(&order_created(&id, now_ms() + 300)).await;
    eventually(Duration::from_secs(10), "the job scheduled", || async {
        queue.stats().await.unwrap().pending() == 1
    })
    .await;

    nats.stop().await;
    eventually(
        Duration::from_secs(10),
        "a failed publish retried",
        || async { app.metric("jobs_retried_total").await >= 1.0 },
    )
    .await;
    assert_eq!(app.metric("jobs_fired_total").await, 0.0);
    let (status, body) = http_get(app.ops, "/readyz").await;
    assert!(status.contains("503"), "{status} {body}");
    assert!(
        body.contains(r#""redis":"ok""#) && !body.contains(r#""nats":"ok""#),
        "{body}"
    );
    nats.launch().await;

    eventually(
        Duration::from_secs(20),
        "the expiration published",
        || async { own.count::<ExpirationComplete>().await >= 1 },
    )
    .await;
    eventually(Duration::from_secs(5), "the job completed", || async {
        queue.stats().await.unwrap().pending() == 0
    })
    .await;
    assert_eq!(own.count::<ExpirationComplete>().await, 1);
    assert_eq!(app.metric("jobs_fired_total").await, 1.0);
    assert_eq!(app.metric("jobs_dead_lettered_total").await, 0.0);
    app.stop().await;
    queue.delete().await.unwrap();
}
