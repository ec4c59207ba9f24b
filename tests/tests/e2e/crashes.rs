//! Processes dying mid-run: SIGKILL of either service, a NATS server restart.

use std::time::Duration;

use common::Subject;
use e2e::orders_api::OrdersApi;
use e2e::process::NatsServer;
use e2e::scenario::Scenario;

use super::support::{assert_expired_exactly_once, last_expiry, place_orders, until};

/// Waits until `count` messages of `subject` are on the stream.
async fn wait_for_some(world: &Scenario, subject: Subject, count: usize) {
    world
        .log
        .wait_until(
            Duration::from_secs(30),
            &format!("{count} {subject} events"),
            |all| all.iter().filter(|l| l.subject == subject).count() >= count,
        )
        .await;
}

/// Which service a run kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Expiration,
    Orders,
}

/// 200 orders; once `count` events of `subject` are out, SIGKILLs `victim` and restarts it 0.7 s
/// later; then checks every guarantee and prints the expiry latency.
async fn kill_mid_run(victim: Victim, subject: Subject, count: usize, name: &str) {
    let world = Scenario::new(8).await;
    let mut orders = world.start_orders(&format!("{name}-orders")).await.unwrap();
    let mut expiration = world
        .start_expiration(&format!("{name}-expiration"))
        .await
        .unwrap();
    let api = OrdersApi::new(&orders.url());
    let placed = place_orders(&world, &[api], 200, 4, Duration::from_millis(500), 4).await;
    wait_for_some(&world, subject, count).await;
    let killed = match victim {
        Victim::Expiration => &mut expiration,
        Victim::Orders => &mut orders,
    };
    killed.kill().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    killed.restart().await.unwrap();
    let deadline = until(last_expiry(&placed), Duration::from_secs(30));
    let latency = assert_expired_exactly_once(&world.log, &placed, deadline).await;
    println!("200 orders, {victim:?} SIGKILLed and restarted mid-run: {latency}");
    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn killing_the_expiration_worker_mid_run_loses_no_expiry_and_fires_none_early() {
    kill_mid_run(
        Victim::Expiration,
        Subject::ExpirationComplete,
        40,
        "kill-exp",
    )
    .await;
}

#[tokio::test]
async fn killing_the_orders_service_while_expirations_arrive_loses_no_cancellation() {
    kill_mid_run(Victim::Orders, Subject::OrderCancelled, 30, "kill-orders").await;
}

#[tokio::test]
async fn restarting_the_nats_server_mid_run_loses_no_event() {
    let mut nats = NatsServer::start().await;
    let world = Scenario::on_nats(&nats.url(), 8).await;
    let orders = world.start_orders("nats-restart-orders").await.unwrap();
    let expiration = world
        .start_expiration("nats-restart-expiration")
        .await
        .unwrap();
    let placed = place_orders(
        &world,
        &[OrdersApi::new(&orders.url())],
        200,
        4,
        Duration::from_millis(500),
        4,
    )
    .await;
    wait_for_some(&world, Subject::ExpirationComplete, 40).await;
    nats.restart().await;
    // The log's consumer lived on the old server process: read the stream afresh from its store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = world.stream.log().await;
    let latency = assert_expired_exactly_once(
        &log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(40)),
    )
    .await;
    println!("200 orders, NATS server restarted mid-run: {latency}");
    drop((orders, expiration, log));
    world.finish().await;
}
