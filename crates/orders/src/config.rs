//! The service's settings: each declared once below, with its environment variable, default and
//! help (`orders --help`, `orders --env-vars`); read and validated once at start.

use std::fmt;
use std::time::Duration;

use clap::Parser;
use common::bus::NatsConfig;
use common::config::{Expected, Settings, parse, redact_url};
use common::http::JwtKey;
use common::server::HttpArgs;
use common::telemetry::LogArgs;

/// Database used when `MONGO_URI` names none (`mongodb://host:27017`).
pub const DEFAULT_DATABASE: &str = "orders";

/// The orders service: buyers reserve tickets (docs/contract.md §4), orders expire unless paid.
#[derive(Clone, Parser)]
#[command(name = "orders", version, about, long_about = None)]
pub struct Config {
    /// MongoDB URI; its path names the database (`orders` when absent)
    #[arg(long = "mongo-uri", env = "MONGO_URI", hide_env_values = true, value_parser = MongoUri::parse)]
    pub mongo: MongoUri,
    /// HS256 secret shared with the auth service; never logged
    #[arg(long = "jwt-key", env = "JWT_KEY", hide_env_values = true, value_parser = jwt_key)]
    pub jwt_key: JwtKey,
    /// How long a new order holds its ticket, in seconds
    #[arg(long = "expiration-window-seconds", env = "EXPIRATION_WINDOW_SECONDS", default_value = "900", value_parser = parse::seconds)]
    pub expiration_window: Duration,
    /// Longest the service works on a request once its body has arrived, in seconds; past it
    /// the answer is 503 with Retry-After (a stalled database never holds a caller longer)
    #[arg(long = "request-timeout-seconds", env = "REQUEST_TIMEOUT_SECONDS", default_value = "5", value_parser = parse::fractional_seconds)]
    pub request_timeout: Duration,
    /// HTTP port of the API and of /healthz, /readyz, /metrics (0: any free port)
    #[arg(long, env = "PORT", default_value = "3000", value_parser = parse::port)]
    pub port: u16,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub http: HttpArgs<1024>,
    #[command(flatten)]
    pub log: LogArgs,
    /// Tests only: claim order changes but never apply them, as a crash would leave them
    #[arg(long = "fault-hold-after-claim", env = "ORDERS_FAULT_HOLD_AFTER_CLAIM", default_value = "false", value_parser = parse::boolean, hide = true)]
    pub fault_hold_after_claim: bool,
    /// Largest request body accepted.
    #[arg(skip = 16 * 1024_usize)]
    pub body_limit: usize,
    /// How soon the outbox relay retries events a request could not publish.
    #[arg(skip = Duration::from_secs(1))]
    pub relay_retry: Duration,
    /// How often the relay looks for stray events while none are known (a safety net).
    #[arg(skip = Duration::from_secs(60))]
    pub relay_sweep: Duration,
    /// Longest a request waits for JetStream before leaving its events to the relay.
    #[arg(skip = Duration::from_secs(2))]
    pub publish_timeout: Duration,
}

impl Settings for Config {}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mongo", &self.mongo)
            .field("jwt_key", &self.jwt_key)
            .field("expiration_window", &self.expiration_window)
            .field("request_timeout", &self.request_timeout)
            .field("port", &self.port)
            .field("nats", &self.nats)
            .field("http", &self.http)
            .field("fault_hold_after_claim", &self.fault_hold_after_claim)
            .finish_non_exhaustive()
    }
}

fn jwt_key(value: &str) -> Result<JwtKey, Expected> {
    parse::non_empty(value).map(|key| JwtKey::new(key.as_bytes()))
}

/// `MONGO_URI` and the database its path names. `Debug` hides any password.
#[derive(Clone)]
pub struct MongoUri {
    pub uri: String,
    pub database: String,
}

impl fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (database {})", redact_url(&self.uri), self.database)
    }
}

