//! Starting the service for one test, and talking to it over HTTP.

use std::time::Duration;

use bytes::Bytes;
use common::Subject;
use common::bus::{StreamSpec, consumer_name};
use common::config::Settings;
use common::http::{JwtKey, UserPayload, auth::session_cookie};
use common::testing::{ServiceProcess, TestStream, free_port, mongo_uri, nats_url, temp_dir};
use http::Method;
use mongodb::Database;
use mongodb::bson::oid::ObjectId;
use orders::models::{Order, Orders, Ticket, Tickets};
use orders::startup::StartupError;
use orders::{Application, Config};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "test-jwt-key";

/// A running service with its own database and stream.
pub struct TestApp {
    pub port: u16,
    pub stream: TestStream,
    pub db: Database,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), StartupError>>,
}

pub use common::testing::Answer;

/// The settings of a test's service: the local stack, a database named after the test's
/// stream, port 0 and a fast relay.
pub fn test_config(spec: &StreamSpec, nats: &str) -> Config {
    let database = spec.name.replace('.', "_");
    let uri = format!("{}/{database}", mongo_uri().trim_end_matches('/'));
    let env = [
        ("JWT_KEY", JWT_SECRET.to_owned()),
        ("MONGO_URI", uri),
        ("NATS_URL", nats.to_owned()),
        ("NATS_CLUSTER_ID", spec.name.clone()),
        ("NATS_SUBJECT_PREFIX", spec.subject_prefix.clone()),
        ("PORT", "0".to_owned()),
    ];
    let mut config = Config::from_lookup(|name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })
    .expect("test configuration");
    config.relay_retry = Duration::from_millis(100);
    config
}

/// Logs to the test output when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        common::telemetry::init_from_env();
    }
}

