//! A private world for one test or demo run: its own JetStream stream or NATS Streaming channels
//! (with a subject prefix of its own), its own MongoDB database and Redis key prefix, a JWT
//! secret, and the environment that puts both services in it.

use common::bus::Transport;
use common::http::JwtKey;
use common::testing::{EventLog, TestBus, mongo_uri, redis_url, unique_name};

use crate::peers::{Buyer, Peers, sign_in};
use crate::process::{ServiceProcess, free_port, start_service};

/// A world of its own on the local stack (or on a NATS server of the test's own).
pub struct Scenario {
    pub bus: TestBus,
    /// Every event of the world, as it arrives, with its store time.
    pub log: EventLog,
    pub peers: Peers,
    pub jwt: JwtKey,
    jwt_secret: String,
    /// `MONGO_URI` of this world's database.
    pub mongo_uri: String,
    pub redis_url: String,
    pub redis_prefix: String,
    /// `EXPIRATION_WINDOW_SECONDS` given to orders.
    pub window_secs: u64,
    /// Extra variables for the expiration worker (lease, retry delays).
    pub expiration_overrides: Vec<(String, String)>,
    /// Held for the life of the world: one world at a time per process (see [`Scenario::new`]).
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

/// Worlds run one after another: each drives hundreds of orders through a MongoDB-compatible
/// server that (as FerretDB on SQLite) writes one document at a time, and two at once on the
/// 2-core machine would make each other's timing, not the services, the subject of the test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Scenario {
    /// A world on the local stack's JetStream.
    pub async fn new(window_secs: u64) -> Self {
        Self::on(Transport::JetStream, window_secs).await
    }

    /// A world on the local stack's server of `transport`.
    pub async fn on(transport: Transport, window_secs: u64) -> Self {
        Self::build(TestBus::new(transport).await, window_secs).await
    }

    /// A world on the server at `url` (a test's own), speaking `transport`.
    pub async fn on_server(transport: Transport, url: &str, window_secs: u64) -> Self {
        Self::build(TestBus::on(transport, url).await, window_secs).await
    }

    /// A world on `bus`: for example a stream replicated on a NATS cluster of the test's own
    /// ([`TestBus::replicated`]).
    pub async fn on_bus(bus: TestBus, window_secs: u64) -> Self {
        Self::build(bus, window_secs).await
    }

    /// The world of services deployed elsewhere (a Kubernetes cluster's), reached through `bus`
    /// ([`TestBus::existing`]), whose orders service checks cookies with `jwt_secret` and
    /// expires orders after `window_secs`. Their database and Redis are the deployment's own, so
    /// [`Scenario::start_orders`] and [`Scenario::start_expiration`] are not for this world.
    pub async fn attached(bus: TestBus, jwt_secret: &str, window_secs: u64) -> Self {
        Self::build_with_secret(bus, window_secs, jwt_secret.to_owned()).await
    }

    async fn build(bus: TestBus, window_secs: u64) -> Self {
        Self::build_with_secret(bus, window_secs, unique_name("secret")).await
    }

    async fn build_with_secret(bus: TestBus, window_secs: u64, jwt_secret: String) -> Self {
        let exclusive = ONE_AT_A_TIME.lock().await;
        let name = unique_name("e2e").replace('-', "_");
        let log = bus.log().await;
        let peers = Peers::new(bus.publisher());
        Scenario {
            log,
            peers,
            jwt: JwtKey::new(jwt_secret.as_bytes()),
            jwt_secret,
            mongo_uri: with_database(&mongo_uri(), &name),
            redis_url: redis_url(),
            redis_prefix: name,
            window_secs,
            // A killed worker's claimed jobs fire again after the lease: keep it short here.
            expiration_overrides: vec![
                ("EXPIRATION_LEASE_MS".into(), "3000".into()),
                ("EXPIRATION_PUBLISH_TIMEOUT_MS".into(), "1000".into()),
                ("EXPIRATION_RETRY_INITIAL_MS".into(), "200".into()),
                ("EXPIRATION_RETRY_MAX_MS".into(), "1000".into()),
            ],
            bus,
            _exclusive: exclusive,
        }
    }

    fn common_env(&self, client_id: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .bus
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.push(("NATS_CLIENT_ID".into(), client_id.to_owned()));
        env.push((
            "RUST_LOG".into(),
            std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
        ));
        env
    }

    /// The environment of an orders process listening on `port`.
    pub fn orders_env(&self, port: u16, client_id: &str) -> Vec<(String, String)> {
        let mut env = self.common_env(client_id);
        env.extend([
            ("MONGO_URI".to_owned(), self.mongo_uri.clone()),
            ("JWT_KEY".to_owned(), self.jwt_secret.clone()),
            (
                "EXPIRATION_WINDOW_SECONDS".to_owned(),
                self.window_secs.to_string(),
            ),
            ("PORT".to_owned(), port.to_string()),
        ]);
        env
    }

    /// The environment of an expiration process serving its ops endpoints on `port`.
    pub fn expiration_env(&self, port: u16, client_id: &str) -> Vec<(String, String)> {
        let mut env = self.common_env(client_id);
        env.extend([
            ("REDIS_URL".to_owned(), self.redis_url.clone()),
            ("REDIS_KEY_PREFIX".to_owned(), self.redis_prefix.clone()),
            ("OPS_PORT".to_owned(), port.to_string()),
        ]);
        env.extend(self.expiration_overrides.iter().cloned());
        env
    }

    /// Starts an orders process named `name` and waits until it is ready.
    pub async fn start_orders(&self, name: &str) -> anyhow::Result<ServiceProcess> {
        let port = free_port();
        start_service(name, "orders", self.orders_env(port, name), port).await
    }

    /// Starts an expiration process named `name` and waits until it is ready.
    pub async fn start_expiration(&self, name: &str) -> anyhow::Result<ServiceProcess> {
        let port = free_port();
        start_service(name, "expiration", self.expiration_env(port, name), port).await
    }

    /// A user signed in by the auth service with this world's `JWT_KEY`.
    pub fn buyer(&self, email: &str) -> Buyer {
        sign_in(&self.jwt, email)
    }

    /// The transport of this world.
    pub fn transport(&self) -> Transport {
        self.bus.transport()
    }

    /// Deletes the stream, if the world made it (the database and Redis keys are unique to this
    /// run and small).
    pub async fn finish(self) {
        drop(self.log);
        self.bus.delete().await;
    }
}

/// `base` (`mongodb://host:port`, possibly with a path or options) with its database set to `db`.
fn with_database(base: &str, db: &str) -> String {
    let (address, options) = match base.split_once('?') {
        Some((address, options)) => (address, Some(options)),
        None => (base, None),
    };
    let scheme_end = address.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = address[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(address.len());
    let mut uri = format!("{}/{db}", &address[..host_end]);
    if let Some(options) = options {
        uri.push('?');
        uri.push_str(options);
    }
    uri
}

#[cfg(test)]
mod tests {
    #[test]
    fn sets_the_database_of_a_mongo_uri() {
        assert_eq!(
            super::with_database("mongodb://127.0.0.1:37017", "x"),
            "mongodb://127.0.0.1:37017/x"
        );
        assert_eq!(
            super::with_database("mongodb://h:1/orders", "x"),
            "mongodb://h:1/x"
        );
        assert_eq!(
            super::with_database("mongodb://h:1/?directConnection=true", "x"),
            "mongodb://h:1/x?directConnection=true"
        );
    }
}
