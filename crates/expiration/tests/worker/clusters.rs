//! The worker on a Redis Cluster of the test's own (three masters, a replica each, on loopback):
//! every operation through the cluster client, and the master holding the queue SIGKILLed while
//! jobs are pending and new ones arrive.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Subject;
use common::events::ExpirationComplete;
use common::testing::clusters::RedisCluster;
use common::testing::{TestBus, TestStream, eventually};
use expiration::queue::{Queue, RedisTarget};

use super::helpers::*;

#[tokio::test]
async fn on_a_redis_cluster_the_worker_schedules_fires_and_cancels() {
    let cluster = RedisCluster::start(3, 1).await;
    let stream = TestStream::new().await;
    let queue = queue_on(&cluster.url_list()).await;
    assert!(
        queue.on_cluster(),
        "a list of nodes selects the cluster client"
    );
    assert_eq!(
        queue.replicas_required(),
        1,
        "auto: the queue's master has a replica, so every schedule waits for it"
    );
    let env = worker_env(&stream.env(), &cluster.url_list(), queue.name());
    let app = TestApp::start(&env).await;
    assert_eq!(app.queue.replicas_required(), 1);

    // The worker sleeps until its only job, a minute away...
    let later = order_id();
    stream
        .publish(&order_created(&later, now_ms() + 60_000))
        .await;
    eventually(Duration::from_secs(10), "the far job scheduled", || async {
        queue.stats().await.is_ok_and(|stats| stats.pending() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...until another replica schedules an earlier one: only the wake channel, published by a
    // script on the queue's master and heard on another node, can tell it.
    // That replica reaches the cluster through one node, as through a configuration endpoint
    // with REDIS_CLUSTER=true: the client learns the rest.
    let one_node = RedisTarget {
        cluster: true,
        ..RedisTarget::parse(&cluster.urls()[0])
    };
    let other = Queue::open(&one_node, queue.name().clone()).await.unwrap();
    assert!(other.on_cluster());
    let soon = order_id();
    let scheduled = Instant::now();
    other.schedule(&soon, now_ms()).await.unwrap();
    let fired = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(5))
        .await;
    assert_eq!(fired[0].order_id, soon);
    assert!(
        scheduled.elapsed() < Duration::from_secs(2),
        "woken through the cluster: fired {:?} after scheduling",
        scheduled.elapsed()
    );

    // A hundred orders, a fifth of them cancelled before they are due.
    let due = now_ms() + 2000;
    let ids: Vec<String> = (0..100).map(|_| order_id()).collect();
    for id in &ids {
        stream.publish(&order_created(id, due)).await;
    }
    let cancelled: HashSet<String> = ids.iter().step_by(5).cloned().collect();
    eventually(
        Duration::from_secs(10),
        "100 more jobs scheduled",
        || async {
            queue
                .stats()
                .await
                .is_ok_and(|stats| stats.pending() == 101)
        },
    )
    .await;
    for id in &cancelled {
        stream.publish(&order_cancelled(id)).await;
    }
    stream
        .wait_for::<ExpirationComplete>(81, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let fired: Vec<String> = stream
        .events::<ExpirationComplete>()
        .await
        .into_iter()
        .map(|e| e.order_id)
        .collect();
    assert_eq!(fired.len(), 81, "each job fired once, the cancelled never");
    let expected: HashSet<String> = ids
        .iter()
        .filter(|id| !cancelled.contains(*id))
        .chain([&soon])
        .cloned()
        .collect();
    assert_eq!(fired.into_iter().collect::<HashSet<_>>(), expected);
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.pending(), stats.dead),
        (1, 0),
        "only the far job is left"
    );
    // The queue tool reads the same variables.
    let report = run_queue_tool(&cluster.url_list(), queue.name(), &["inspect"]).await;
    assert!(
        report.contains("pending      1 (1 waiting, 0 being fired)"),
        "{report}"
    );
    app.stop().await;
    queue.delete().await.unwrap();
    stream.delete().await;
}

/// Jobs pending when the master dies, due a few seconds after the kill.
const PENDING: usize = 1000;

#[tokio::test]
async fn killing_the_master_of_the_queue_mid_run_loses_no_acknowledged_job() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let stream = TestStream::new().await;
    let log = stream.log().await;
    let queue = queue_on(&cluster.url_list()).await;
    let env = worker_env(&stream.env(), &cluster.url_list(), queue.name());
    let app = TestApp::start(&env).await;
    let due_at: Arc<Mutex<HashMap<String, i64>>> = Arc::default();

    let first_due = now_ms() + 6000;
    for n in 0..PENDING {
        let id = order_id();
        let due = first_due + (n as i64 % 1000);
        due_at.lock().unwrap().insert(id.clone(), due);
        stream.publish(&order_created(&id, due)).await;
    }
    eventually(Duration::from_secs(20), "1,000 jobs scheduled", || async {
        queue
            .stats()
            .await
            .is_ok_and(|stats| stats.pending() == PENDING as u64)
    })
    .await;

    // New orders keep arriving, due 1.5 s after they are placed, through the kill and after.
    let arriving = tokio::spawn({
        let (publisher, due_at) = (stream.publisher(), due_at.clone());
        async move {
            for _ in 0..400 {
                let id = order_id();
                let due = now_ms() + 1500;
                due_at.lock().unwrap().insert(id.clone(), due);
                publisher
                    .publish(&order_created(&id, due))
                    .await
                    .expect("order:created published");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let key = format!("{}:due", queue.name().tag());
    let master = cluster.master_of(&key).await;
    let pending_at_kill = queue.stats().await.unwrap().pending();
    let killed_at = Instant::now();
    cluster.kill(master).await;
    let promoted = cluster
        .wait_for_failover(&key, master, Duration::from_secs(30))
        .await;
    let failover = killed_at.elapsed();
    // Until a replica is back, schedules cannot be confirmed and their events wait: the old
    // master comes back as the new one's replica, as an operator or Kubernetes would bring it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_again(master).await;
    cluster
        .wait_for_replica(&key, Duration::from_secs(30))
        .await;
    arriving.await.unwrap();

    let wanted: HashMap<String, i64> = due_at.lock().unwrap().clone();
    log.wait_until(
        Duration::from_secs(90),
        &format!("{} expiration:complete events", wanted.len()),
        |all| {
            all.iter()
                .filter(|l| l.subject == common::Subject::ExpirationComplete)
                .map(|l| l.decode::<ExpirationComplete>().order_id)
                .collect::<HashSet<_>>()
                .len()
                >= wanted.len()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events = log.events::<ExpirationComplete>();
    let mut first: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for (event, at) in &events {
        first.entry(event.order_id.clone()).or_insert(*at);
    }
    let lost: Vec<&String> = wanted
        .keys()
        .filter(|id| !first.contains_key(*id))
        .collect();
    let duplicates = events.len() - first.len();
    let mut worst = 0i64;
    for (id, due) in &wanted {
        let fired = first[id].timestamp_millis();
        assert!(fired >= *due, "job {id} fired {} ms early", due - fired);
        worst = worst.max(fired - due);
    }
    println!(
        "Redis Cluster failover: {pending_at_kill} jobs pending at the kill, {} in all, lost {}, \
         duplicates {duplicates}, failover to node {promoted} in {failover:?}, worst lateness {worst} ms",
        wanted.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "jobs lost: {lost:?}");
    assert_eq!(queue.stats().await.unwrap().dead, 0);
    app.stop().await;
    queue.delete().await.unwrap();
    stream.delete().await;
}

#[tokio::test]
async fn after_a_failover_a_handle_that_was_idle_runs_its_scripts_on_the_new_master() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let queue = queue_on(&cluster.url_list()).await;
    let job = order_id();
    queue.schedule(&job, now_ms() + 60_000).await.unwrap();

    // The master dies and comes back as its successor's replica while this handle is idle: its
    // map of the cluster still names the old master's address, which now redirects, and the new
    // master has never run the queue's scripts.
    let key = format!("{}:due", queue.name().tag());
    let master = cluster.master_of(&key).await;
    cluster.kill(master).await;
    cluster
        .wait_for_failover(&key, master, Duration::from_secs(30))
        .await;
    cluster.start_again(master).await;
    cluster
        .wait_for_replica(&key, Duration::from_secs(30))
        .await;

    let stats = queue
        .stats()
        .await
        .expect("the first script after the failover");
    assert_eq!(stats.pending(), 1, "the job replicated before the kill");
    let claim = queue.claim(10, Duration::from_secs(30)).await.unwrap();
    assert!(claim.jobs.is_empty(), "not due for a minute");
    assert_eq!(queue.cancel(&[job.as_str()]).await.unwrap(), 1);
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn a_schedule_is_acked_only_once_a_replica_holds_it() {
    let cluster = RedisCluster::start(3, 1).await;
    let bus = TestBus::JetStream(Box::new(TestStream::new().await));
    let queue = queue_on(&cluster.url_list()).await;
    let TestBus::JetStream(stream) = &bus else {
        unreachable!()
    };
    let mut env = worker_env(&stream.env(), &cluster.url_list(), queue.name());
    env.insert("REDIS_WAIT_TIMEOUT_MS".into(), "300".into());
    let app = TestApp::start(&env).await;
    assert_eq!(app.queue.replicas_required(), 1);

    // The replica of the queue's master stops answering: the master still takes the schedule,
    // but no replica confirms it, so its order:created stays unacked.
    let key = format!("{}:due", queue.name().tag());
    let master = cluster.master_of(&key).await;
    let replica = cluster.replicas_of(master).await[0];
    cluster.signal(replica, "STOP");
    let id = order_id();
    bus.publish(&order_created(&id, now_ms() + 60_000)).await;
    eventually(
        Duration::from_secs(5),
        "the master holds the job",
        || async { queue.stats().await.is_ok_and(|stats| stats.pending() == 1) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bus.pending_acks(Subject::OrderCreated, "expiration-service")
            .await,
        1,
        "not acked while no replica holds the schedule"
    );

    // The replica catches up: the retried schedule is confirmed and the event acked.
    cluster.signal(replica, "CONT");
    bus.all_acked(Subject::OrderCreated, "expiration-service")
        .await;
    assert_eq!(queue.stats().await.unwrap().pending(), 1);
    app.stop().await;
    queue.delete().await.unwrap();
    bus.delete().await;
}