impl MongoUri {
    /// A `mongodb://` or `mongodb+srv://` URI; the database from its path
    /// (`mongodb://host:27017/orders?opts` → `orders`), [`DEFAULT_DATABASE`] when it has none.
    pub fn parse(uri: &str) -> Result<Self, Expected> {
        let rest = uri
            .strip_prefix("mongodb://")
            .or_else(|| uri.strip_prefix("mongodb+srv://"))
            .ok_or_else(|| Expected("a URI starting with mongodb:// or mongodb+srv://".into()))?;
        let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
        let path = rest.split_once('/').map_or("", |(_, path)| path);
        if path.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(Expected(
                "a database name without / \\ . space \" or $ in the URI's path".into(),
            ));
        }
        let database = if path.is_empty() {
            DEFAULT_DATABASE
        } else {
            path
        };
        Ok(MongoUri {
            uri: uri.to_owned(),
            database: database.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [(&str, &str); 3] = [
        ("JWT_KEY", "asdf"),
        ("MONGO_URI", "mongodb://orders-mongo-srv:27017/orders"),
        ("NATS_URL", "http://nats-srv:4222"),
    ];

    #[test]
    fn reads_the_node_manifests_variables_with_their_defaults() {
        let config = Config::from_pairs(&BASE).unwrap();
        assert_eq!(config.mongo.database, "orders");
        assert_eq!(config.port, 3000);
        assert_eq!(config.expiration_window, Duration::from_secs(900));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.nats.url, "nats://nats-srv:4222");
        assert_eq!(config.nats.stream().name, "ticketing");
        assert_eq!(config.http.max_connections, 1024);
        assert_eq!(config.body_limit, 16 * 1024);
        let mut pairs = BASE.to_vec();
        pairs.extend([("PORT", "8080"), ("EXPIRATION_WINDOW_SECONDS", "60")]);
        let config = Config::from_pairs(&pairs).unwrap();
        assert_eq!(
            (config.port, config.expiration_window),
            (8080, Duration::from_secs(60))
        );
    }

    #[test]
    fn names_the_missing_or_invalid_variable_in_one_line() {
        for missing in ["JWT_KEY", "MONGO_URI", "NATS_URL"] {
            let pairs: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let error = Config::from_pairs(&pairs).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{missing} must be set")),
                "{error}"
            );
        }
        let mut pairs = BASE.to_vec();
        pairs.push(("EXPIRATION_WINDOW_SECONDS", "soon"));
        let error = Config::from_pairs(&pairs).unwrap_err().to_string();
        assert_eq!(
            error,
            "EXPIRATION_WINDOW_SECONDS=`soon` is invalid: expected a whole number of seconds, at least 1"
        );
        let mut pairs = BASE.to_vec();
        pairs[1] = ("MONGO_URI", "postgres://admin:hunter2@h/x");
        let error = Config::from_pairs(&pairs).unwrap_err().to_string();
        assert!(
            error.starts_with("MONGO_URI=`postgres://<redacted>@h/x` is invalid"),
            "{error}"
        );
    }

    #[test]
    fn takes_the_database_from_the_uri_path() {
        let database = |uri| MongoUri::parse(uri).map(|m| m.database);
        assert_eq!(database("mongodb://h:1/shop").unwrap(), "shop");
        assert_eq!(
            database("mongodb://u:p@h:1,h2:2/shop?replicaSet=rs").unwrap(),
            "shop"
        );
        assert_eq!(database("mongodb://h:1").unwrap(), "orders");
        assert_eq!(database("mongodb://h:1/?w=1").unwrap(), "orders");
        assert!(database("postgres://h/x").is_err());
        assert!(database("mongodb://h:1/a.b").is_err());
    }

    #[test]
    fn never_shows_secrets_in_debug_output() {
        let mut pairs = BASE.to_vec();
        pairs[0] = ("JWT_KEY", "super-secret-key");
        pairs[1] = ("MONGO_URI", "mongodb://admin:hunter2@h:1/orders");
        let shown = format!("{:?}", Config::from_pairs(&pairs).unwrap());
        assert!(!shown.contains("super-secret-key"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
