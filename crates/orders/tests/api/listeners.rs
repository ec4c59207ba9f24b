//! The four listeners of docs/contract.md §6: behaviour, acknowledgement, redelivery.

use std::time::Duration;

use common::Subject;
use common::events::{
    ExpirationComplete, OrderCancelled, PaymentCreated, TicketCreated, TicketUpdated,
};
use common::testing::eventually;
use http::StatusCode;
use mongodb::bson::oid::ObjectId;

use super::helpers::{TestApp, signed_in};

fn created(id: ObjectId, title: &str, price: f64) -> TicketCreated {
    TicketCreated {
        id: id.to_hex(),
        version: 0,
        title: title.into(),
        price,
        user_id: ObjectId::new().to_hex(),
    }
}

fn updated(id: ObjectId, version: u64, title: &str, price: f64) -> TicketUpdated {
    TicketUpdated {
        id: id.to_hex(),
        version,
        title: title.into(),
        price,
        user_id: ObjectId::new().to_hex(),
        order_id: None,
    }
}

/// Places an order for a fresh ticket by a new buyer; returns the order id and the cookie.
async fn open_order(app: &TestApp) -> (String, String) {
    let (cookie, _) = signed_in();
    (app.open_order(&cookie, "concert").await, cookie)
}

fn payment(order_id: &str) -> PaymentCreated {
    PaymentCreated {
        id: ObjectId::new().to_hex(),
        order_id: order_id.to_owned(),
        stripe_id: "ch_test".into(),
    }
}

#[tokio::test]
async fn ticket_created_stores_the_replica_and_acks_a_redelivery() {
    let app = TestApp::spawn().await;
    let id = ObjectId::new();
    let event = created(id, "concert", 12.5);
    app.stream.publish(&event).await;
    app.stream.publish_again(&event).await;
    app.wait_until_acked(Subject::TicketCreated).await;
    let ticket = app.tickets().get(id).await.unwrap().expect("the replica");
    assert_eq!(
        (ticket.title.as_str(), ticket.price, ticket.version),
        ("concert", 12.5, 0)
    );

    // The replica is what an order embeds.
    let (cookie, _) = signed_in();
    let answer = app.order_ticket(&cookie, &id).await;
    assert_eq!(answer.json()["ticket"]["title"], "concert");
    app.stop().await;
}

