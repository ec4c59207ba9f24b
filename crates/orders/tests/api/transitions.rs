//! Exclusive state changes: whatever races for an open order (a payment, its expiry, the buyer's
//! DELETE, redeliveries of each), exactly one change wins, bumps the version once and leaves at
//! most one event, on any store that enforces unique indexes.

use std::time::Duration;

use common::Subject;
use common::bus::consumer_name;
use common::events::{ExpirationComplete, OrderCancelled, OrderStatus, PaymentCreated};
use common::testing::{ServiceProcess, TestStream, eventually, free_port, mongo_uri, temp_dir};
use http::{Method, StatusCode};
use mongodb::bson::{doc, oid::ObjectId};
use orders::models::{OrderChange, Orders, Ticket, Tickets, Transition};

use super::helpers::{JWT_SECRET, TestApp, full_env, order_ticket, signed_in};

const ROUNDS: usize = 20;
const WRITERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_concurrent_changes_to_one_order_exactly_one_wins_every_time() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let mut winners_per_round = Vec::new();
    for round in 0..ROUNDS {
        let id = app.open_order(&cookie, "contested").await;
        // Every writer read the order before any of them wrote, as racing requests do.
        let read = app.order(&id).await;
        let writers = (0..WRITERS).map(|writer| {
            let orders = app.orders();
            let read = read.clone();
            tokio::spawn(async move {
                let change = if writer % 2 == 0 {
                    orders.cancel(read).await
                } else {
                    orders.complete(read).await
                };
                change.expect("the store answers")
            })
        });
        let changes: Vec<OrderChange> = futures::future::try_join_all(writers).await.unwrap();
        let won: Vec<_> = changes
            .iter()
            .filter_map(|change| match change {
                OrderChange::Changed(order) => Some(order.status),
                _ => None,
            })
            .collect();
        winners_per_round.push(won.len());

        let stored = app.order(&id).await;
        assert_eq!(stored.version, 1, "round {round}: one version bump");
        if let [status] = won.as_slice() {
            assert_eq!(stored.status, *status, "round {round}: the winner's status");
        }
        let cancels = stored
            .outbox
            .iter()
            .filter(|entry| entry.subject() == Some(Subject::OrderCancelled))
            .count();
        let expected = usize::from(stored.status == OrderStatus::Cancelled);
        assert_eq!(cancels, expected, "round {round}: {stored:?}");
    }
    println!("winners per round of {WRITERS} writers: {winners_per_round:?}");
    assert!(
        winners_per_round.iter().all(|&winners| winners == 1),
        "exactly one winner per round: {winners_per_round:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_expiries_and_deletes_racing_for_one_order_leave_one_outcome_and_its_event() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let id = app.open_order(&cookie, "contested").await;
        let path = format!("/api/orders/{id}");
        // A third of each; each event published under a message id of its own, as redeliveries.
        let racers = (0..WRITERS).map(|racer| {
            let (app, id, path, cookie) = (&app, &id, &path, &cookie);
            async move {
                match racer % 3 {
                    0 => Some(app.delete(path, cookie).await.status),
                    1 => {
                        let expiry = ExpirationComplete {
                            order_id: id.clone(),
                        };
                        app.stream.publish_again(&expiry).await;
                        None
                    }
                    _ => {
                        let payment = PaymentCreated {
                            id: ObjectId::new().to_hex(),
                            order_id: id.clone(),
                            stripe_id: format!("ch_{racer}"),
                        };
                        app.stream.publish_again(&payment).await;
                        None
                    }
                }
            }
        });
        let deletes: Vec<StatusCode> = futures::future::join_all(racers)
            .await
            .into_iter()
            .flatten()
            .collect();
        app.wait_until_acked(Subject::ExpirationComplete).await;
        app.wait_until_acked(Subject::PaymentCreated).await;

        let stored = app.order(&id).await;
        assert_eq!(stored.version, 1, "round {round}: one version bump");
        let cancels: Vec<OrderCancelled> = app
            .stream
            .events::<OrderCancelled>()
            .await
            .into_iter()
            .filter(|event| event.id == id)
            .collect();
        match stored.status {
            OrderStatus::Cancelled => {
                assert_eq!(cancels.len(), 1, "round {round}: one order:cancelled");
                assert_eq!(cancels[0].version, 1);
                assert!(deletes.iter().all(|&s| s == StatusCode::NO_CONTENT));
            }
            OrderStatus::Complete => {
                assert!(cancels.is_empty(), "round {round}: paid, yet {cancels:?}");
                assert!(deletes.iter().all(|&s| s == StatusCode::BAD_REQUEST));
            }
            other => panic!("round {round}: the order is still {other:?}"),
        }
        outcomes.push(stored.status.as_str());
    }
    println!("outcomes: {outcomes:?}");
    app.stop().await;
}

