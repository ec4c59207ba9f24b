//! The services as a Kubernetes cluster runs them. `tests/cluster/run.sh` deploys a variant of
//! `k8s/` on the cluster of `scripts/cluster` with `kubectl apply -k` (our images pulled from
//! the registry, the namespace under the restricted Pod Security Standard), then runs these with
//! `--ignored`: everything goes through the cluster's Services (NodePorts the run adds for the
//! test), and kubectl deletes and restarts pods as an operator would.
//!
//! Settings (set by `tests/cluster/run.sh`): `CLUSTER_ORDERS_URL`, `CLUSTER_NATS_URL`,
//! `CLUSTER_TRANSPORT`, `CLUSTER_NAMESPACE`, `CLUSTER_JWT_KEY`, `CLUSTER_WINDOW_SECONDS`;
//! `kubectl` on the PATH with `KUBECONFIG` set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Subject;
use common::bus::Transport;
use common::testing::{TestBus, eventually, eventually_explained};
use e2e::orders_api::OrdersApi;
use e2e::scenario::Scenario;
use e2e::walk::walk;

use super::support::{
    Placed, Republish, assert_expired_once, last_expiry, place_orders, until, wait_for_some_of,
};

/// The stream (JetStream) or cluster id (NATS Streaming) the manifests give both services.
const NATS_CLUSTER_ID: &str = "ticketing";

/// Where the deployment is, and how it was deployed.
struct Cluster {
    orders_url: String,
    nats_url: String,
    transport: Transport,
    namespace: String,
    jwt_key: String,
    window_secs: u64,
}

impl Cluster {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: these tests run against a deployment, through tests/cluster/run.sh")
            })
        };
        Cluster {
            orders_url: var("CLUSTER_ORDERS_URL"),
            nats_url: var("CLUSTER_NATS_URL"),
            transport: match var("CLUSTER_TRANSPORT").as_str() {
                "jetstream" => Transport::JetStream,
                "streaming" => Transport::Streaming,
                other => panic!("CLUSTER_TRANSPORT={other}: jetstream or streaming"),
            },
            namespace: var("CLUSTER_NAMESPACE"),
            jwt_key: var("CLUSTER_JWT_KEY"),
            window_secs: var("CLUSTER_WINDOW_SECONDS")
                .parse()
                .expect("CLUSTER_WINDOW_SECONDS: seconds"),
        }
    }

    /// The deployment's world: its own stream or channels, its JWT key. A Service may not
    /// route yet to a pod just started (kube-proxy follows within a second or so), so the first
    /// connection to the broker is retried for up to 60 s, each try given 2 s: a try whose SYN
    /// went to a pod already gone keeps its route until it gives up, and a new try is routed
    /// afresh.
    async fn world(&self) -> Scenario {
        let address = self.nats_url.trim_start_matches("nats://").to_owned();
        eventually_explained(
            Duration::from_secs(60),
            &format!("the broker to answer at {address}"),
            || async {
                let connect = tokio::net::TcpStream::connect(&address);
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), connect).await,
                    Ok(Ok(_))
                )
            },
            async {
                // What routes there: the broker's pods and the Services' endpoints.
                let state = self
                    .kubectl_lenient(&["get", "pods,endpointslices", "-o", "wide"])
                    .await;
                format!("the namespace now:\n{state}")
            },
        )
        .await;
        let bus = TestBus::existing(self.transport, &self.nats_url, NATS_CLUSTER_ID).await;
        Scenario::attached(bus, &self.jwt_key, self.window_secs).await
    }

    /// What `kubectl --namespace <namespace> args…` did.
    async fn run_kubectl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("kubectl")
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .output()
            .await
            .expect("kubectl on the PATH")
    }

    /// `kubectl --namespace <namespace> args…`; its output, or a panic with what it said.
    async fn kubectl(&self, args: &[&str]) -> String {
        let output = self.run_kubectl(args).await;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }

    /// `kubectl --namespace <namespace> args…`'s output and errors, whatever its exit: for
    /// explaining a failure.
    async fn kubectl_lenient(&self, args: &[&str]) -> String {
        let output = self.run_kubectl(args).await;
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// The names of the pods labelled `app=<app>`.
    async fn pods(&self, app: &str) -> Vec<String> {
        let label = format!("app={app}");
        let names = self
            .kubectl(&["get", "pods", "-l", &label, "-o", "name"])
            .await;
        names.lines().map(str::to_owned).collect()
    }

    /// Waits (up to 3 minutes) until the pods labelled `app=<app>` are new ones only, none of
    /// `before`, and all Ready.
    async fn replaced(&self, app: &str, before: &[String]) {
        let label = format!("app={app}");
        let ready = r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#;
        eventually(
            Duration::from_secs(180),
            &format!("new {app} pods, Ready"),
            || async {
                let now = self.pods(app).await;
                if now.is_empty() || now.iter().any(|pod| before.contains(pod)) {
                    return false;
                }
                let statuses = self
                    .kubectl(&["get", "pods", "-l", &label, "-o", ready])
                    .await;
                statuses.split_whitespace().all(|status| status == "True")
            },
        )
        .await;
    }

    /// Waits (up to 2 minutes) until the pods labelled `app=<app>` for each of `apps` have all
    /// been Ready for `steady` in a row. A service that lost a dependency answers its readiness
    /// probe 503 and, after the probe's failures (2 × 5 s in the manifests), is taken out of its
    /// Service, whose port then refuses connections; Ready throughout a span longer than that
    /// means it is back for good.
    async fn steadily_ready(&self, apps: &[&str], steady: Duration) {
        let ready = r#"jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}"#;
        let since = std::cell::Cell::new(None::<Instant>);
        eventually(
            Duration::from_secs(120),
            &format!("{apps:?} Ready for {steady:?} in a row"),
            || {
                let since = &since;
                async move {
                    let mut all = true;
                    for app in apps {
                        let label = format!("app={app}");
                        let statuses = self
                            .kubectl(&["get", "pods", "-l", &label, "-o", ready])
                            .await;
                        all &= !statuses.trim().is_empty()
                            && statuses.split_whitespace().all(|status| status == "True");
                    }
                    if !all {
                        since.set(None);
                        return false;
                    }
                    let first = since.get().unwrap_or_else(Instant::now);
                    since.set(Some(first));
                    if first.elapsed() >= steady {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    false
                }
            },
        )
        .await;
    }

    /// Waits until `deployment` has rolled out: every replica updated and Ready.
    async fn rolled_out(&self, deployment: &str) {
        self.kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=180s",
        ])
        .await;
    }
}

