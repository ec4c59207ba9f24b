//! Processes dying mid-run: SIGKILL of either service, a broker restart; on both transports.

use std::time::Duration;

use common::Subject;
use common::bus::Transport;
use common::testing::servers::{Nats, OwnServer, SpeaksNats, StanFile};
use e2e::orders_api::OrdersApi;
use e2e::process::StanServer;
use e2e::scenario::Scenario;

use super::support::{
    Expired, Republish, assert_expired_exactly_once, assert_expired_once, last_expiry,
    place_orders, until, wait_for_some,
};

/// Which service a run kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    Expiration,
    Orders,
}

/// 200 orders; once `count` events of `subject` are out, SIGKILLs `victim` and restarts it 0.7 s
/// later; then checks every guarantee and prints the expiry latency. On NATS Streaming, which
/// does not de-duplicate, an event published just before the kill may be published again by
/// the restarted process: allowed and counted, as long as every order still changes once.
async fn kill_mid_run(
    transport: Transport,
    victim: Victim,
    subject: Subject,
    count: usize,
    name: &str,
) {
    let world = Scenario::on(transport, 8).await;
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
    let republish = Republish::on(transport);
    let expired = assert_expired_once(&world.log, &placed, deadline, republish).await;
    println!("200 orders, {transport}, {victim:?} SIGKILLed and restarted mid-run: {expired}");
    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn killing_the_expiration_worker_mid_run_loses_no_expiry_and_fires_none_early() {
    kill_mid_run(
        Transport::JetStream,
        Victim::Expiration,
        Subject::ExpirationComplete,
        40,
        "kill-exp",
    )
    .await;
}

#[tokio::test]
async fn on_nats_streaming_killing_the_expiration_worker_mid_run_cancels_each_order_once() {
    kill_mid_run(
        Transport::Streaming,
        Victim::Expiration,
        Subject::ExpirationComplete,
        40,
        "stan-kill-exp",
    )
    .await;
}

#[tokio::test]
async fn killing_the_orders_service_while_expirations_arrive_loses_no_cancellation() {
    kill_mid_run(
        Transport::JetStream,
        Victim::Orders,
        Subject::OrderCancelled,
        30,
        "kill-orders",
    )
    .await;
}

#[tokio::test]
async fn on_nats_streaming_killing_the_orders_service_mid_run_cancels_each_order_once() {
    kill_mid_run(
        Transport::Streaming,
        Victim::Orders,
        Subject::OrderCancelled,
        30,
        "stan-kill-orders",
    )
    .await;
}

#[tokio::test]
async fn restarting_the_nats_server_mid_run_loses_no_event() {
    let expired = restart_broker_mid_run::<Nats>(Transport::JetStream, "nats-restart").await;
    println!("200 orders, NATS server restarted mid-run: {expired}");
}

/// The file store (k8s/streaming's broker) keeps everything across a restart: the services'
/// sessions, durable groups and every unacked message, so nothing is lost.
#[tokio::test]
async fn restarting_a_nats_streaming_broker_with_a_file_store_mid_run_loses_no_event() {
    let expired = restart_broker_mid_run::<StanFile>(Transport::Streaming, "stan-restart").await;
    println!("200 orders, NATS Streaming (file store) restarted mid-run: {expired}");
}

/// 200 orders through a broker of the test's own speaking `transport`, SIGKILLed and restarted
/// on its store once 40 expiries are out; then every guarantee, read from the restarted broker's
/// store afresh (the log's consumer lived on the old process).
async fn restart_broker_mid_run<S: SpeaksNats>(transport: Transport, name: &str) -> Expired {
    let mut broker = OwnServer::<S>::start().await;
    let world = Scenario::on_server(transport, &broker.url(), 8).await;
    let orders = world.start_orders(&format!("{name}-orders")).await.unwrap();
    let expiration = world
        .start_expiration(&format!("{name}-expiration"))
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
    broker.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = world.bus.log().await;
    // JetStream drops a re-publish by its message id; NATS Streaming stores a publish whose ack
    // the restart lost a second time when it is sent again.
    let republish = Republish::on(transport);
    let expired = assert_expired_once(
        &log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(40)),
        republish,
    )
    .await;
    drop((orders, expiration, log));
    world.finish().await;
    expired
}

/// The course's broker keeps everything in memory: restarted, it has forgotten the services'
/// sessions, their durable groups and every message not yet delivered (README, "Drop into the
/// course's cluster"). What the services owe then: notice, open new sessions and subscribe again
/// without being restarted, and serve the orders that come after as before.
#[tokio::test]
async fn after_the_courses_memory_broker_restarts_both_services_carry_on_without_a_restart() {
    let mut broker = StanServer::start().await;
    let world = Scenario::on_server(Transport::Streaming, &broker.url(), 8).await;
    let orders = world.start_orders("stan-memory-orders").await.unwrap();
    let expiration = world
        .start_expiration("stan-memory-expiration")
        .await
        .unwrap();
    let api = OrdersApi::new(&orders.url());
    let before = place_orders(&world, std::slice::from_ref(&api), 20, 1, Duration::ZERO, 4).await;
    assert_expired_exactly_once(
        &world.log,
        &before,
        until(last_expiry(&before), Duration::from_secs(20)),
    )
    .await;

    broker.restart().await;
    // Both report the lost session on /readyz, then open new ones.
    for service in [&orders, &expiration] {
        common::testing::eventually(Duration::from_secs(20), "ready again", || async {
            common::testing::get(service.port, "/readyz")
                .await
                .is_ok_and(|answer| answer.status == 200)
        })
        .await;
    }
    // The harness's own session went with the broker's memory too: once it has a new one, a
    // fresh log (the old one's subscriptions ended with the session).
    let check = world.bus.bus().check();
    common::testing::eventually(
        Duration::from_secs(20),
        "the harness's new session",
        || async { check().await.is_ok() },
    )
    .await;
    let log = world.bus.log().await;
    let after = place_orders(&world, &[api], 20, 1, Duration::ZERO, 4).await;
    let latency = assert_expired_exactly_once(
        &log,
        &after,
        until(last_expiry(&after), Duration::from_secs(20)),
    )
    .await;
    println!("20 orders after the course's memory-store broker restarted: {latency}");
    drop((orders, expiration, log));
    world.finish().await;
}
