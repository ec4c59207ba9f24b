//! Servers of the test's own, killed, frozen or stopped under a running worker: Redis restarted
//! with append-only persistence; NATS or Redis away for ten seconds while jobs fall due and
//! orders arrive.

use std::collections::HashSet;
use std::time::Duration;

use common::events::ExpirationComplete;
use common::testing::{NatsServer, RedisServer, TestStream, eventually, get};
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
async fn a_redis_at_maxmemory_is_an_outage_on_readyz_and_the_held_order_is_scheduled_after() {
    let redis = RedisServer::start().await;
    let stream = TestStream::new().await;
    let queue = queue_on(&redis.url()).await;
    let env = worker_env(&stream.env(), &redis.url(), queue.name());
    let app = TestApp::start(&env).await;
    let readyz = || async { get(app.ops, "/readyz").await.unwrap() };
    assert_eq!(readyz().await.status, 200);
    let admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let config_set = |name: &'static str, value: &'static str| {
        let mut admin = admin.clone();
        async move {
            redis::cmd("CONFIG")
                .arg(&["SET", name, value][..])
                .query_async::<()>(&mut admin)
                .await
                .unwrap()
        }
    };
    // Whatever Redis holds now is over one byte: every write that could grow it is refused.
    config_set("maxmemory", "1").await;
    let held = order_id();
    stream.publish(&order_created(&held, now_ms() + 300)).await;
    eventually(Duration::from_secs(1), "/readyz says 503", || async {
        let answer = readyz().await;
        answer.status == 503 && answer.body.contains("maxmemory")
    })
    .await;
    let acked = r#"events_handled_total{subject="order:created",outcome="ack"}"#;
    eventually(Duration::from_secs(5), "the schedule refused", || async {
        readyz().await.body.contains("refused a write")
    })
    .await;
    assert_eq!(app.metric(acked).await, 0.0, "acked, yet not in Redis");
    assert_eq!(queue.stats().await.unwrap().pending(), 0);

    config_set("maxmemory", "0").await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(30))
        .await;
    assert_eq!(events, [ExpirationComplete { order_id: held }]);
    assert_eq!(app.metric(acked).await, 1.0);
    eventually(Duration::from_secs(2), "/readyz says 200 again", || async {
        readyz().await.status == 200
    })
    .await;

    // A policy that may evict any key could drop jobs without a word: not ready either.
    config_set("maxmemory", "1gb").await;
    config_set("maxmemory-policy", "allkeys-lru").await;
    let answer = readyz().await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("allkeys-lru"), "{}", answer.body);
    app.stop().await;
    stream.delete().await;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dependency {
    Nats,
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// SIGSTOP: connections stay open, nothing answers (a stalled node, a partition).
    Frozen,
    /// SIGKILL, then started again on the same port and data.
    Killed,
}

/// How long the dependency stays away.
const OUTAGE: Duration = Duration::from_secs(10);
/// Jobs due while it is away; jobs whose `order:created` arrives while it is away (Redis only:
/// with NATS away nothing can arrive).
const DUE_DURING: usize = 50;
const ARRIVING_DURING: usize = 50;

#[tokio::test]
async fn nats_frozen_for_ten_seconds_loses_no_job_and_uses_no_attempt() {
    ride_out(Dependency::Nats, Outage::Frozen).await;
}

#[tokio::test]
async fn nats_killed_for_ten_seconds_loses_no_job_and_uses_no_attempt() {
    ride_out(Dependency::Nats, Outage::Killed).await;
}

#[tokio::test]
async fn redis_frozen_for_ten_seconds_loses_no_job_and_no_arrival() {
    ride_out(Dependency::Redis, Outage::Frozen).await;
}

#[tokio::test]
async fn redis_killed_for_ten_seconds_loses_no_job_and_no_arrival() {
    ride_out(Dependency::Redis, Outage::Killed).await;
}