#[tokio::test]
async fn changes_claimed_by_a_process_killed_before_applying_them_are_finished_once_after_restart()
{
    let stream = TestStream::new().await;
    let port = free_port();
    let mut env: Vec<_> = full_env(&stream)
        .into_iter()
        .filter(|(name, _)| !matches!(*name, "PORT" | "JWT_KEY"))
        .collect();
    env.push(("PORT", port.to_string()));
    env.push(("JWT_KEY", JWT_SECRET.to_owned()));
    let db = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .unwrap()
        .database(&stream.spec.name);
    let tickets = Tickets::new(&db);
    let mut ticket_ids = Vec::new();
    for title in ["to be cancelled", "to be paid"] {
        let ticket = Ticket {
            id: ObjectId::new(),
            title: title.into(),
            price: 20.0,
            version: 0,
        };
        tickets.insert(&ticket).await.unwrap();
        ticket_ids.push(ticket.id);
    }

    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut held_env = env.clone();
    held_env.push(("ORDERS_FAULT_HOLD_AFTER_CLAIM".into(), "true".into()));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_orders"));
    let logs = temp_dir("orders-logs");
    let mut held = ServiceProcess::start("orders-holding", binary, held_env, port, &logs)
        .await
        .unwrap();
    let (cookie, _) = signed_in();
    let mut ids = Vec::new();
    for ticket in &ticket_ids {
        let answer = order_ticket(port, &cookie, ticket).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    let (cancelled, paid) = (ids[0].clone(), ids[1].clone());
    // The buyer's DELETE and the payment both claim their change, then hang before applying it.
    let path = format!("/api/orders/{cancelled}");
    let delete = tokio::spawn({
        let cookie = cookie.clone();
        async move {
            common::testing::send(
                ("127.0.0.1", port),
                Method::DELETE,
                &path,
                &[("cookie", &cookie)],
                None,
            )
            .await
        }
    });
    stream
        .publish(&PaymentCreated {
            id: ObjectId::new().to_hex(),
            order_id: paid.clone(),
            stripe_id: "ch_crash".into(),
        })
        .await;
    let claims = db.collection::<Transition>("order_transitions");
    eventually(Duration::from_secs(15), "both changes claimed", || async {
        claims.count_documents(doc! {}).await.unwrap() == 2
    })
    .await;
    held.kill().await;
    assert!(
        delete.await.unwrap().is_err(),
        "the DELETE died with the process"
    );
    let orders = Orders::new(&db);
    for id in &ids {
        let order = orders.get(ObjectId::parse_str(id).unwrap()).await.unwrap();
        let order = order.unwrap();
        assert_eq!(
            (order.status, order.version),
            (OrderStatus::Created, 0),
            "claimed but not applied"
        );
    }

    let mut restarted = ServiceProcess::start("orders-restarted", binary, env, port, &logs)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "both changes finished", || async {
        let get = |id: &str| orders.get(ObjectId::parse_str(id).unwrap());
        let (a, b) = (get(&cancelled).await.unwrap(), get(&paid).await.unwrap());
        a.is_some_and(|a| a.status == OrderStatus::Cancelled)
            && b.is_some_and(|b| b.status == OrderStatus::Complete)
    })
    .await;
    // The payment's redelivery (its first delivery was never acknowledged) finds it done.
    eventually(
        Duration::from_secs(20),
        "the payment acknowledged",
        || async {
            let consumer = consumer_name(orders::listeners::QUEUE_GROUP, Subject::PaymentCreated);
            let stream = stream.js.get_stream(&stream.spec.name).await.unwrap();
            stream
                .consumer_info(&consumer)
                .await
                .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "order:cancelled published",
        || async { !stream.bodies(Subject::OrderCancelled).await.is_empty() },
    )
    .await;
    for (id, status) in [
        (&cancelled, OrderStatus::Cancelled),
        (&paid, OrderStatus::Complete),
    ] {
        let order = orders
            .get(ObjectId::parse_str(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((order.status, order.version), (status, 1), "{id}");
    }
    let cancels = stream.events::<OrderCancelled>().await;
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(
        (cancels[0].id.as_str(), cancels[0].version),
        (cancelled.as_str(), 1)
    );
    assert_eq!(
        claims.count_documents(doc! {}).await.unwrap(),
        0,
        "claims deleted"
    );
    // The ticket of the cancelled order is free again; the paid one stays reserved.
    let (other, _) = signed_in();
    for (ticket, expected) in [
        (ticket_ids[0], StatusCode::CREATED),
        (ticket_ids[1], StatusCode::BAD_REQUEST),
    ] {
        let answer = order_ticket(port, &other, &ticket).await;
        assert_eq!(answer.status, expected, "{}", answer.body);
    }
    assert_eq!(restarted.terminate().await.unwrap(), Some(0));
    let _ = db.drop().await;
    stream.delete().await;
}
