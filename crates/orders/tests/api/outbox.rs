//! No lost events: with NATS down, after a crash, and on restart.

use std::time::Duration;

use chrono::Utc;
use common::Subject;
use common::bus::Publisher;
use common::events::{OrderCreated, OrderCreatedTicket, OrderStatus};
use common::testing::{NatsServer, TestStream, eventually};
use http::{Method, StatusCode};
use mongodb::bson::{self, oid::ObjectId};
use orders::models::{Order, OutboxEntry};

use super::helpers::{init_logs, send, signed_in, start, test_config};

#[tokio::test]
async fn an_order_placed_while_nats_is_down_is_published_once_when_it_returns() {
    init_logs();
    let mut nats = NatsServer::start().await;
    let stream = TestStream::on(&nats.url()).await;
    let (port, db, shutdown, task) = start(test_config(&stream.spec, &nats.url())).await;
    let tickets = orders::models::Tickets::new(&db);
    let ticket = orders::models::Ticket {
        id: ObjectId::new(),
        title: "t".into(),
        price: 20.0,
        version: 0,
    };
    tickets.insert(&ticket).await.unwrap();
    let (cookie, _) = signed_in();

    nats.kill().await;
    let body = serde_json::json!({ "ticketId": ticket.id.to_hex() }).to_string();
    let headers = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
    ];
    let answer = send(
        port,
        Method::POST,
        "/api/orders",
        &headers,
        Some(body.into()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    let orders = orders::models::Orders::new(&db);
    let pending = orders
        .get(ObjectId::parse_str(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.outbox.len(), 1, "the event waits in the outbox");
    let ready = send(port, Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["checks"]["mongodb"], "ok");
    assert_ne!(ready.json()["checks"]["nats"], "ok");

    nats.start_again().await;
    stream.reconnected().await;
    eventually(
        Duration::from_secs(20),
        "order:created after NATS returned",
        || async { !stream.bodies(Subject::OrderCreated).await.is_empty() },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the event marked published",
        || async {
            let order = orders.get(pending.id).await.unwrap().unwrap();
            super::helpers::unpublished(&db, &order).await == 0
        },
    )
    .await;
    // Several relay passes later there is still exactly one copy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = stream.bodies(Subject::OrderCreated).await;
    assert_eq!(published.len(), 1, "{published:?}");
    let event: OrderCreated = serde_json::from_str(&published[0]).unwrap();
    assert_eq!((event.id.as_str(), event.version), (id.as_str(), 0));

    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = db.drop().await;
}

/// An order as a crash between the write and the publish leaves it.
fn order_with_pending_event(ticket: ObjectId) -> (Order, OrderCreated) {
    let id = ObjectId::new();
    let expires_at = bson::DateTime::from_millis(Utc::now().timestamp_millis() + 900_000);
    let event = OrderCreated {
        id: id.to_hex(),
        version: 0,
        status: OrderStatus::Created,
        user_id: ObjectId::new().to_hex(),
        expires_at: chrono::DateTime::from_timestamp_millis(expires_at.timestamp_millis()).unwrap(),
        ticket: OrderCreatedTicket {
            id: ticket.to_hex(),
            price: 20.0,
        },
    };
    let order = Order {
        id,
        user_id: event.user_id.clone(),
        status: OrderStatus::Created,
        expires_at,
        ticket,
        version: 0,
        reservation: ticket,
        outbox: vec![OutboxEntry::of(&event)],
        transition: None,
    };
    (order, event)
}

#[tokio::test]
async fn events_left_by_a_crash_are_published_at_start_up_without_duplicates() {
    init_logs();
    let stream = TestStream::new().await;
    let config = test_config(&stream.spec, &common::testing::nats_url());
    let db = database(&config).await;
    let orders = orders::models::Orders::new(&db);
    let (never_published, first) = order_with_pending_event(ObjectId::new());
    let (published_not_pulled, second) = order_with_pending_event(ObjectId::new());
    let collection = db.collection::<Order>("orders");
    collection.insert_one(&never_published).await.unwrap();
    collection.insert_one(&published_not_pulled).await.unwrap();
    // The second crashed after JetStream's ack but before removing the entry.
    Publisher::new(stream.js.clone(), stream.spec.clone(), None)
        .publish(&second)
        .await
        .unwrap();

    let (_, _, shutdown, task) = start(config).await;
    let events = stream
        .wait_for::<OrderCreated>(2, Duration::from_secs(10))
        .await;
    eventually(
        Duration::from_secs(5),
        "both events marked published",
        || async {
            let mut left = 0;
            for id in [never_published.id, published_not_pulled.id] {
                let order = orders.get(id).await.unwrap().unwrap();
                left += super::helpers::unpublished(&db, &order).await;
            }
            left == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_after = stream.events::<OrderCreated>().await;
    assert_eq!(events_after.len(), 2, "{events_after:?}");
    let mut ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(events_after.iter().find(|e| e.id == first.id), Some(&first));

    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = db.drop().await;
    stream.delete().await;
}

#[tokio::test]
async fn the_relay_keeps_an_orders_events_in_the_order_they_happened() {
    init_logs();
    let stream = TestStream::new().await;
    let config = test_config(&stream.spec, &common::testing::nats_url());
    let db = database(&config).await;
    let (order, _) = order_with_pending_event(ObjectId::new());
    db.collection::<Order>("orders")
        .insert_one(&order)
        .await
        .unwrap();
    // Cancelled before anything was published: both events wait, created first.
    let orders = orders::models::Orders::new(&db);
    let cancelled = match orders.cancel(order).await.unwrap() {
        orders::models::OrderChange::Changed(order) => order,
        other => panic!("not cancelled: {other:?}"),
    };
    assert_eq!(cancelled.outbox.len(), 2);

    let (_, _, shutdown, task) = start(config).await;
    eventually(Duration::from_secs(10), "both events", || async {
        stream.bodies(Subject::OrderCancelled).await.len() == 1
    })
    .await;
    let created = stream.bodies(Subject::OrderCreated).await;
    assert_eq!(created.len(), 1);
    let info = stream.js.get_stream(&stream.spec.name).await.unwrap();
    let first = info.get_raw_message(1).await.unwrap();
    assert_eq!(
        first.subject.as_str(),
        stream.spec.subject(Subject::OrderCreated)
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = db.drop().await;
    stream.delete().await;
}

#[tokio::test]
async fn the_relay_sweep_finds_events_another_replica_left_behind() {
    init_logs();
    let stream = TestStream::new().await;
    let mut config = test_config(&stream.spec, &common::testing::nats_url());
    config.relay_sweep = Duration::from_millis(200);
    let (_, db, shutdown, task) = start(config).await;
    // Written after start-up, as by a replica that crashed before publishing.
    let (order, event) = order_with_pending_event(ObjectId::new());
    db.collection::<Order>("orders")
        .insert_one(&order)
        .await
        .unwrap();
    let events = stream
        .wait_for::<OrderCreated>(1, Duration::from_secs(10))
        .await;
    assert_eq!(events, [event]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = db.drop().await;
    stream.delete().await;
}

/// The test's database, written directly as a crashed process would have left it.
async fn database(config: &orders::Config) -> mongodb::Database {
    mongodb::Client::with_uri_str(&config.mongo.uri)
        .await
        .unwrap()
        .database(&config.mongo.database)
}