#[tokio::test]
async fn ticket_updated_applies_an_out_of_order_pair_in_version_order() {
    let app = TestApp::spawn().await;
    let id = ObjectId::new();
    app.stream.publish(&created(id, "v0", 10.0)).await;
    eventually(Duration::from_secs(10), "the replica", || async {
        app.tickets().get(id).await.unwrap().is_some()
    })
    .await;
    // Version 2 arrives first: it must wait for version 1, not overwrite it.
    app.stream.publish(&updated(id, 2, "v2", 30.0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = app.tickets().get(id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.title.as_str(), waiting.version),
        ("v0", 0),
        "a gap is not applied"
    );
    app.stream.publish(&updated(id, 1, "v1", 20.0)).await;
    eventually(
        Duration::from_secs(15),
        "version 2 applied after version 1",
        || async { app.tickets().get(id).await.unwrap().unwrap().version == 2 },
    )
    .await;
    let ticket = app.tickets().get(id).await.unwrap().unwrap();
    assert_eq!((ticket.title.as_str(), ticket.price), ("v2", 30.0));
    app.wait_until_acked(Subject::TicketUpdated).await;
    app.stop().await;
}

#[tokio::test]
async fn ticket_updated_acks_an_update_already_applied_without_reapplying_it() {
    let app = TestApp::spawn().await;
    let id = ObjectId::new();
    app.stream.publish(&created(id, "v0", 10.0)).await;
    app.stream.publish(&updated(id, 1, "v1", 20.0)).await;
    app.stream.publish(&updated(id, 2, "v2", 30.0)).await;
    eventually(Duration::from_secs(15), "version 2", || async {
        app.tickets()
            .get(id)
            .await
            .unwrap()
            .is_some_and(|t| t.version == 2)
    })
    .await;
    app.stream.publish_again(&updated(id, 1, "v1", 20.0)).await;
    app.wait_until_acked(Subject::TicketUpdated).await;
    let ticket = app.tickets().get(id).await.unwrap().unwrap();
    assert_eq!(
        (ticket.title.as_str(), ticket.version),
        ("v2", 2),
        "an old update changes nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn expiration_complete_cancels_an_open_order_and_publishes_order_cancelled_once() {
    let app = TestApp::spawn().await;
    let (id, cookie) = open_order(&app).await;
    let ticket = app.order(&id).await.ticket;
    let expiry = ExpirationComplete {
        order_id: id.clone(),
    };
    app.stream.publish(&expiry).await;
    let events = app
        .stream
        .wait_for::<OrderCancelled>(1, Duration::from_secs(10))
        .await;
    assert_eq!(
        app.stream.bodies(Subject::OrderCancelled).await,
        [format!(
            r#"{{"id":"{id}","version":1,"ticket":{{"id":"{}"}}}}"#,
            ticket.to_hex()
        )]
    );
    assert_eq!(events.len(), 1);
    app.wait_until_acked(Subject::ExpirationComplete).await;
    let order = app.order(&id).await;
    assert_eq!((order.status.as_str(), order.version), ("cancelled", 1));

    app.stream.publish_again(&expiry).await;
    app.wait_until_acked(Subject::ExpirationComplete).await;
    assert_eq!(
        app.order(&id).await.version,
        1,
        "a redelivered expiry changes nothing"
    );
    assert_eq!(app.stream.events::<OrderCancelled>().await.len(), 1);
    // The ticket is free again.
    let again = app.order_ticket(&cookie, &ticket).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    app.stop().await;
}

#[tokio::test]
async fn expiration_complete_leaves_a_paid_order_alone() {
    let app = TestApp::spawn().await;
    let (id, _) = open_order(&app).await;
    app.stream.publish(&payment(&id)).await;
    eventually(Duration::from_secs(10), "the payment", || async {
        app.order(&id).await.status.as_str() == "complete"
    })
    .await;
    app.stream
        .publish(&ExpirationComplete {
            order_id: id.clone(),
        })
        .await;
    app.wait_until_acked(Subject::ExpirationComplete).await;
    let order = app.order(&id).await;
    assert_eq!((order.status.as_str(), order.version), ("complete", 1));
    assert!(app.stream.bodies(Subject::OrderCancelled).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn payment_created_completes_the_order_once() {
    let app = TestApp::spawn().await;
    let (id, cookie) = open_order(&app).await;
    let paid = payment(&id);
    app.stream.publish(&paid).await;
    app.wait_until_acked(Subject::PaymentCreated).await;
    let order = app.order(&id).await;
    assert_eq!((order.status.as_str(), order.version), ("complete", 1));
    assert!(
        order.outbox.is_empty(),
        "a paid order's published order:created leaves its outbox"
    );
    app.stream.publish_again(&paid).await;
    app.wait_until_acked(Subject::PaymentCreated).await;
    assert_eq!(
        app.order(&id).await.version,
        1,
        "a redelivered payment changes nothing"
    );
    let shown = app.get(&format!("/api/orders/{id}"), &cookie).await.json();
    assert_eq!(shown["status"], "complete");
    app.stop().await;
}

#[tokio::test]
async fn a_payment_for_a_cancelled_order_is_counted_as_an_anomaly_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (id, cookie) = open_order(&app).await;
    let answer = app.delete(&format!("/api/orders/{id}"), &cookie).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    app.stream.publish(&payment(&id)).await;
    app.wait_until_acked(Subject::PaymentCreated).await;
    let order = app.order(&id).await;
    assert_eq!((order.status.as_str(), order.version), ("cancelled", 1));
    let metrics = app.get("/metrics", "").await.body;
    assert!(
        metrics.contains("payment_for_cancelled_order_total 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_update_of_a_ticket_that_never_existed_is_given_up_after_the_delivery_limit() {
    let app = TestApp::spawn_with(|config| config.nats.max_deliveries = 3).await;
    app.stream
        .publish(&updated(ObjectId::new(), 1, "ghost", 10.0))
        .await;
    // Deliveries 1, 2 and 3 (after 1 s and 2 s of backoff), then terminated: nothing pending.
    app.wait_until_acked(Subject::TicketUpdated).await;
    let metrics = app.get("/metrics", "").await.body;
    for line in [
        r#"events_handled_total{subject="ticket:updated",outcome="retry"} 2"#,
        r#"events_handled_total{subject="ticket:updated",outcome="gave_up"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn ticket_events_no_tickets_service_can_send_are_refused_and_not_stored() {
    let app = TestApp::spawn().await;
    let mut refused = Vec::new();
    for (change, why) in [
        (
            (|t: &mut TicketCreated| t.price = -5.0) as fn(&mut TicketCreated),
            "negative price",
        ),
        (|t| t.price = 1e308, "unchargeable price"),
        (|t| t.title = "x".repeat(600_000), "600 KB title"),
        (
            |t| t.version = 1 << 60,
            "version beyond JavaScript's integers",
        ),
    ] {
        let mut event = created(ObjectId::new(), "bad", 10.0);
        change(&mut event);
        app.stream.publish(&event).await;
        refused.push((event.id, why));
    }
    let good = created(ObjectId::new(), "good", 10.0);
    app.stream.publish(&good).await;
    app.wait_until_acked(Subject::TicketCreated).await;
    for (id, why) in refused {
        let stored = app.tickets().get(ObjectId::parse_str(&id).unwrap()).await;
        assert!(stored.unwrap().is_none(), "stored a ticket with a {why}");
    }
    let good_id = ObjectId::parse_str(&good.id).unwrap();
    assert!(app.tickets().get(good_id).await.unwrap().is_some());
    let metrics = app.get("/metrics", "").await.body;
    let line = r#"events_handled_total{subject="ticket:created",outcome="invalid"} 4"#;
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    app.stop().await;
}
