//! The queue alone: keyed scheduling, exclusive claims, leases, retries, dead letters, wake-ups.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::bus::Backoff;
use common::testing::{eventually, redis_url};
use expiration::metrics::Metrics;
use expiration::queue::{CANCELLED_TTL, Job, Queue};
use expiration::worker::{
    BoxError, JobHandler, UNAVAILABLE_RETRY, Unavailable, Worker, WorkerOptions,
};

use super::helpers::*;

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
async fn an_older_version_never_undoes_a_newer_one() {
    let queue = test_queue().await;
    let (first, moved) = (now_ms() + 60_000, now_ms() + 120_000);
    // A newer version with an unchanged due time is respected all the same.
    queue.schedule_versioned("same", first, 0).await.unwrap();
    let unchanged = queue.schedule_versioned("same", first, 2).await.unwrap();
    assert_eq!(unchanged.unchanged, 1);
    let late = queue.schedule_versioned("same", moved, 1).await.unwrap();
    assert_eq!(
        (late.stale, late.moved),
        (1, 0),
        "version 2 is the last word"
    );
    queue.cancel(&["same"]).await.unwrap();
    let newer = queue.schedule_versioned("order", moved, 1).await.unwrap();
    assert_eq!(newer.added, 1);
    // The version-0 order:created handled after its version-1 move (redelivered, or handled
    // concurrently): left alone, whether alone or in a batch.
    let older = queue.schedule_versioned("order", first, 0).await.unwrap();
    assert_eq!((older.stale, older.moved, older.added), (1, 0, 0));
    let batch = queue
        .schedule_many(&[("order", first, 0), ("order", first + 1, 1)])
        .await
        .unwrap();
    assert_eq!(
        (batch.stale, batch.moved),
        (1, 1),
        "the same version still moves it"
    );
    assert_eq!(
        queue.stats().await.unwrap().next_due_ms,
        Some(first + 1),
        "version 1's last word"
    );
    let newest = queue.schedule_versioned("order", moved, 2).await.unwrap();
    assert_eq!(newest.moved, 1);
    // Once the job is gone, its version is forgotten with it: nothing is kept per fired order.
    queue.cancel(&["order"]).await.unwrap();
    queue
        .schedule_versioned("other", now_ms() - 10, 3)
        .await
        .unwrap();
    let claim = queue.claim(10, LEASE).await.unwrap();
    assert_eq!(
        queue
            .complete(&[(claim.jobs[0].id.clone(), claim.jobs[0].token)])
            .await
            .unwrap(),
        1
    );
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let versions: u64 = redis::cmd("EXISTS")
        .arg(format!("{}:versions", queue.name().tag()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(versions, 0, "no version left behind by cancel or complete");
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn concurrent_schedules_share_calls_and_each_gets_its_own_outcome() {
    let queue = test_queue().await;
    let due = now_ms() + 60_000;
    queue.schedule_versioned("known", due, 0).await.unwrap();
    queue.schedule_versioned("newer", due, 5).await.unwrap();
    queue.cancel(&["cancelled"]).await.unwrap();
    // 600 at once: they go to Redis in a few batched calls, in arrival order.
    let calls = (0..600).map(|n| {
        let queue = queue.clone();
        async move {
            let (id, at, version) = match n {
                0 => ("known".to_string(), due, 0),
                1 => ("newer".to_string(), due + 5, 4),
                2 => ("cancelled".to_string(), due, 0),
                n => (format!("job-{n}"), due + n, 0),
            };
            (n, queue.schedule_versioned(&id, at, version).await.unwrap())
        }
    });
    for (n, scheduled) in futures::future::join_all(calls).await {
        let got = (
            scheduled.added,
            scheduled.unchanged,
            scheduled.stale,
            scheduled.skipped,
        );
        let want = match n {
            0 => (0, 1, 0, 0),
            1 => (0, 0, 1, 0),
            2 => (0, 0, 0, 1),
            _ => (1, 0, 0, 0),
        };
        assert_eq!(got, want, "request {n}");
    }
    assert_eq!(queue.stats().await.unwrap().waiting, 2 + 597);
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn each_claim_has_its_own_token_even_within_one_millisecond() {
    let queue = test_queue().await;
    let past = now_ms() - 10;
    let jobs: Vec<(String, i64)> = (0..50).map(|n| (format!("job-{n}"), past)).collect();
    queue.schedule_many(&jobs).await.unwrap();
    let mut tokens = Vec::new();
    for _ in 0..50 {
        let claim = queue.claim(1, LEASE).await.unwrap();
        tokens.push(claim.jobs[0].token);
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens only grow: {tokens:?}"
    );
    // A token is the lease expiry: about now + lease.
    let lease_end = now_ms() as u64 + LEASE.as_millis() as u64;
    assert!(tokens[0] > lease_end - 5_000 && tokens[49] < lease_end + 5_000);
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

/// The raw connection to the local stack's Redis and the key of `queue`'s cancellation marks.
async fn marks_of(queue: &Queue) -> (redis::aio::MultiplexedConnection, String) {
    let conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (conn, format!("{}:cancelled", queue.name().tag()))
}

#[tokio::test]
async fn cancellation_marks_expire_a_day_after_the_last_cancellation() {
    let queue = test_queue().await;
    let (mut conn, marks) = marks_of(&queue).await;
    queue.cancel(&["gone"]).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&marks)
        .query_async(&mut conn)
        .await
        .unwrap();
    let lifetime = CANCELLED_TTL.as_millis() as i64;
    assert!(
        ttl > lifetime - 60_000 && ttl <= lifetime,
        "the marks expire in {ttl} ms, not about {lifetime}"
    );
    queue.delete().await.unwrap();
}

#[tokio::test]
async fn marks_older_than_their_lifetime_are_pruned_by_the_next_schedule() {
    let queue = test_queue().await;
    let (mut conn, marks) = marks_of(&queue).await;
    queue.cancel(&["fresh"]).await.unwrap();
    // A hundred marks a minute past their lifetime, as a day of cancellations leaves them.
    let old = now_ms() - CANCELLED_TTL.as_millis() as i64 - 60_000;
    let mut zadd = redis::cmd("ZADD");
    zadd.arg(&marks);
    for i in 0..100 {
        zadd.arg(old).arg(format!("stale-{i}"));
    }
    zadd.query_async::<()>(&mut conn).await.unwrap();
    let scheduled = queue.schedule("stale-0", now_ms() + 60_000).await.unwrap();
    let left: u64 = redis::cmd("ZCARD")
        .arg(&marks)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        left, 1,
        "{left} of 101 marks left; only the fresh one should be"
    );
    assert_eq!(
        (scheduled.added, scheduled.skipped),
        (1, 0),
        "a mark past its lifetime skips nothing"
    );
    let fresh = queue.schedule("fresh", now_ms() + 60_000).await.unwrap();
    assert_eq!(
        (fresh.added, fresh.skipped),
        (0, 1),
        "a fresh mark still does"
    );
    queue.delete().await.unwrap();
}

/// Fails while `failing` is set, reports its dependency down while `unavailable` is; counts
/// calls.
#[derive(Default)]
struct Flaky {
    failing: AtomicBool,
    unavailable: AtomicBool,
    calls: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("NATS is away")]
struct Away;

struct FlakyHandler(Arc<Flaky>);

impl JobHandler for FlakyHandler {
    async fn fire(&self, _: &Job) -> Result<(), BoxError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if self.0.unavailable.load(Ordering::SeqCst) {
            Err(Box::new(Unavailable(Box::new(Away))))
        } else if self.0.failing.load(Ordering::SeqCst) {
            Err(Box::new(Away))
        } else {
            Ok(())
        }
    }
}

/// A worker on `queue` firing with a [`FlakyHandler`]; returns it, the handler's switches and
/// the worker's counters.
fn flaky_worker(
    queue: &Queue,
    options: WorkerOptions,
) -> (Worker<FlakyHandler>, Arc<Flaky>, Metrics) {
    let handler = Arc::new(Flaky::default());
    let metrics = Metrics::default();
    let worker = Worker::new(
        queue.clone(),
        FlakyHandler(handler.clone()),
        options,
        metrics.clone(),
    );
    (worker, handler, metrics)
}

#[tokio::test]
async fn a_failing_job_is_retried_after_backoff_then_dead_lettered_and_can_be_requeued() {
    let queue = test_queue().await;
    let (worker, handler, metrics) = flaky_worker(
        &queue,
        WorkerOptions {
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_millis(300),
                max: Duration::from_secs(1),
            },
            ..WorkerOptions::default()
        },
    );
    handler.failing.store(true, Ordering::SeqCst);
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

#[tokio::test]
async fn a_job_whose_handler_dependency_is_unavailable_is_postponed_without_using_an_attempt() {
    let queue = test_queue().await;
    let (worker, handler, metrics) = flaky_worker(
        &queue,
        WorkerOptions {
            max_attempts: 2,
            ..WorkerOptions::default()
        },
    );
    handler.unavailable.store(true, Ordering::SeqCst);
    queue.schedule("a", now_ms() - 10).await.unwrap();
    // More failures than max_attempts allows, each postponed by UNAVAILABLE_RETRY.
    for _ in 0..3 {
        eventually(Duration::from_secs(5), "the job due again", || async {
            worker.step().await.unwrap().claimed == 1
        })
        .await;
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.waiting, stats.dead), (1, 0));
        let wait = stats.next_due_ms.unwrap() - stats.now_ms;
        assert!(
            (800..=1000).contains(&wait),
            "due again in about {UNAVAILABLE_RETRY:?}, not {wait} ms"
        );
    }
    assert_eq!((metrics.postponed.get(), metrics.retried.get()), (3, 0));
    handler.unavailable.store(false, Ordering::SeqCst);
    handler.failing.store(true, Ordering::SeqCst);
    // The attempts were given back: two ordinary failures still make the dead letter.
    eventually(Duration::from_secs(10), "the dead letter", || async {
        worker.step().await.unwrap();
        queue.stats().await.unwrap().dead == 1
    })
    .await;
    assert_eq!(queue.dead().await.unwrap()[0].attempts, 2);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 5);
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