/// A worker on a NATS and a Redis of the test's own; `dependency` goes away for [`OUTAGE`]
/// while jobs fall due (and, for Redis, while new orders arrive). Readiness names it; after it
/// comes back every job fires exactly once, none is dead-lettered, and no attempt was spent on
/// the outage (three attempts would be gone in seconds otherwise).
async fn ride_out(dependency: Dependency, outage: Outage) {
    let mut nats = NatsServer::start().await;
    let mut redis = RedisServer::start().await;
    let own = TestStream::on(&nats.url()).await;
    let queue = queue_on(&redis.url()).await;
    let mut env = worker_env(&own.env(), &redis.url(), queue.name());
    env.insert("EXPIRATION_MAX_ATTEMPTS".into(), "3".into());
    let app = TestApp::start(&env).await;

    let start = now_ms();
    let due_during: Vec<String> = (0..DUE_DURING).map(|_| order_id()).collect();
    for (i, id) in due_during.iter().enumerate() {
        // From 1 s into the outage to 1 s before its end.
        let due = start + 1_000 + (i as i64 * 8_000 / DUE_DURING as i64);
        own.publish(&order_created(id, due)).await;
    }
    eventually(Duration::from_secs(10), "the jobs scheduled", || async {
        queue
            .stats()
            .await
            .is_ok_and(|stats| stats.pending() == DUE_DURING as u64)
    })
    .await;

    match (dependency, outage) {
        (Dependency::Nats, Outage::Frozen) => nats.freeze(),
        (Dependency::Nats, Outage::Killed) => nats.kill().await,
        (Dependency::Redis, Outage::Frozen) => redis.freeze(),
        (Dependency::Redis, Outage::Killed) => redis.kill().await,
    }
    let down_at = std::time::Instant::now();

    // Orders keep arriving while Redis is away; each is acknowledged only once Redis has it.
    let arriving: Vec<String> = match dependency {
        Dependency::Redis => (0..ARRIVING_DURING).map(|_| order_id()).collect(),
        Dependency::Nats => Vec::new(),
    };
    for id in &arriving {
        own.publish(&order_created(id, start + 12_000)).await;
    }

    let name = match dependency {
        Dependency::Nats => "nats",
        Dependency::Redis => "redis",
    };
    let mut named_after = None;
    while down_at.elapsed() < OUTAGE {
        let ready = get(app.ops, "/readyz").await.unwrap();
        if named_after.is_none() && ready.status == 503 {
            let checks = &ready.json()["checks"];
            assert_ne!(checks[name], "ok", "{}", ready.body);
            named_after = Some(down_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let named_after = named_after.expect("/readyz named the dependency during the outage");
    assert!(
        named_after < Duration::from_secs(5),
        "named after {named_after:?}"
    );
    assert_eq!(app.metric("jobs_dead_lettered_total").await, 0.0);

    match (dependency, outage) {
        (Dependency::Nats, Outage::Frozen) => nats.thaw(),
        (Dependency::Nats, Outage::Killed) => nats.start_again().await,
        (Dependency::Redis, Outage::Frozen) => redis.thaw(),
        (Dependency::Redis, Outage::Killed) => redis.start_again().await,
    }
    let back_at = std::time::Instant::now();
    if dependency == Dependency::Nats {
        own.reconnected().await;
    }

    let all: HashSet<String> = due_during.iter().chain(&arriving).cloned().collect();
    let events = own
        .wait_for::<ExpirationComplete>(all.len(), Duration::from_secs(40))
        .await;
    let fired_in = back_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events_again = own.events::<ExpirationComplete>().await;
    let fired: HashSet<String> = events.iter().map(|e| e.order_id.clone()).collect();
    assert_eq!(fired, all, "every job fired");
    assert_eq!(events_again.len(), all.len(), "no job fired twice");
    eventually(Duration::from_secs(10), "the queue empty", || async {
        queue.stats().await.is_ok_and(|stats| stats.pending() == 0)
    })
    .await;
    assert_eq!(app.metric("jobs_dead_lettered_total").await, 0.0);
    if dependency == Dependency::Nats {
        assert_eq!(
            app.metric("jobs_retried_total").await,
            0.0,
            "an attempt was spent on the outage"
        );
    }
    eprintln!(
        "{dependency:?} {outage:?} for {OUTAGE:?}: /readyz named it after {named_after:?}; all {} jobs fired {fired_in:?} after it came back (postponed {}, retried {})",
        all.len(),
        app.metric("jobs_postponed_total").await,
        app.metric("jobs_retried_total").await,
    );
    app.stop().await;
    own.delete().await;
}
