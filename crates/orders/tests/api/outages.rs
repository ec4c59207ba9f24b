//! MongoDB outages, on a MongoDB-compatible server of the test's own that the test freezes
//! (SIGSTOP: a stalled node, a partition) or kills and restarts: every request is answered within
//! the budget, every order is either stored with its event or refused with 503, and the
//! expiries and payments that arrived meanwhile are applied once after recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::events::{
    ExpirationComplete, OrderCancelled, OrderCreated, OrderStatus, PaymentCreated,
};
use common::testing::{Answer, MongoServer, eventually};
use http::StatusCode;
use mongodb::bson::oid::ObjectId;
use orders::config::MongoUri;
use tokio::sync::Mutex;

use super::helpers::{TestApp, order_ticket, signed_in};

/// Longest any request may take during an outage (the default budget is 5 s).
const WORST_ALLOWED: Duration = Duration::from_secs(6);
/// How long the database stays away.
const OUTAGE: Duration = Duration::from_secs(10);
/// Orders placed while it is away, and open orders expired and paid while it is away.
const PLACED: usize = 100;
const EXPIRED: usize = 20;
const PAID: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Outage {
    Frozen,
    Killed,
}

#[tokio::test]
async fn a_frozen_database_costs_each_request_at_most_its_budget_and_nothing_is_lost() {
    ride_out(Outage::Frozen).await;
}

#[tokio::test]
async fn a_killed_and_restarted_database_costs_each_request_at_most_its_budget_and_nothing_is_lost()
{
    ride_out(Outage::Killed).await;
}

/// One request during the outage: who sent it, for which ticket, and what came back when.
struct Attempt {
    cookie: String,
    ticket: ObjectId,
    answer: Answer,
    took: Duration,
}

