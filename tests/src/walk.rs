//! The walk both the demo and the cluster check take: an order through its expiry, a second buyer
//! refused, a paid order kept, as the rest of the ticketing stack drives them, with what happens
//! printed as it happens.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use common::events::{ExpirationComplete, OrderCancelled, OrderCreated};
use common::testing::Logged;
use common::{Event, Subject};

use crate::orders_api::OrdersApi;
use crate::scenario::Scenario;

/// Prints the heading of a step.
pub fn step(text: &str) {
    println!("\n==> {text}");
}

/// Prints one line of what a step saw.
pub fn show(text: impl std::fmt::Display) {
    println!("    {text}");
}

/// Walks the world's orders service (`api`) through one order's expiry, a refused second buyer
/// and a paid order that stays complete; the summary line, or why it failed.
pub async fn walk(world: &Scenario, api: &OrdersApi, window_secs: u64) -> anyhow::Result<String> {
    let deadline = Duration::from_secs(window_secs + 15);

    step("the tickets service announces a ticket (ticket:created)");
    let ticket = world.peers.ticket_created("Concert", 20.0).await?;
    show(format!(
        "ticket {} \"{}\" at {}",
        ticket.id, ticket.title, ticket.price
    ));

    step("the auth service signs in two buyers (session cookie holding an HS256 JWT)");
    let alice = world.buyer("alice@example.com");
    let bob = world.buyer("bob@example.com");
    show(format!(
        "alice {} cookie {}…",
        alice.id,
        &alice.cookie[..40]
    ));
    show(format!("bob   {} cookie {}…", bob.id, &bob.cookie[..40]));

    step("alice reserves the ticket: POST /api/orders");
    let created = api.reserve_announced(&alice.cookie, &ticket.id).await?;
    ensure!(
        created.status == 201,
        "expected 201, got {} {}",
        created.status,
        created.body
    );
    let order = created.json();
    let order_id = order["id"].as_str().context("order without id")?.to_owned();
    show(format!("201 {}", created.body));

    step("bob tries the same ticket");
    let refused = api.reserve(&bob.cookie, &ticket.id).await?;
    ensure!(
        refused.status == 400 && refused.body.contains("Ticket is already reserved"),
        "expected 400 Ticket is already reserved, got {} {}",
        refused.status,
        refused.body
    );
    show(format!("{} {}", refused.status, refused.body));

    step("events as they arrive on the bus");
    let (created_event, _) = wait_for::<OrderCreated>(world, &order_id, deadline).await?;
    show(format!(
        "order:created        version {} expiresAt {}",
        created_event.version,
        created_event.expires_at.format("%H:%M:%S%.3f")
    ));
    let (_, fired_at) = wait_for::<ExpirationComplete>(world, &order_id, deadline).await?;
    let latency = (fired_at - created_event.expires_at)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1000.0;
    show(format!(
        "expiration:complete  at {} ({latency:+.1} ms after expiresAt)",
        fired_at.format("%H:%M:%S%.3f")
    ));
    let (cancelled, cancelled_at) = wait_for::<OrderCancelled>(world, &order_id, deadline).await?;
    show(format!(
        "order:cancelled      version {} at {}",
        cancelled.version,
        cancelled_at.format("%H:%M:%S%.3f")
    ));
    ensure!(
        cancelled.version == 1,
        "order:cancelled should carry version 1, got {}",
        cancelled.version
    );

    step("the order as the web client sees it: GET /api/orders/:id");
    let shown = api.show(&alice.cookie, &order_id).await?;
    ensure!(
        shown.status == 200 && shown.json()["status"] == "cancelled",
        "expected a cancelled order, got {} {}",
        shown.status,
        shown.body
    );
    show(format!("200 {}", shown.body));

    step("a second order that is paid in time");
    let ticket2 = world.peers.ticket_created("Opera", 12.5).await?;
    let paid = api.reserve_announced(&alice.cookie, &ticket2.id).await?;
    ensure!(
        paid.status == 201,
        "expected 201, got {} {}",
        paid.status,
        paid.body
    );
    let paid_id = paid.json()["id"]
        .as_str()
        .context("order without id")?
        .to_owned();
    show(format!(
        "order {paid_id} for ticket {} at {}",
        ticket2.id, ticket2.price
    ));
    let payment = world.peers.payment_created(&paid_id).await?;
    show(format!(
        "the payments service announces payment:created {} ({})",
        payment.id, payment.stripe_id
    ));
    api.wait_status(&alice.cookie, &paid_id, "complete", deadline)
        .await?;
    show("the order is complete");
    let (_, fired_at) = wait_for::<ExpirationComplete>(world, &paid_id, deadline).await?;
    show(format!(
        "expiration:complete  at {} for the paid order",
        fired_at.format("%H:%M:%S%.3f")
    ));
    // The orders service handles that event shortly after; give it a moment to (not) cancel.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cancellations = world
        .log
        .events::<OrderCancelled>()
        .into_iter()
        .filter(|(event, _)| event.id == paid_id)
        .count();
    ensure!(cancellations == 0, "the paid order was cancelled");
    let final_state = api.show(&alice.cookie, &paid_id).await?;
    ensure!(
        final_state.json()["status"] == "complete",
        "paid order is {}",
        final_state.body
    );
    show(format!(
        "no order:cancelled; GET says {}",
        final_state.json()["status"]
    ));

    Ok(format!(
        "{}: unpaid order cancelled {latency:.1} ms after expiresAt (version 1 published); second buyer refused; paid order stayed complete",
        world.transport()
    ))
}

/// The first event of type `E` about `order_id`, with when the stream stored it.
pub async fn wait_for<E: Event>(
    world: &Scenario,
    order_id: &str,
    deadline: Duration,
) -> anyhow::Result<(E, DateTime<Utc>)> {
    let start = Instant::now();
    loop {
        let found = world
            .log
            .all()
            .into_iter()
            .find(|logged: &Logged| logged.subject == E::SUBJECT && about(logged, order_id));
        if let Some(logged) = found {
            return Ok((logged.decode::<E>(), logged.stored_at));
        }
        ensure!(
            start.elapsed() < deadline,
            "no {} for order {order_id} within {deadline:?}",
            E::SUBJECT
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `logged` is an event about `order_id`.
pub fn about(logged: &Logged, order_id: &str) -> bool {
    let body: serde_json::Value = serde_json::from_str(&logged.body).unwrap_or_default();
    match logged.subject {
        Subject::ExpirationComplete | Subject::PaymentCreated => body["orderId"] == order_id,
        _ => body["id"] == order_id,
    }
}
