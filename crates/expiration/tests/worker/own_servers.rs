//! Servers of the test's own, killed or stopped under a running worker: Redis restarted with
//! append-only persistence, NATS away while a job is due.

use std::collections::HashSet;
use std::time::Duration;

use common::events::ExpirationComplete;
use common::testing::{NatsServer, RedisServer, TestStream, eventually, get, redis_url};
use expiration::queue::Queue;

use super::helpers::*;

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

    redis.restart().await;
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
    let own = TestStream::on(&nats.url()).await;
    let queue = test_queue().await;
    let env = worker_env(&own.env(), &redis_url(), queue.name());
    let app = TestApp::start(&env).await;
    let id = order_id();
    own.publish(&order_created(&id, now_ms() + 300)).await;
    eventually(Duration::from_secs(10), "the job scheduled", || async {
        queue.stats().await.unwrap().pending() == 1
    })
    .await;

    nats.terminate().await;
    eventually(
        Duration::from_secs(10),
        "a failed publish retried",
        || async { app.metric("jobs_retried_total").await >= 1.0 },
    )
    .await;
    assert_eq!(app.metric("jobs_fired_total").await, 0.0);
    let ready = get(app.ops, "/readyz").await.unwrap();
    let body = ready.body;
    assert_eq!(ready.status, 503, "{body}");
    assert!(
        body.contains(r#""redis":"ok""#) && !body.contains(r#""nats":"ok""#),
        "{body}"
    );
    nats.start_again().await;
    own.reconnected().await;

    eventually(
        Duration::from_secs(20),
        "the expiration published",
        || async { !own.events::<ExpirationComplete>().await.is_empty() },
    )
    .await;
    eventually(Duration::from_secs(5), "the job completed", || async {
        queue.stats().await.unwrap().pending() == 0
    })
    .await;
    assert_eq!(own.events::<ExpirationComplete>().await.len(), 1);
    assert_eq!(app.metric("jobs_fired_total").await, 1.0);
    assert_eq!(app.metric("jobs_dead_lettered_total").await, 0.0);
    app.stop().await;
    queue.delete().await.unwrap();
}
