//! The whole worker in this process on the local stack: order:created in, expiration:complete
//! out, cancellations, invalid intake, the ops port.

use std::time::{Duration, Instant};

use chrono::DateTime;

use common::Subject;
use common::events::ExpirationComplete;
use common::testing::{TestStream, eventually, get, redis_url};

use super::helpers::*;

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
    stream.publish_again(&event).await;
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
async fn an_order_created_expiring_beyond_the_max_ahead_is_rejected_and_never_scheduled() {
    // EXPIRATION_MAX_AHEAD_SECONDS keeps its default, 7 days.
    let (stream, app) = start_app().await;
    let (forever, eight_days, six_days, control) = (order_id(), order_id(), order_id(), order_id());
    let day = 24 * 3600 * 1000;
    let end_of_9999 = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .unwrap()
        .timestamp_millis();
    stream.publish(&order_created(&forever, end_of_9999)).await;
    stream
        .publish(&order_created(&eight_days, now_ms() + 8 * day))
        .await;
    stream
        .publish(&order_created(&six_days, now_ms() + 6 * day))
        .await;
    stream
        .publish(&order_created(&control, now_ms() + 300))
        .await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events, [ExpirationComplete { order_id: control }]);
    let rejected = r#"events_handled_total{subject="order:created",outcome="reject"}"#;
    eventually(Duration::from_secs(5), "both far ones rejected", || async {
        app.metric(rejected).await == 2.0
    })
    .await;
    assert_eq!(app.metric("jobs_scheduled_total").await, 2.0);
    eventually(
        Duration::from_secs(5),
        "the control job completed",
        || async { app.queue.stats().await.unwrap().pending() == 1 },
    )
    .await;
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
    stream.publish(&order_created(&later, now + 1_500)).await;
    stream.publish(&order_created(&control, now + 2_500)).await;
    // Handled concurrently with the first three, the moves still win: a higher version.
    let mut moved_earlier = order_created(&earlier, now + 1_800);
    moved_earlier.version = 1;
    stream.publish(&moved_earlier).await;
    let mut moved_later = order_created(&later, now + 3_500);
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
async fn an_older_order_created_handled_after_a_newer_one_changes_nothing() {
    let (stream, app) = start_app().await;
    let id = order_id();
    let now = now_ms();
    let mut moved = order_created(&id, now + 1_500);
    moved.version = 1;
    stream.publish(&moved).await;
    eventually(Duration::from_secs(5), "version 1 scheduled", || async {
        app.metric("jobs_scheduled_total").await == 1.0
    })
    .await;
    // Version 0 comes last (a redelivery, or a message handled late): it would put the job an
    // hour away.
    stream.publish(&order_created(&id, now + 3_600_000)).await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events[0].order_id, id);
    assert!(
        now_ms() < now + 5_000,
        "fired at version 1's expiresAt, not version 0's"
    );
    assert_eq!(app.metric("jobs_scheduled_total").await, 1.0);
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
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.ops))
            .await
            .unwrap();
        idle.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buffer = [0u8; 64];
            while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
        }));
    }
    // Past the cap, each newcomer takes the place of the one idle the longest (35 of them);
    // the last five are closed by the header timeout.
    for socket in idle {
        tokio::time::timeout(Duration::from_secs(10), socket)
            .await
            .expect("every idle socket is closed by the worker")
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "{took:?}: the last ones closed early"
    );
    assert_eq!(get(app.ops, "/readyz").await.unwrap().status, 200);
    // At most those 35; fewer if a loaded machine's timers let a header timeout come first.
    let shed = app.metric("http_connections_shed_total").await;
    assert!((1.0..=35.0).contains(&shed), "{shed} shed");
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
    assert_eq!(get(app.ops, "/healthz").await.unwrap().status, 200);
    let ready = get(app.ops, "/readyz").await.unwrap();
    let body = ready.body;
    assert_eq!(ready.status, 200, "{body}");
    assert!(
        body.contains(r#""nats":"ok""#) && body.contains(r#""redis":"ok""#),
        "{body}"
    );
    let metrics = get(app.ops, "/metrics").await.unwrap().body;
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
