//! Test support: the worker in-process or as a process, queues with unique names, and Redis and
//! NATS servers of a test's own for the tests that stop them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Event;
use common::bus::{self, StreamSpec};
use common::config::Settings;
use common::events::{OrderCancelled, OrderCancelledTicket, OrderCreated, OrderCreatedTicket};
use common::testing::{TestStream, eventually, redis_url, unique_name};
use expiration::config::Config;
use expiration::queue::{Queue, QueueName};
use expiration::startup::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
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
    pub ops: SocketAddr,
    pub queue: Queue,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), expiration::startup::StartupError>>,
}

impl TestApp {
    /// Builds the worker from `env` and runs it.
    pub async fn start(env: &Env) -> Self {
        let config = Config::from_lookup(|name| env.get(name).cloned()).expect("a valid config");
        let app = Application::build(config).await.expect("the worker starts");
        let ops = app.ops_address();
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
        metric(self.ops, name).await
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

/// `GET path` on `address`: (status line, body).
pub async fn http_get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of metric line `name` served at `address`, 0 if absent.
pub async fn metric(address: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(address, "/metrics").await;
    body.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|value| value.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of the test's own under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `expiration` binary, started with `env`, its log in a file.
pub struct WorkerProcess {
    pub child: Child,
    pub ops: SocketAddr,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Starts the built binary with `env` and waits until `/healthz` answers.
    pub async fn spawn(env: &Env) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("expiration")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_expiration"))
            .env_clear()
            .envs(env)
            .env("OPS_PORT", port.to_string())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("the expiration binary starts");
        let ops: SocketAddr = ([127, 0, 0, 1], port).into();
        let process = WorkerProcess { child, ops, log };
        eventually(
            Duration::from_secs(15),
            "the worker process to answer /healthz",
            || async { tokio::net::TcpStream::connect(ops).await.is_ok() },
        )
        .await;
        process
    }

    /// The value of metric line `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.ops, name).await
    }

    /// SIGKILL: the process dies on the spot.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub async fn terminate(self) -> bool {
        self.terminate_with_log().await.0
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0, and its log.
    pub async fn terminate_with_log(mut self) -> (bool, String) {
        signal(self.child.id().unwrap(), "TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the worker exits within 15 s of SIGTERM")
            .unwrap();
        (status.success(), self.log_text())
    }

    /// The process' log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Keep the log of a failed test for its post-mortem; print where it is.
        if std::thread::panicking() {
            eprintln!("worker log: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// A `redis-server` of the test's own, with append-only persistence fsynced on every write.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts it on a free port in a fresh directory.
    pub async fn start() -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        server.launch().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(10), "redis-server to answer", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// SIGKILL, then the same server again on the same port and directory.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server -js` of the test's own, with its store in a fresh directory.
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts it on a free port.
    pub async fn start() -> Self {
        let mut server = NatsServer {
            port: free_port(),
            dir: temp_dir("nats"),
            child: None,
        };
        server.launch().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and store.
    pub async fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server is installed");
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "nats-server to answer",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id().unwrap(), "TERM");
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A stream of the test's own on an arbitrary server (the test-owned NATS), as
/// [`TestStream`] is on the local stack's.
pub struct OwnStream {
    pub js: async_nats::jetstream::Context,
    pub spec: StreamSpec,
}

impl OwnStream {
    /// Connects to `url` and creates the stream.
    pub async fn new(url: &str) -> Self {
        let client = async_nats::ConnectOptions::new()
            // Reconnect quickly after the test restarts the server.
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(url)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let name = unique_name("own");
        let spec = StreamSpec {
            subject_prefix: format!("{name}."),
            name,
        };
        bus::ensure_stream(&js, &spec).await.unwrap();
        OwnStream { js, spec }
    }

    /// The environment a worker needs to use this stream on `url`.
    pub fn env(&self, url: &str) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", url.to_owned()),
            ("NATS_CLUSTER_ID", self.spec.name.clone()),
            ("NATS_SUBJECT_PREFIX", self.spec.subject_prefix.clone()),
        ]
    }

    /// Publishes `event` and waits for the ack.
    pub async fn publish<E: Event>(&self, event: &E) {
        bus::Publisher::new(self.js.clone(), self.spec.clone(), None)
            .publish(event)
            .await
            .unwrap();
    }

    /// How many messages the stream holds on `E`'s subject.
    pub async fn count<E: Event>(&self) -> u64 {
        let Ok(stream) = self.js.get_stream(&self.spec.name).await else {
            return 0;
        };
        let subject = self.spec.subject(E::SUBJECT);
        match stream.info_with_subjects(subject.clone()).await {
            Ok(mut info) => {
                use futures::TryStreamExt;
                let mut total = 0;
                while let Ok(Some((name, count))) = info.try_next().await {
                    if name == subject {
                        total += count as u64;
                    }
                }
                total
            }
            Err(_) => 0,
        }
    }
}

/// Publishes `event` on `stream` under another message id than its own, as a redelivery by a
/// peer would arrive (JetStream would drop a second publish with the same id).
pub async fn publish_again<E: Event>(stream: &TestStream, event: &E, message_id: &str) {
    stream
        .publisher()
        .publish_body(
            E::SUBJECT,
            message_id,
            serde_json::to_vec(event).unwrap().into(),
        )
        .await
        .unwrap();
}
