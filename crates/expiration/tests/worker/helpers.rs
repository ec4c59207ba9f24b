//! Test support of the worker's tests: events, queues with unique names, the worker in this
//! process or as a process. Servers, streams and HTTP come from `common::testing`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::config::Settings;
use common::events::{OrderCancelled, OrderCancelledTicket, OrderCreated, OrderCreatedTicket};
use common::testing::{ServiceProcess, free_port, redis_url, temp_dir, unique_name};
use expiration::config::Config;
use expiration::queue::{Queue, QueueName};
use expiration::startup::Application;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// An order id (24 hex digits) unique within the test process.
pub fn order_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:08x}{:016x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An `order:created` for `id` expiring at `expires_at_ms`.
pub fn order_created(id: &str, expires_at_ms: i64) -> OrderCreated {
    OrderCreated {
        id: id.to_owned(),
        version: 0,
        status: common::events::OrderStatus::Created,
        user_id: format!("{:024x}", 1),
        expires_at: DateTime::from_timestamp_millis(expires_at_ms).unwrap(),
        ticket: OrderCreatedTicket {
            id: format!("{:024x}", 2),
            price: 20.0,
        },
    }
}

/// An `order:cancelled` for `id`.
pub fn order_cancelled(id: &str) -> OrderCancelled {
    OrderCancelled {
        id: id.to_owned(),
        version: 1,
        ticket: OrderCancelledTicket {
            id: format!("{:024x}", 2),
        },
    }
}

/// A queue with a unique name on `url`.
pub async fn queue_on(url: &str) -> Queue {
    Queue::connect(url, QueueName::new("test", unique_name("q")))
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} does not answer ({e}); run scripts/stack up"))
}

/// A queue with a unique name on the local stack's Redis.
pub async fn test_queue() -> Queue {
    queue_on(&redis_url()).await
}

/// The environment of a worker on `stream` and the queue `queue` at `redis`, with short
/// leases and retries so tests stay fast.
pub fn worker_env(stream: &[(&'static str, String)], redis: &str, queue: &QueueName) -> Env {
    let mut env: Env = stream
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    for (k, v) in [
        ("REDIS_URL", redis.to_owned()),
        ("REDIS_KEY_PREFIX", queue.prefix.clone()),
        ("EXPIRATION_QUEUE", queue.name.clone()),
        ("OPS_PORT", "0".to_owned()),
        ("EXPIRATION_LEASE_MS", "2000".to_owned()),
        ("EXPIRATION_PUBLISH_TIMEOUT_MS", "500".to_owned()),
        ("EXPIRATION_RETRY_INITIAL_MS", "200".to_owned()),
        ("EXPIRATION_RETRY_MAX_MS", "1000".to_owned()),
        ("EXPIRATION_MAX_ATTEMPTS", "100".to_owned()),
        ("RUST_LOG", "info,expiration=debug".to_owned()),
    ] {
        env.insert(k.to_owned(), v);
    }
    env
}

/// Environment variables by name.
pub type Env = HashMap<String, String>;

/// The worker running in this process.
pub struct TestApp {
    /// The port of its ops endpoints.
    pub ops: u16,
    pub queue: Queue,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), expiration::startup::StartupError>>,
}

impl TestApp {
    /// Builds the worker from `env` and runs it.
    pub async fn start(env: &Env) -> Self {
        let config = Config::from_lookup(|name| env.get(name).cloned()).expect("a valid config");
        let app = Application::build(config).await.expect("the worker starts");
        let ops = app.ops_address().port();
        let queue = app.queue().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        TestApp {
            ops,
            queue,
            shutdown,
            task,
        }
    }

    /// The value of metric line `name` (for example `jobs_fired_total`), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        common::testing::metric(self.ops, name).await
    }

    /// Stops the worker and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the worker stops within 15 s")
            .unwrap()
            .expect("the worker stops cleanly");
    }
}

/// The `expiration` binary of this build as a process with `env` on a free ops port, ready.
pub async fn spawn_worker(env: &Env) -> ServiceProcess {
    let port = free_port();
    let mut env: Vec<(String, String)> = env.clone().into_iter().collect();
    env.push(("OPS_PORT".into(), port.to_string()));
    ServiceProcess::start(
        "expiration",
        std::path::Path::new(env!("CARGO_BIN_EXE_expiration")),
        env,
        port,
        &temp_dir("expiration-logs"),
    )
    .await
    .expect("the expiration binary starts and is ready")
}

/// Lease used by the queue-level tests.
pub const LEASE: Duration = Duration::from_secs(30);

/// `expiration <args>` (the queue tool) with only the variables naming the queue `name` at
/// `redis_url`; its standard output, once it has exited 0.
pub async fn run_queue_tool(redis_url: &str, name: &QueueName, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_expiration"))
        .args(args)
        .env_clear()
        .env("REDIS_URL", redis_url)
        .env("REDIS_KEY_PREFIX", &name.prefix)
        .env("EXPIRATION_QUEUE", &name.name)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}
