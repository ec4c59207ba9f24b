//! The worker as processes: killed between claim and publish, stopped with SIGTERM, three
//! replicas, the `inspect` command, and its probes while idle sockets fill the ops port.

use std::collections::HashSet;
use std::time::Duration;

use common::Subject;
use common::events::ExpirationComplete;
use common::testing::{TestStream, eventually, idle_sockets, probe, redis_url};

use super::helpers::*;

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
    let mut first = spawn_worker(&held).await;
    let id = order_id();
    stream.publish(&order_created(&id, now_ms())).await;
    eventually(Duration::from_secs(10), "the job to be claimed", || async {
        queue.stats().await.unwrap().leased == 1
    })
    .await;
    first.kill().await;
    assert!(stream.events::<ExpirationComplete>().await.is_empty());

    let mut second = spawn_worker(&env).await;
    let events = stream
        .wait_for::<ExpirationComplete>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events[0].order_id, id);
    assert_eq!(second.metric("jobs_fired_total").await, 1.0);
    assert_eq!(second.terminate().await.unwrap(), Some(0));
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
    let mut worker = spawn_worker(&env).await;
    let past = now_ms() - 1;
    let jobs: Vec<(String, i64)> = (0..300).map(|_| (order_id(), past)).collect();
    queue.schedule_many(&jobs).await.unwrap();
    eventually(Duration::from_secs(10), "the first fires", || async {
        worker.metric("jobs_fired_total").await >= 1.0
    })
    .await;
    let exit = worker.terminate().await.unwrap();
    let log = worker.log_text();
    assert_eq!(exit, Some(0), "{log}");
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
async fn a_log_written_to_a_file_is_plain_text_without_colour_codes() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let env = worker_env(&stream.env(), &redis_url(), queue.name());
    let mut worker = spawn_worker(&env).await;
    assert_eq!(worker.terminate().await.unwrap(), Some(0));
    let log = worker.log_text();
    assert!(log.contains("expiration worker running"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in a log file:\n{log}");
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
        replicas.push(spawn_worker(&env).await);
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
    for mut replica in replicas {
        assert_eq!(replica.terminate().await.unwrap(), Some(0));
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
        async move { run_queue_tool(&redis_url(), &name, args).await }
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

#[test]
fn help_needs_no_server_and_a_bad_setting_is_one_line_and_exit_code_2() {
    use common::testing::cli;
    let expiration = std::path::Path::new(env!("CARGO_BIN_EXE_expiration"));
    cli::assert_help(
        expiration,
        &[],
        &[
            "REDIS_HOST",
            "NATS_URL",
            "EXPIRATION_LEASE_MS",
            "OPS_PORT",
            "HTTP_MAX_HEADER_BYTES",
        ],
    );
    cli::assert_help(expiration, &["inspect"], &["REDIS_URL", "requeue"]);
    cli::assert_version(expiration, "expiration", env!("CARGO_PKG_VERSION"));
    let unreachable = [
        ("REDIS_HOST", "127.0.0.1"),
        ("NATS_URL", "nats://127.0.0.1:1"),
    ];
    cli::assert_one_line_error(
        expiration,
        &[],
        &cli::with(&unreachable, ("OPS_PORT", "http")),
        "OPS_PORT=`http` is invalid",
    );
    cli::assert_one_line_error(
        expiration,
        &[],
        &cli::with(&unreachable, ("REDIS_URL", "http://user:pw@r:1")),
        "REDIS_URL=`http://<redacted>@r:1` is invalid",
    );
    cli::assert_one_line_error(
        expiration,
        &[],
        &cli::with(&unreachable, ("EXPIRATION_LEASE_MS", "1000")),
        "EXPIRATION_LEASE_MS (1000 ms) must exceed twice EXPIRATION_PUBLISH_TIMEOUT_MS",
    );
    cli::assert_one_line_error(
        expiration,
        &[],
        &cli::with(&unreachable, ("HTTP_MAX_HEADER_BYTES", "2000000")),
        "HTTP_MAX_HEADER_BYTES=`2000000` is invalid: expected a whole number from 8192 to 1048576",
    );
    cli::assert_one_line_error(
        expiration,
        &[],
        &[("REDIS_HOST", "r")],
        "NATS_URL must be set",
    );
    cli::assert_one_line_error(expiration, &["inspect"], &[], "REDIS_HOST must be set");
    // Valid settings, but no Redis there: it cannot start, says why, exits 1.
    let nobody = cli::with(&unreachable, ("REDIS_PORT", "1"));
    let (code, stdout, stderr) = cli::run(expiration, &[], &nobody);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("cannot reach Redis"), "{stdout}{stderr}");
}

#[tokio::test]
async fn probes_are_answered_within_a_second_while_idle_sockets_hold_more_than_the_ops_cap() {
    let stream = TestStream::new().await;
    let queue = test_queue().await;
    let env = worker_env(&stream.env(), &redis_url(), queue.name());
    // The ops port's default cap: 64 connections.
    let mut worker = spawn_worker(&env).await;
    let idle = idle_sockets(worker.port, 74).await;
    // Past the grace of a connection just opened: they are idle now.
    tokio::time::sleep(2 * common::server::HEAD_GRACE).await;
    let probes = probe(
        worker.port,
        &["/healthz", "/readyz"],
        10,
        Duration::from_secs(1),
    )
    .await;
    let (healthz, readyz) = (probes[0], probes[1]);
    println!("with 74 idle sockets and a cap of 64: /healthz {healthz:?}, /readyz {readyz:?}");
    assert_eq!(healthz.answered, 10, "/healthz: {healthz:?}");
    assert_eq!(readyz.answered, 10, "/readyz: {readyz:?}");
    // Ten idle sockets made way for the last ten, one more for the first probe.
    let shed = worker.metric("http_connections_shed_total").await;
    assert!(shed >= 11.0, "{shed} shed");
    drop(idle);
    assert_eq!(worker.terminate().await.unwrap(), Some(0));
}
