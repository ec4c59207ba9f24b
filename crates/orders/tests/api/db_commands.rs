//! What each route and each listener costs the database, counted by the service itself
//! (`mongodb_commands_total`, by command and collection), one operation at a time on a quiet
//! service. The table in docs/benchmarks.md comes from this test's output (`-- --nocapture`);
//! the assertions keep the request path from growing again.

use std::collections::BTreeMap;
use std::time::Duration;

use common::Subject;
use common::events::{ExpirationComplete, PaymentCreated, TicketCreated, TicketUpdated};
use mongodb::bson::oid::ObjectId;

use super::helpers::{TestApp, signed_in};

/// Every `mongodb_commands_total{command="…",collection="…"}` line, as `command collection`.
async fn commands(app: &TestApp) -> BTreeMap<String, u64> {
    let text = app.get("/metrics", "").await.body;
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("mongodb_commands_total{command=\"")?;
            let (command, rest) = rest.split_once("\",collection=\"")?;
            let (collection, value) = rest.split_once("\"} ")?;
            Some((
                format!("{command} {collection}"),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// The commands `operation` caused: the counters' growth once they stop moving.
async fn cost<F: Future<Output = ()>>(app: &TestApp, operation: F) -> BTreeMap<String, u64> {
    let before = settled(app).await;
    operation.await;
    let after = settled(app).await;
    after
        .into_iter()
        .filter_map(|(command, n)| {
            let grew = n - before.get(&command).copied().unwrap_or(0);
            (grew > 0).then_some((command, grew))
        })
        .collect()
}

/// The counters, once unchanged for 300 ms (listeners and the relay are done).
async fn settled(app: &TestApp) -> BTreeMap<String, u64> {
    let mut last = commands(app).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = commands(app).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

fn total(cost: &BTreeMap<String, u64>) -> u64 {
    cost.values().sum()
}

fn show(cost: &BTreeMap<String, u64>) -> String {
    cost.iter()
        .map(|(command, n)| format!("{n} {command}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn each_route_and_listener_sends_the_fewest_database_commands_its_guarantees_allow() {
    let app = TestApp::spawn().await;
    let (cookie, user_id) = signed_in();
    let mut table = Vec::new();

    let ticket_id = ObjectId::new();
    let created = cost(&app, async {
        app.stream
            .publish(&TicketCreated {
                id: ticket_id.to_hex(),
                version: 0,
                title: "concert".into(),
                price: 20.0,
                user_id: user_id.clone(),
            })
            .await;
        app.wait_until_acked(Subject::TicketCreated).await;
    })
    .await;
    table.push(("listener ticket:created", created));

    let updated = cost(&app, async {
        app.stream
            .publish(&TicketUpdated {
                id: ticket_id.to_hex(),
                version: 1,
                title: "concert".into(),
                price: 25.0,
                user_id: user_id.clone(),
                order_id: None,
            })
            .await;
        app.wait_until_acked(Subject::TicketUpdated).await;
    })
    .await;
    table.push(("listener ticket:updated", updated));

    let mut order_id = String::new();
    let post = cost(&app, async {
        let answer = app.order_ticket(&cookie, &ticket_id).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        order_id = answer.json()["id"].as_str().unwrap().to_owned();
    })
    .await;
    table.push(("POST /api/orders (201)", post.clone()));

    let refused = cost(&app, async {
        let answer = app.order_ticket(&signed_in().0, &ticket_id).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
    })
    .await;
    table.push(("POST /api/orders (400, reserved)", refused));

    let show_one = cost(&app, async {
        let answer = app.get(&format!("/api/orders/{order_id}"), &cookie).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    })
    .await;
    table.push(("GET /api/orders/{id}", show_one.clone()));

    let list = cost(&app, async {
        let answer = app.get("/api/orders", &cookie).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    })
    .await;
    table.push(("GET /api/orders", list));

    let expired = cost(&app, async {
        app.stream
            .publish(&ExpirationComplete {
                order_id: order_id.clone(),
            })
            .await;
        app.wait_until_acked(Subject::ExpirationComplete).await;
    })
    .await;
    table.push(("listener expiration:complete (cancels)", expired));

    // A second order, paid, then cancelled by its buyer: DELETE of a complete order is refused,
    // so cancel a third one instead.
    let paid = app.open_order(&cookie, "opera").await;
    let payment = cost(&app, async {
        app.stream
            .publish(&PaymentCreated {
                id: ObjectId::new().to_hex(),
                order_id: paid.clone(),
                stripe_id: "ch_1".into(),
            })
            .await;
        app.wait_until_acked(Subject::PaymentCreated).await;
    })
    .await;
    table.push(("listener payment:created (completes)", payment));

    let third_id = app.open_order(&cookie, "ballet").await;
    let delete = cost(&app, async {
        let answer = app
            .delete(&format!("/api/orders/{third_id}"), &cookie)
            .await;
        assert_eq!(answer.status, 204, "{}", answer.body);
    })
    .await;
    table.push(("DELETE /api/orders/{id}", delete));

    println!("| operation | database commands | total |\n|---|---|---|");
    for (operation, cost) in &table {
        println!("| {operation} | {} | {} |", show(cost), total(cost));
    }

    // The request path of a reservation: read the ticket, insert the order with its event. The
    // mark that the event was published is written after the answer, batched with the marks of
    // other requests (here, alone); nothing asks which events were published.
    let mut path = post.clone();
    let marks = path.remove("insert published_events").unwrap_or(0);
    assert_eq!(
        show(&path),
        "1 find tickets, 1 insert orders",
        "POST /api/orders: {}",
        show(&post)
    );
    assert!(marks <= 1, "one batched mark at most: {}", show(&post));
    assert_eq!(
        show(&show_one),
        "1 find orders, 1 find tickets",
        "GET /api/orders/{{id}}"
    );
    app.stop().await;
}