#[tokio::test]
#[ignore = "needs a deployment: tests/cluster/run.sh"]
async fn on_kubernetes_an_order_expires_through_the_services_and_a_paid_one_stays_complete() {
    let cluster = Cluster::from_env();
    let ready = e2e::http::get(&format!("{}/readyz", cluster.orders_url), None)
        .await
        .expect("orders answers through its Service");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let chosen = ready.json()["nats_transport"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        chosen.starts_with(&cluster.transport.to_string()),
        "orders runs on {chosen:?}, not {}",
        cluster.transport
    );
    let world = cluster.world().await;
    let api = OrdersApi::new(&cluster.orders_url);
    let summary = walk(&world, &api, cluster.window_secs)
        .await
        .expect("the walk");
    println!("on Kubernetes, {chosen}: {summary}");
    world.finish().await;
}

#[tokio::test]
#[ignore = "needs a deployment: tests/cluster/run.sh"]
async fn on_kubernetes_deleting_the_expiration_pod_mid_run_loses_no_job() {
    let cluster = Cluster::from_env();
    let world = cluster.world().await;
    let api = OrdersApi::new(&cluster.orders_url);
    let placed = place_orders(&world, &[api], 40, 4, Duration::from_millis(1500), 4).await;
    // Mid-run: once the first jobs have fired, the worker's pod goes (SIGTERM, as on a node
    // drain or a rollout); its replacement fires the rest from Redis.
    wait_for_some_of(&world, &placed, Subject::ExpirationComplete, 5).await;
    cluster
        .kubectl(&["delete", "pod", "-l", "app=expiration", "--wait=false"])
        .await;
    let deadline = until(last_expiry(&placed), Duration::from_secs(90));
    let expired = assert_expired_once(
        &world.log,
        &placed,
        deadline,
        Republish::on(cluster.transport),
    )
    .await;
    cluster.rolled_out("expiration-depl").await;
    println!(
        "on Kubernetes, {}: 40 orders, the expiration pod deleted mid-run: {expired}",
        cluster.transport
    );
    world.finish().await;
}

/// What one request of the rolling-restart test got.
enum Outcome {
    /// 201, with the order and the cookie of its buyer.
    Created {
        order: serde_json::Value,
        cookie: String,
    },
    /// Anything else: the status and body, or why nothing came back.
    Other(String),
}

