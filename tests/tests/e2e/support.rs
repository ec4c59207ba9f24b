//! A run of many orders and the checks every test makes on it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Subject;
use common::events::{ExpirationComplete, OrderCancelled, OrderCreated};
use common::testing::{EventLog, Logged};
use e2e::orders_api::OrdersApi;
use e2e::process::ServiceProcess;
use e2e::scenario::Scenario;
use e2e::stats::Latency;
use futures::StreamExt;

/// One order placed by a run.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order_id: String,
    pub expires_at: DateTime<Utc>,
    pub paid: bool,
    /// The buyer's cookie, kept for paid orders.
    pub owner: Option<String>,
}

/// Places `count` orders, one fresh ticket and buyer each, in `waves` waves spaced `gap` apart
/// (so expiries are staggered), across `apis` in turn; every `pay_every`-th order is paid at once.
pub async fn place_orders(
    world: &Scenario,
    apis: &[OrdersApi],
    count: usize,
    waves: usize,
    gap: Duration,
    pay_every: usize,
) -> Vec<Placed> {
    let per_wave = count.div_ceil(waves);
    let mut placed = Vec::with_capacity(count);
    for wave in 0..waves {
        let first = wave * per_wave;
        let last = ((wave + 1) * per_wave).min(count);
        let mut tickets = Vec::new();
        for n in first..last {
            tickets.push(
                world
                    .peers
                    .ticket_created(&format!("ticket {n}"), 10.0 + n as f64 / 4.0)
                    .await
                    .expect("ticket:created"),
            );
        }
        let requests = tickets.into_iter().enumerate().map(|(i, ticket)| {
            let n = first + i;
            let api = apis[n % apis.len()].clone();
            let buyer = world.buyer(&format!("buyer{n}@example.com"));
            let peers = world.peers.clone();
            async move {
                let response = api
                    .reserve_announced(&buyer.cookie, &ticket.id)
                    .await
                    .expect("POST /api/orders");
                assert_eq!(response.status, 201, "order {n}: {}", response.body);
                let order = response.json();
                let order_id = order["id"].as_str().expect("order id").to_owned();
                let expires_at = common::events::timestamp::parse(
                    order["expiresAt"].as_str().expect("expiresAt"),
                )
                .expect("RFC 3339");
                let paid = pay_every > 0 && n.is_multiple_of(pay_every);
                if paid {
                    peers
                        .payment_created(&order_id)
                        .await
                        .expect("payment:created");
                }
                Placed {
                    order_id,
                    expires_at,
                    paid,
                    owner: paid.then_some(buyer.cookie),
                }
            }
        });
        // A few at a time: quick, without thrashing the 2-core machine.
        placed.extend(
            futures::stream::iter(requests)
                .buffered(16)
                .collect::<Vec<_>>()
                .await,
        );

        // A payment applied after its order expired would rightly lose to the expiry; the checks
        // below assume every payment landed first, so make sure it did.
        for order in placed[first..].iter().filter(|p| p.paid) {
            let api = &apis[0];
            let owner = order.owner.as_ref().expect("paid orders keep their buyer");
            api.wait_status(owner, &order.order_id, "complete", Duration::from_secs(30))
                .await
                .expect("payment applied");
            assert!(
                Utc::now() < order.expires_at,
                "order {} was paid only after it expired: this machine is too slow for a {} s window",
                order.order_id,
                world.window_secs
            );
        }
        if wave + 1 < waves {
            tokio::time::sleep(gap).await;
        }
    }
    placed
}

/// Whether a run may see an event published twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Republish {
    /// Never: every event exactly once (JetStream drops re-publishes by message id; on NATS
    /// Streaming, a run where nothing crashes publishes nothing twice either).
    Never,
    /// A crash between publishing and its bookkeeping may publish the same event again (NATS
    /// Streaming does not de-duplicate): copies must be identical, and are counted.
    Counted,
}

impl Republish {
    /// What a run with a crash (or a second replica) may see on `transport`: JetStream drops a
    /// re-publish by its message id, NATS Streaming stores it again.
    pub fn on(transport: common::bus::Transport) -> Self {
        match transport {
            common::bus::Transport::JetStream => Republish::Never,
            common::bus::Transport::Streaming => Republish::Counted,
        }
    }
}