async fn ride_out(outage: Outage) {
    let mut mongo = MongoServer::start().await;
    let uri = format!("{}/orders_outage", mongo.uri());
    let app = TestApp::spawn_with(|config| {
        config.mongo = MongoUri::parse(&uri).unwrap();
    })
    .await;

    // Open orders whose expiry or payment arrives during the outage.
    let mut open = Vec::new();
    for _ in 0..EXPIRED + PAID {
        let (cookie, _) = signed_in();
        let ticket = app.ticket("before", 10.0).await;
        let answer = app.order_ticket(&cookie, &ticket.id).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        open.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    let (expired, paid) = open.split_at(EXPIRED);
    let mut tickets = Vec::new();
    for _ in 0..PLACED {
        tickets.push(app.ticket("during", 20.0).await);
    }
    app.stream
        .wait_for::<OrderCreated>(open.len(), Duration::from_secs(20))
        .await;

    match outage {
        Outage::Frozen => mongo.freeze(),
        Outage::Killed => mongo.kill().await,
    }
    let down_at = Instant::now();
    for id in expired {
        app.stream
            .publish(&ExpirationComplete {
                order_id: id.clone(),
            })
            .await;
    }
    for id in paid {
        app.stream
            .publish(&PaymentCreated {
                id: ObjectId::new().to_hex(),
                order_id: id.clone(),
                stripe_id: "ch_outage".into(),
            })
            .await;
    }
    // Readiness names the database within its check timeout.
    let asked = Instant::now();
    let ready = common::testing::get(app.port, "/readyz").await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(2_500),
        "/readyz took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_ne!(ready.json()["checks"]["mongodb"], "ok", "{}", ready.body);
    assert_eq!(ready.json()["checks"]["nats"], "ok", "{}", ready.body);

    // One POST every 100 ms over the outage, each a new buyer, plus a GET of a list beside each.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let worst_get = Arc::new(Mutex::new(Duration::ZERO));
    let mut requests = tokio::task::JoinSet::new();
    let spacing = OUTAGE / PLACED as u32;
    for (i, ticket) in tickets.iter().enumerate() {
        let (port, ticket, attempts, worst_get) =
            (app.port, ticket.id, attempts.clone(), worst_get.clone());
        requests.spawn(async move {
            tokio::time::sleep(spacing * i as u32).await;
            let (cookie, _) = signed_in();
            let started = Instant::now();
            let answer = order_ticket(port, &cookie, &ticket).await;
            let took = started.elapsed();
            let started = Instant::now();
            let list = super::helpers::send(
                port,
                http::Method::GET,
                "/api/orders",
                &[("cookie", &cookie)],
                None,
            )
            .await;
            let list_took = started.elapsed();
            assert!(
                matches!(
                    list.status,
                    StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
                ),
                "GET /api/orders during the outage: {:?} {}",
                list.status,
                list.body
            );
            let mut worst = worst_get.lock().await;
            *worst = (*worst).max(list_took);
            attempts.lock().await.push(Attempt {
                cookie,
                ticket,
                answer,
                took,
            });
        });
    }
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    match outage {
        Outage::Frozen => mongo.thaw(),
        Outage::Killed => mongo.start_again().await,
    }
    let back_at = Instant::now();
    while let Some(done) = requests.join_next().await {
        done.unwrap();
    }

    // Serving normally again: how long after the database came back.
    let (cookie, _) = signed_in();
    let fresh = app.ticket("after", 30.0).await;
    loop {
        let answer = app.order_ticket(&cookie, &fresh.id).await;
        if answer.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "not serving 10 s after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = back_at.elapsed();

    let attempts = std::mem::take(&mut *attempts.lock().await);
    let worst = attempts.iter().map(|a| a.took).max().unwrap();
    let refused = attempts
        .iter()
        .filter(|a| a.answer.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    eprintln!(
        "MongoDB {outage:?} for {OUTAGE:?}: worst POST {worst:?}, worst GET {:?}, {refused} of {PLACED} POSTs refused with 503, serving again {recovered_in:?} after recovery",
        *worst_get.lock().await
    );
    assert!(worst <= WORST_ALLOWED, "a POST took {worst:?}");
    assert!(*worst_get.lock().await <= WORST_ALLOWED);
    for attempt in &attempts {
        match attempt.answer.status {
            StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    attempt
                        .answer
                        .headers
                        .get(http::header::RETRY_AFTER)
                        .map(|v| v.to_str().unwrap()),
                    Some("2")
                );
                assert!(!attempt.answer.messages().is_empty());
            }
            other => panic!(
                "POST during the outage answered {other:?}: {}",
                attempt.answer.body
            ),
        }
    }

    // The buyers whose POST was refused retry: their order is stored (200, when the refused
    // insert landed after all) or made now (201); never "already reserved".
    for attempt in attempts
        .iter()
        .filter(|a| a.answer.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        let again = app.order_ticket(&attempt.cookie, &attempt.ticket).await;
        assert!(
            matches!(again.status, StatusCode::CREATED | StatusCode::OK),
            "retry after a 503: {:?} {}",
            again.status,
            again.body
        );
    }

    // Every stored order has exactly one order:created, each placed ticket exactly one order.
    let placed = PLACED + open.len() + 1;
    let created = app
        .stream
        .wait_for::<OrderCreated>(placed, Duration::from_secs(30))
        .await;
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for event in &created {
        *per_order.entry(event.id.clone()).or_default() += 1;
    }
    assert_eq!(per_order.len(), placed, "one order per placed ticket");
    assert!(
        per_order.values().all(|n| *n == 1),
        "an order:created twice"
    );
    let mut per_ticket: HashMap<String, usize> = HashMap::new();
    for event in &created {
        *per_ticket.entry(event.ticket.id.clone()).or_default() += 1;
    }
    assert!(
        per_ticket.values().all(|n| *n == 1),
        "a ticket ordered twice"
    );

    // The expiries and payments that arrived during the outage are applied once each.
    eventually(
        Duration::from_secs(30),
        "expiries and payments applied",
        || async {
            let mut done = true;
            for id in expired {
                done &= app.order(id).await.status == OrderStatus::Cancelled;
            }
            for id in paid {
                done &= app.order(id).await.status == OrderStatus::Complete;
            }
            done
        },
    )
    .await;
    let cancelled = app
        .stream
        .wait_for::<OrderCancelled>(EXPIRED, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_again = app.stream.events::<OrderCancelled>().await;
    assert_eq!(cancelled.len(), EXPIRED);
    assert_eq!(cancelled_again.len(), EXPIRED, "an order:cancelled twice");
    for id in expired.iter().chain(paid) {
        assert_eq!(app.order(id).await.version, 1, "order {id} changed twice");
    }
    app.stop().await;
}