#[tokio::test]
#[ignore = "needs a deployment: tests/cluster/run.sh"]
async fn on_kubernetes_a_rolling_restart_of_orders_loses_no_order_answered_201() {
    let cluster = Cluster::from_env();
    let world = Arc::new(cluster.world().await);
    let api = OrdersApi::new(&cluster.orders_url);
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    // Three buyers keep placing orders through the Service while the Deployment rolls, about
    // twelve a second in all: a sale's pace, which the database drains as they expire.
    let buyers: Vec<_> = (0..3)
        .map(|n| {
            let (world, api, stop, refused) =
                (world.clone(), api.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let buyer = world.buyer(&format!("rolling{n}@example.com"));
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let ticket = world
                        .peers
                        .ticket_created("Rolling", 15.0)
                        .await
                        .expect("ticket:created");
                    // A refused connection reached no orders process: the request was never
                    // sent, and a client tries again, as ingress-nginx does with its next
                    // upstream (`proxy_next_upstream error`). Counted, and allowed for 2 s.
                    let mut answer = api.reserve_announced(&buyer.cookie, &ticket.id).await;
                    let first_refused = Instant::now();
                    while let Err(e) = &answer {
                        if !e.to_string().contains("Connection refused")
                            || first_refused.elapsed() > Duration::from_secs(2)
                        {
                            break;
                        }
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        answer = api.reserve_announced(&buyer.cookie, &ticket.id).await;
                    }
                    let outcome = match answer {
                        Ok(answer) if answer.status == 201 => Outcome::Created {
                            order: answer.json(),
                            cookie: buyer.cookie.clone(),
                        },
                        Ok(answer) => Outcome::Other(format!("{} {}", answer.status, answer.body)),
                        Err(e) => Outcome::Other(format!("no answer: {e}")),
                    };
                    outcomes.push(outcome);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cluster.pods("orders").await;
    let started = Instant::now();
    cluster
        .kubectl(&["rollout", "restart", "deployment/orders-depl"])
        .await;
    cluster.rolled_out("orders-depl").await;
    cluster.replaced("orders", &before).await;
    let rolled = started.elapsed();
    // The old pod answers through its preStop pause, then drains: keep buying through it all.
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let mut placed = Vec::new();
    let mut failed = Vec::new();
    for buyer in buyers {
        for outcome in buyer.await.expect("a buyer") {
            match outcome {
                Outcome::Created { order, cookie } => {
                    let order_id = order["id"].as_str().expect("order id").to_owned();
                    let shown = api.show(&cookie, &order_id).await.expect("GET the order");
                    assert_eq!(
                        shown.status, 200,
                        "order {order_id}, answered 201, is gone: {}",
                        shown.body
                    );
                    let expires_at = order["expiresAt"].as_str().expect("expiresAt");
                    placed.push(Placed {
                        order_id,
                        expires_at: common::events::timestamp::parse(expires_at).expect("RFC 3339"),
                        paid: false,
                        owner: None,
                    });
                }
                Outcome::Other(what) => failed.push(what),
            }
        }
    }
    assert!(placed.len() >= 10, "only {} orders placed", placed.len());
    // Every order answered 201 is there, and lives its life: announced, expired and cancelled
    // once each.
    let deadline = until(last_expiry(&placed), Duration::from_secs(90));
    let expired = assert_expired_once(
        &world.log,
        &placed,
        deadline,
        Republish::on(cluster.transport),
    )
    .await;
    println!(
        "on Kubernetes, {}: orders rolled out in {:.1} s while 3 buyers placed {} orders; every \
         one answered 201 kept, announced, expired and cancelled once ({expired}); {} requests \
         not answered 201 {:?}; connections refused and tried again: {}",
        cluster.transport,
        rolled.as_secs_f64(),
        placed.len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        refused.load(Ordering::Relaxed)
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the rolling restart: {failed:?}",
        failed.len()
    );
    if let Ok(world) = Arc::try_unwrap(world) {
        world.finish().await;
    }
}

#[tokio::test]
#[ignore = "needs a deployment: tests/cluster/run.sh"]
async fn on_kubernetes_the_broker_keeps_its_store_on_its_volume_when_its_pod_is_replaced() {
    let cluster = Cluster::from_env();
    let before = cluster.world().await;
    // What the broker holds now, as a reader from the start sees it.
    eventually(Duration::from_secs(10), "the log to catch up", || async {
        let seen = before.log.all().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen == before.log.all().len()
    })
    .await;
    let counts = |world: &Scenario| {
        Subject::ALL.map(|subject| {
            world
                .log
                .all()
                .iter()
                .filter(|logged| logged.subject == subject)
                .count()
        })
    };
    let held = counts(&before);
    assert!(
        held.iter().sum::<usize>() > 0,
        "the broker holds no event: run the other tests first"
    );
    before.finish().await;
    let pods = cluster.pods("nats").await;
    cluster
        .kubectl(&["delete", "pod", "-l", "app=nats", "--wait=true"])
        .await;
    cluster.replaced("nats", &pods).await;
    let after = cluster.world().await;
    after
        .log
        .wait_until(
            Duration::from_secs(30),
            "every event stored before the broker's pod was replaced",
            |all| {
                Subject::ALL.iter().zip(held).all(|(subject, count)| {
                    all.iter()
                        .filter(|logged| logged.subject == *subject)
                        .count()
                        >= count
                })
            },
        )
        .await;
    // The services find the new broker by themselves (async-nats reconnects) and are Ready
    // again; then an order still expires.
    cluster
        .steadily_ready(&["orders", "expiration"], Duration::from_secs(12))
        .await;
    let api = OrdersApi::new(&cluster.orders_url);
    let placed = place_orders(&after, &[api], 4, 1, Duration::ZERO, 2).await;
    let deadline = until(last_expiry(&placed), Duration::from_secs(60));
    let expired = assert_expired_once(
        &after.log,
        &placed,
        deadline,
        Republish::on(cluster.transport),
    )
    .await;
    println!(
        "on Kubernetes, {}: the broker's pod replaced; its {} stored events read back from its \
         volume, and orders placed after it expire: {expired}",
        cluster.transport,
        held.iter().sum::<usize>()
    );
    after.finish().await;
}