/// Waits until every unpaid order has been cancelled, then checks the guarantees: one
/// `order:created` (version 0) per order, exactly one `order:cancelled` (version 1) per unpaid
/// order and none for paid ones, nothing earlier than `expiresAt`. Returns the expiry latency
/// (`expiration:complete` store time minus `expiresAt`) over all orders.
pub async fn assert_expired_exactly_once(
    log: &EventLog,
    placed: &[Placed],
    deadline: Duration,
) -> Latency {
    assert_expired_once(log, placed, deadline, Republish::Never)
        .await
        .latency
}

/// The order an event names: `id` of `order:*`, `orderId` of `expiration:complete`.
fn order_id_of(logged: &Logged) -> Option<String> {
    let body = serde_json::from_str::<serde_json::Value>(&logged.body).ok()?;
    body.get("id")
        .or_else(|| body.get("orderId"))
        .and_then(|id| id.as_str().map(str::to_owned))
}

/// The ids of `placed` orders that `subject`'s events in the log name.
fn order_ids<'a>(all: &[Logged], subject: Subject, placed: &'a [Placed]) -> HashSet<&'a str> {
    let named: HashSet<String> = all
        .iter()
        .filter(|l| l.subject == subject)
        .filter_map(order_id_of)
        .collect();
    placed
        .iter()
        .map(|p| p.order_id.as_str())
        .filter(|id| named.contains(*id))
        .collect()
}

/// Which `expected` orders still lack `subject`'s event, and what the log holds for a few.
fn lacking(
    all: &[Logged],
    placed: &[Placed],
    subject: Subject,
    expected: fn(&Placed) -> bool,
) -> String {
    let have = order_ids(all, subject, placed);
    let lacking: Vec<&Placed> = placed
        .iter()
        .filter(|p| expected(p) && !have.contains(p.order_id.as_str()))
        .collect();
    let mut lines = vec![format!(
        "{} orders have no {subject}; the first of them:",
        lacking.len()
    )];
    for order in lacking.iter().take(8) {
        let seen: Vec<String> = [
            Subject::OrderCreated,
            Subject::ExpirationComplete,
            Subject::OrderCancelled,
        ]
        .into_iter()
        .map(|s| {
            let n = all
                .iter()
                .filter(|l| {
                    l.subject == s && order_id_of(l).as_deref() == Some(order.order_id.as_str())
                })
                .count();
            format!("{s} x{n}")
        })
        .collect();
        lines.push(format!(
            "  order {} (expiresAt {}, {}): {}",
            order.order_id,
            common::events::timestamp::format(&order.expires_at),
            if order.paid { "paid" } else { "unpaid" },
            seen.join(", ")
        ));
    }
    lines.join("\n")
}

/// What a run's events showed.
pub struct Expired {
    /// `expiration:complete` store time minus `expiresAt`, over all orders (first copies).
    pub latency: Latency,
    /// Identical copies of an event already published (only with [`Republish::Counted`]).
    pub republished: usize,
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; events published twice: {}",
            self.latency, self.republished
        )
    }
}

/// [`assert_expired_exactly_once`], where `republish` says whether identical copies of an event
/// are allowed (and counted): the state changes behind them must still happen once, so an
/// unpaid order is cancelled once (one version, 1), a paid one never.
pub async fn assert_expired_once(
    log: &EventLog,
    placed: &[Placed],
    deadline: Duration,
    republish: Republish,
) -> Expired {
    let unpaid = placed.iter().filter(|p| !p.paid).count();
    log.wait_until_explained(
        deadline,
        &format!("{unpaid} order:cancelled events"),
        |all| order_ids(all, Subject::OrderCancelled, placed).len() >= unpaid,
        |all| lacking(all, placed, Subject::OrderCancelled, |p| !p.paid),
    )
    .await;
    log.wait_until_explained(
        deadline,
        &format!("{} expiration:complete events", placed.len()),
        |all| order_ids(all, Subject::ExpirationComplete, placed).len() >= placed.len(),
        |all| lacking(all, placed, Subject::ExpirationComplete, |_| true),
    )
    .await;
    // Anything extra (a second cancellation, a paid order cancelled late) would show up now.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let created = count_by(log.events::<OrderCreated>(), |e| e.id.clone());
    let cancelled = count_by(log.events::<OrderCancelled>(), |e| e.id.clone());
    let expired = count_by(log.events::<ExpirationComplete>(), |e| e.order_id.clone());
    let mut republished = 0;
    let mut copies = |what: &str, id: &str, events: usize, identical: bool| {
        assert!(events >= 1, "order {id}: no {what}");
        assert!(identical, "order {id}: {what} events differ");
        if republish == Republish::Never {
            assert_eq!(events, 1, "order {id}: {events} {what} events");
        }
        republished += events - 1;
    };
    let mut latencies = Vec::new();
    for order in placed {
        let id = &order.order_id;
        let made = created.get(id).map(Vec::as_slice).unwrap_or_default();
        copies(
            "order:created",
            id,
            made.len(),
            made.iter()
                .all(|(e, _)| made.first().is_some_and(|(f, _)| e == f)),
        );
        assert_eq!(made[0].0.version, 0, "order {id}: order:created version");
        let fired = expired.get(id).map(Vec::as_slice).unwrap_or_default();
        copies("expiration:complete", id, fired.len(), true);
        for (_, at) in fired {
            assert!(
                *at >= order.expires_at,
                "order {id}: expired at {at} before its expiresAt {}",
                order.expires_at
            );
        }
        latencies.push(
            (fired[0].1 - order.expires_at)
                .num_microseconds()
                .unwrap_or(i64::MAX) as f64
                / 1000.0,
        );
        let cancellations = cancelled.get(id).map(Vec::as_slice).unwrap_or_default();
        if order.paid {
            assert!(cancellations.is_empty(), "paid order {id} was cancelled");
        } else {
            copies(
                "order:cancelled",
                id,
                cancellations.len(),
                cancellations
                    .iter()
                    .all(|(e, _)| cancellations.first().is_some_and(|(f, _)| e == f)),
            );
            assert_eq!(
                cancellations[0].0.version, 1,
                "order {id}: order:cancelled version"
            );
            for (_, at) in cancellations {
                assert!(
                    *at >= order.expires_at,
                    "order {id} cancelled before it expired"
                );
            }
        }
    }
    Expired {
        latency: Latency::of(&latencies).expect("at least one order"),
        republished,
    }
}