/// Records each fire after a short publish-like delay.
struct Slow(tokio::sync::mpsc::UnboundedSender<String>);

impl JobHandler for Slow {
    async fn fire(&self, job: &Job) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let _ = self.0.send(job.id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn once_a_burst_is_drained_the_worker_rests_instead_of_claiming_again_and_again() {
    let queue = test_queue().await;
    let past = now_ms() - 10;
    let jobs: Vec<(String, i64)> = (0..3000).map(|n| (format!("job-{n}"), past)).collect();
    queue.schedule_many(&jobs).await.unwrap();
    let (fired, mut fires) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Metrics::default();
    let options = WorkerOptions {
        // Claims of up to 100; fires that take a while free the room a bit at a time, so two
        // claims are in flight at once, up to the end of the burst.
        concurrency: 50,
        ..WorkerOptions::default()
    };
    let worker = Worker::new(queue.clone(), Slow(fired), options, metrics.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    for _ in 0..3000 {
        tokio::time::timeout(Duration::from_secs(20), fires.recv())
            .await
            .expect("every job fires")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = metrics.claims.get();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_claims = metrics.claims.get() - before;
    // Nothing is due: a claim per max_idle (1 s) is the safety net, nothing more.
    assert!(
        idle_claims <= 3,
        "{idle_claims} claims in 1.5 s of an empty queue"
    );
    shutdown.cancel();
    running.await.unwrap();
    queue.delete().await.unwrap();
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

#[tokio::test]
async fn a_redis_that_refuses_info_is_used_without_waiting_for_replicas() {
    // A managed Redis may forbid INFO: REDIS_WAIT_REPLICAS=auto then waits for no replica (and
    // says so) rather than keeping the worker from starting.
    let admin = redis::Client::open(redis_url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let user = common::testing::unique_name("noinfo").replace('-', "_");
    redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", ">pw", "~*", "&*", "+@all", "-info"][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let url = redis_url().replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let queue = queue_on(&url).await;
    assert_eq!(queue.replicas_required(), 0);
    // Nor does it keep /readyz failing: Redis answered, which is all a ping proves.
    assert_eq!(queue.ready().await, Ok(()));
    assert_eq!(queue.schedule("x", now_ms()).await.unwrap().added, 1);
    queue.delete().await.unwrap();
    redis::cmd("ACL")
        .arg(&["DELUSER", &user][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_that_never_ran_the_scripts_runs_them_without_a_separate_load() {
    // A user who may run scripts but not manage the script cache. The first call on a server
    // (a new one, a restarted one, a replica just promoted) finds no script there: it must run
    // the script's body where the call went, not load it in a separate step, which on a cluster
    // whose map the client has not caught up with can land on another node.
    let redis = common::testing::RedisServer::start().await;
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "runner",
            "on",
            ">secret",
            "~*",
            "&*",
            "+@all",
            "-script|load",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = redis.url().replace("redis://", "redis://runner:secret@");
    let queue = queue_on(&url).await;
    let job = order_id();
    queue
        .schedule(&job, now_ms() - 1)
        .await
        .expect("the first script on this server");

    // As a restarted or newly promoted server would, it forgets every script.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let claim = queue
        .claim(10, Duration::from_secs(30))
        .await
        .expect("a script the server forgot");
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(
        queue.complete(&[(job, claim.jobs[0].token)]).await.unwrap(),
        1
    );
    assert_eq!(queue.stats().await.unwrap().pending(), 0);
}