impl TestApp {
    /// Starts the service on a fresh stream and database.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// As [`TestApp::spawn`], adjusting the configuration first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        init_logs();
        let stream = TestStream::new().await;
        let mut config = test_config(&stream.spec, &nats_url());
        adjust(&mut config);
        let (port, db, shutdown, task) = start(config).await;
        TestApp {
            port,
            stream,
            db,
            shutdown,
            task,
        }
    }

    /// Stops the service (as SIGTERM would), then removes its database and stream.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the service stops within 15 s")
            .expect("the service task does not panic")
            .expect("the service stops cleanly");
        let _ = self.db.drop().await;
        self.stream.delete().await;
    }

    pub fn orders(&self) -> Orders {
        Orders::new(&self.db)
    }

    pub fn tickets(&self) -> Tickets {
        Tickets::new(&self.db)
    }

    /// Stores a ticket replica directly, as `ticket:created` would.
    pub async fn ticket(&self, title: &str, price: f64) -> Ticket {
        let ticket = Ticket {
            id: ObjectId::new(),
            title: title.to_owned(),
            price,
            version: 0,
        };
        assert!(self.tickets().insert(&ticket).await.unwrap());
        ticket
    }

    /// The stored order `id`.
    /// How many outbox entries of order `id` JetStream has not acknowledged yet.
    pub async fn unpublished(&self, id: &str) -> usize {
        unpublished(&self.db, &self.order(id).await).await
    }

    pub async fn order(&self, id: &str) -> Order {
        self.orders()
            .get(ObjectId::parse_str(id).unwrap())
            .await
            .unwrap()
            .expect("the order is stored")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Answer {
        send(self.port, method, path, headers, body).await
    }

    pub async fn get(&self, path: &str, cookie: &str) -> Answer {
        self.send(Method::GET, path, &[("cookie", cookie)], None)
            .await
    }

    pub async fn delete(&self, path: &str, cookie: &str) -> Answer {
        self.send(Method::DELETE, path, &[("cookie", cookie)], None)
            .await
    }

    pub async fn post_json(&self, path: &str, cookie: &str, body: &Value) -> Answer {
        self.send(
            Method::POST,
            path,
            &[("cookie", cookie), ("content-type", "application/json")],
            Some(Bytes::from(body.to_string())),
        )
        .await
    }

    /// `POST /api/orders` for `ticket_id`.
    pub async fn order_ticket(&self, cookie: &str, ticket_id: &ObjectId) -> Answer {
        order_ticket(self.port, cookie, ticket_id).await
    }

    /// Reserves a fresh ticket titled `title` for the buyer of `cookie`; returns the order id.
    pub async fn open_order(&self, cookie: &str, title: &str) -> String {
        let ticket = self.ticket(title, 20.0).await;
        let answer = self.order_ticket(cookie, &ticket.id).await;
        assert_eq!(answer.status, http::StatusCode::CREATED, "{}", answer.body);
        answer.json()["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the service's consumer of `subject` has acknowledged everything on it.
    pub async fn wait_until_acked(&self, subject: Subject) {
        let stream = self
            .stream
            .js
            .get_stream(&self.stream.spec.name)
            .await
            .unwrap();
        let name = consumer_name(orders::listeners::QUEUE_GROUP, subject);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(info) = stream.consumer_info(&name).await
                && info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.consumer_sequence > 0
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{subject} not all acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Builds and runs the service; returns its port, database, stop token and task.
pub async fn start(
    config: Config,
) -> (
    u16,
    Database,
    CancellationToken,
    JoinHandle<Result<(), StartupError>>,
) {
    let shutdown = CancellationToken::new();
    let app = Application::build(config)
        .await
        .expect("the service starts");
    let port = app.port();
    let db = app.database().clone();
    let task = tokio::spawn(app.run(shutdown.clone()));
    (port, db, shutdown, task)
}

/// The `orders` binary of this build, with exactly `env` (plus `PATH`).
pub fn orders_binary(env: &[(&str, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orders"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null());
    command
}

/// The `orders` binary of this build as a process on a free port, with the environment of
/// [`full_env`] and `extra` settings, ready.
pub async fn orders_process(stream: &TestStream, extra: &[(&str, &str)]) -> ServiceProcess {
    let port = free_port();
    let mut env: Vec<(String, String)> = full_env(stream)
        .into_iter()
        .filter(|(name, _)| *name != "PORT")
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    env.push(("PORT".into(), port.to_string()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    ServiceProcess::start(
        "orders",
        std::path::Path::new(env!("CARGO_BIN_EXE_orders")),
        env,
        port,
        &temp_dir("orders-logs"),
    )
    .await
    .expect("the orders binary starts and is ready")
}

/// The environment of an `orders` process on `stream`, with a database named after it, port 0
/// and a key the tests check is never logged.
pub fn full_env(stream: &TestStream) -> Vec<(&'static str, String)> {
    let mut env = stream.env();
    env.push(("JWT_KEY", "a-secret-that-must-not-be-logged".into()));
    env.push((
        "MONGO_URI",
        format!("{}/{}", mongo_uri().trim_end_matches('/'), stream.spec.name),
    ));
    env.push(("PORT", "0".into()));
    env
}

/// One request on a fresh connection.
pub async fn send(
    port: u16,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Answer {
    common::testing::send(("127.0.0.1", port), method, path, headers, body)
        .await
        .expect("the service answers")
}

/// `POST /api/orders` for `ticket_id` to the service on `port`, signed in with `cookie`.
pub async fn order_ticket(port: u16, cookie: &str, ticket_id: &ObjectId) -> Answer {
    let body = serde_json::json!({ "ticketId": ticket_id.to_hex() }).to_string();
    send(
        port,
        Method::POST,
        "/api/orders",
        &[("cookie", cookie), ("content-type", "application/json")],
        Some(Bytes::from(body)),
    )
    .await
}

/// A user as the auth service puts it in the token.
pub fn user(id: &str) -> UserPayload {
    UserPayload {
        id: id.to_owned(),
        email: format!("{id}@test.com"),
        iat: Some(1_764_000_000),
    }
}

/// A `session` cookie header for a new user; returns the header and the user id.
pub fn signed_in() -> (String, String) {
    let id = ObjectId::new().to_hex();
    (
        session_cookie(&JwtKey::new(JWT_SECRET.as_bytes()).sign(&user(&id))),
        id,
    )
}

/// How many of `order`'s outbox entries are not marked published in `db`.
pub async fn unpublished(db: &Database, order: &Order) -> usize {
    let ids: Vec<String> = order.outbox.iter().map(|entry| entry.id.clone()).collect();
    let marked = orders::models::PublishedEvents::new(db)
        .marked(&ids)
        .await
        .unwrap();
    ids.iter().filter(|id| !marked.contains(*id)).count()
}
