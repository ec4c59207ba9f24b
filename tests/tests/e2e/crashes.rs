//! Processes dying mid-run: SIGKILL of either service, a NATS server restart.

use std::time::Duration;

use common::Subject;
use e2e::orders_api::OrdersApi;
use e2e::process::OwnNats;
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

#[tokio::test]
async fn killing_the_expiration_worker_mid_run_loses_no_expiry_and_fires_none_early() {
    let world = Scenario::new(8).await;
    let orders = world.start_orders("kill-exp-orders").await.unwrap();
    let mut expiration = world.start_expiration("kill-exp-expiration").await.unwrap();
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
    expiration.kill().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    expiration.restart().await.unwrap();
    let latency = assert_expired_exactly_once(
        &world.log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(30)),
    )
    .await;
    println!("200 orders, expiration worker SIGKILLed and restarted mid-run: {latency}");
    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn killing_the_orders_service_while_expirations_arrive_loses_no_cancellation() {
    let world = Scenario::new(8).await;
    let mut orders = world.start_orders("kill-orders-orders").await.unwrap();
    let expiration = world
        .start_expiration("kill-orders-expiration")
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
    wait_for_some(&world, Subject::OrderCancelled, 30).await;
    orders.kill().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    orders.restart().await.unwrap();
    let latency = assert_expired_exactly_once(
        &world.log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(30)),
    )
    .await;
    println!("200 orders, orders service SIGKILLed and restarted mid-run: {latency}");
    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn restarting_the_nats_server_mid_run_loses_no_event() {
    let mut nats = OwnNats::start().await.unwrap();
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
    nats.restart().await.unwrap();
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