fn count_by<E>(
    events: Vec<(E, DateTime<Utc>)>,
    key: impl Fn(&E) -> String,
) -> HashMap<String, Vec<(E, DateTime<Utc>)>> {
    let mut map: HashMap<String, Vec<(E, DateTime<Utc>)>> = HashMap::new();
    for (event, at) in events {
        map.entry(key(&event)).or_default().push((event, at));
    }
    map
}

/// Latest `expiresAt` of a run: how long to wait at most is measured from there.
pub fn last_expiry(placed: &[Placed]) -> DateTime<Utc> {
    placed
        .iter()
        .map(|p| p.expires_at)
        .max()
        .expect("orders were placed")
}

/// How long from now until `at` plus `slack`.
pub fn until(at: DateTime<Utc>, slack: Duration) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default() + slack
}

/// Waits (up to 60 s) until `count` messages of `subject` are in the world's log.
pub async fn wait_for_some(world: &Scenario, subject: common::Subject, count: usize) {
    world
        .log
        .wait_until(
            Duration::from_secs(60),
            &format!("{count} {subject} events"),
            |all| all.iter().filter(|l| l.subject == subject).count() >= count,
        )
        .await;
}

/// Waits (up to 60 s) until the world's log holds `subject`'s events for at least `count` of the
/// `placed` orders (in a world shared with earlier runs, as a deployment's stream is).
pub async fn wait_for_some_of(
    world: &Scenario,
    placed: &[Placed],
    subject: common::Subject,
    count: usize,
) {
    world
        .log
        .wait_until(
            Duration::from_secs(60),
            &format!("{subject} events for {count} of the orders placed"),
            |all| order_ids(all, subject, placed).len() >= count,
        )
        .await;
}

/// Two orders and two expiration processes of one world, and a client of each orders API.
pub struct TwoOfEach {
    /// `<name>-orders-a`, `<name>-orders-b`, `<name>-expiration-a`, `<name>-expiration-b`.
    pub processes: Vec<ServiceProcess>,
    pub apis: [OrdersApi; 2],
}

/// Starts two replicas of each service in `world`, named after `name`.
pub async fn start_two_of_each(world: &Scenario, name: &str) -> TwoOfEach {
    let orders_a = world
        .start_orders(&format!("{name}-orders-a"))
        .await
        .unwrap();
    let orders_b = world
        .start_orders(&format!("{name}-orders-b"))
        .await
        .unwrap();
    let apis = [
        OrdersApi::new(&orders_a.url()),
        OrdersApi::new(&orders_b.url()),
    ];
    let mut processes = vec![orders_a, orders_b];
    for replica in ["a", "b"] {
        let expiration = world
            .start_expiration(&format!("{name}-expiration-{replica}"))
            .await
            .unwrap();
        processes.push(expiration);
    }
    TwoOfEach { processes, apis }
}
