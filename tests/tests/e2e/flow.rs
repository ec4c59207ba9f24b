//! The demo's flow and the many-orders runs, with every process healthy.

use std::time::Duration;

use common::bus::Transport;
use common::events::{ExpirationComplete, OrderCancelled};
use e2e::orders_api::OrdersApi;
use e2e::scenario::Scenario;

use super::support::{
    Republish, TwoOfEach, assert_expired_exactly_once, assert_expired_once, last_expiry,
    place_orders, start_two_of_each, until,
};

#[tokio::test]
async fn an_unpaid_order_expires_and_is_cancelled_while_a_paid_one_stays_complete() {
    expiry_flow(Transport::JetStream).await;
}

#[tokio::test]
async fn on_nats_streaming_an_unpaid_order_expires_and_is_cancelled_while_a_paid_one_stays_complete()
 {
    expiry_flow(Transport::Streaming).await;
}

async fn expiry_flow(transport: Transport) {
    let world = Scenario::on(transport, 2).await;
    let orders = world.start_orders("flow-orders").await.unwrap();
    let expiration = world.start_expiration("flow-expiration").await.unwrap();
    let api = OrdersApi::new(&orders.url());
    let alice = world.buyer("alice@example.com");

    let unpaid_ticket = world.peers.ticket_created("Concert", 20.0).await.unwrap();
    let paid_ticket = world.peers.ticket_created("Opera", 12.5).await.unwrap();
    let unpaid = api
        .reserve_announced(&alice.cookie, &unpaid_ticket.id)
        .await
        .unwrap();
    let paid = api
        .reserve_announced(&alice.cookie, &paid_ticket.id)
        .await
        .unwrap();
    assert_eq!(
        (unpaid.status.as_u16(), paid.status.as_u16()),
        (201, 201),
        "{} / {}",
        unpaid.body,
        paid.body
    );
    let unpaid_id = unpaid.json()["id"].as_str().unwrap().to_owned();
    let paid_id = paid.json()["id"].as_str().unwrap().to_owned();
    world.peers.payment_created(&paid_id).await.unwrap();
    api.wait_status(&alice.cookie, &paid_id, "complete", Duration::from_secs(10))
        .await
        .unwrap();

    world
        .log
        .wait_for::<ExpirationComplete>(2, Duration::from_secs(15))
        .await;
    let cancelled = world
        .log
        .wait_for::<OrderCancelled>(1, Duration::from_secs(15))
        .await;
    assert_eq!(cancelled[0].0.id, unpaid_id);
    assert_eq!(cancelled[0].0.version, 1);
    assert_eq!(cancelled[0].0.ticket.id, unpaid_ticket.id);
    api.wait_status(
        &alice.cookie,
        &unpaid_id,
        "cancelled",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // The paid order's expiry arrived too; give orders a moment to (wrongly) act on it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        world.log.events::<OrderCancelled>().len(),
        1,
        "the paid order was cancelled"
    );
    let shown = api.show(&alice.cookie, &paid_id).await.unwrap();
    assert_eq!(shown.json()["status"], "complete");

    // The freed ticket can be reserved again; the paid one cannot.
    let bob = world.buyer("bob@example.com");
    assert_eq!(
        api.reserve(&bob.cookie, &unpaid_ticket.id)
            .await
            .unwrap()
            .status,
        201
    );
    assert_eq!(
        api.reserve(&bob.cookie, &paid_ticket.id)
            .await
            .unwrap()
            .status,
        400
    );

    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn two_hundred_orders_with_staggered_windows_are_each_cancelled_exactly_once_unless_paid() {
    let world = Scenario::new(8).await;
    let orders = world.start_orders("many-orders").await.unwrap();
    let expiration = world.start_expiration("many-expiration").await.unwrap();
    let placed = place_orders(
        &world,
        &[OrdersApi::new(&orders.url())],
        200,
        4,
        Duration::from_millis(400),
        4,
    )
    .await;
    let latency = assert_expired_exactly_once(
        &world.log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(20)),
    )
    .await;
    println!("200 orders, all processes healthy: {latency}");
    drop((orders, expiration));
    world.finish().await;
}

#[tokio::test]
async fn two_replicas_of_each_service_cancel_every_unpaid_order_exactly_once() {
    two_replicas_of_each(Transport::JetStream).await;
}

#[tokio::test]
async fn on_nats_streaming_two_replicas_of_each_service_cancel_every_unpaid_order_exactly_once() {
    two_replicas_of_each(Transport::Streaming).await;
}

async fn two_replicas_of_each(transport: Transport) {
    let world = Scenario::on(transport, 8).await;
    let TwoOfEach { processes, apis } = start_two_of_each(&world, "replicas").await;
    let placed = place_orders(&world, &apis, 200, 4, Duration::from_millis(400), 4).await;
    // NATS Streaming cannot be told a message is still in hand: one whose handler outlasts the
    // ack wait (a database slowed by the load) goes to the other replica too, and both may
    // publish the order's cancellation. Copies are allowed there and counted; the order still
    // changes once.
    let republish = Republish::on(transport);
    let expired = assert_expired_once(
        &world.log,
        &placed,
        until(last_expiry(&placed), Duration::from_secs(20)),
        republish,
    )
    .await;
    println!("200 orders, two replicas of each service, {transport}: {expired}");
    drop(processes);
    world.finish().await;
}
