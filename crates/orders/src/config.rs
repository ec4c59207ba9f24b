//! The service's settings, read from the environment once at start and validated there.

use std::fmt;
use std::time::Duration;

use common::bus::{BusError, NatsConfig};
use common::env::{EnvVar, NATS, TELEMETRY};
use common::http::JwtKey;
use common::server::{HTTP_API, ServerLimits};

/// Database used when `MONGO_URI` names none (`mongodb://host:27017`).
pub const DEFAULT_DATABASE: &str = "orders";

/// The variables [`Config::from_env`] reads itself (NATS and logging ones come from `common`).
pub const ORDERS_VARS: [EnvVar; 5] = [
    EnvVar {
        name: "MONGO_URI",
        required: true,
        default: None,
        about: "MongoDB URI; its path names the database (`orders` when absent)",
    },
    EnvVar {
        name: "JWT_KEY",
        required: true,
        default: None,
        about: "HS256 secret shared with the auth service; never logged",
    },
    EnvVar {
        name: "EXPIRATION_WINDOW_SECONDS",
        required: false,
        default: Some("900"),
        about: "how long a new order holds its ticket",
    },
    EnvVar {
        name: "PORT",
        required: false,
        default: Some("3000"),
        about: "HTTP port of the API and of /healthz, /readyz, /metrics",
    },
    EnvVar {
        name: "ORDERS_FAULT_HOLD_AFTER_CLAIM",
        required: false,
        default: Some("false"),
        about: "tests only: claim order changes but never apply them, as a crash would leave them",
    },
];

/// Every variable the `orders` binary reads, as `orders --env-vars` prints them.
pub fn env_vars() -> Vec<EnvVar> {
    ORDERS_VARS
        .iter()
        .chain(NATS.iter())
        .chain(HTTP_API.iter())
        .chain(TELEMETRY.iter())
        .copied()
        .collect()
}

/// Everything the service needs to start.
#[derive(Clone)]
pub struct Config {
    /// `MONGO_URI`, the database name taken from its path.
    pub mongo_uri: String,
    /// The database holding `orders` and `tickets`.
    pub database: String,
    /// `JWT_KEY`, shared with the auth service.
    pub jwt_key: JwtKey,
    /// `NATS_URL`, `NATS_CLIENT_ID`, `NATS_CLUSTER_ID`, `NATS_SUBJECT_PREFIX`.
    pub nats: NatsConfig,
    /// `EXPIRATION_WINDOW_SECONDS`: how long a new order holds its ticket.
    pub expiration_window: Duration,
    /// `PORT`; 0 picks a free port (tests).
    pub port: u16,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// The API server's header and body timeouts and connection cap.
    pub http: ServerLimits,
    /// How soon the outbox relay retries events a request could not publish.
    pub relay_retry: Duration,
    /// How often the relay looks for stray events while none are known (a safety net).
    pub relay_sweep: Duration,
    /// Longest a request waits for JetStream before leaving its events to the relay.
    pub publish_timeout: Duration,
    /// `ORDERS_FAULT_HOLD_AFTER_CLAIM`, for crash tests: claimed changes are never applied by
    /// their claimer.
    pub fault_hold_after_claim: bool,
}

/// A setting that is missing or invalid; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(transparent)]
    Nats(#[from] BusError),
    #[error("{0}")]
    Http(String),
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mongo_uri", &redact_credentials(&self.mongo_uri))
            .field("database", &self.database)
            .field("jwt_key", &self.jwt_key)
            .field("nats", &self.nats)
            .field("expiration_window", &self.expiration_window)
            .field("port", &self.port)
            .field("body_limit", &self.body_limit)
            .field("http", &self.http)
            .field("relay_retry", &self.relay_retry)
            .field("relay_sweep", &self.relay_sweep)
            .field("publish_timeout", &self.publish_timeout)
            .field("fault_hold_after_claim", &self.fault_hold_after_claim)
            .finish()
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let jwt_key = non_empty("JWT_KEY").ok_or(ConfigError::Missing("JWT_KEY"))?;
        let mongo_uri = non_empty("MONGO_URI").ok_or(ConfigError::Missing("MONGO_URI"))?;
        let database = database_from_uri(&mongo_uri)?;
        let nats = NatsConfig::from_lookup(&lookup, "orders")?;
        let expiration_seconds: u64 = parse_or(
            non_empty("EXPIRATION_WINDOW_SECONDS"),
            "EXPIRATION_WINDOW_SECONDS",
            900,
        )?;
        let port: u16 = parse_or(non_empty("PORT"), "PORT", 3000)?;
        let http =
            ServerLimits::from_lookup(&lookup, ServerLimits::API).map_err(ConfigError::Http)?;
        let fault_hold_after_claim: bool = parse_or(
            non_empty("ORDERS_FAULT_HOLD_AFTER_CLAIM"),
            "ORDERS_FAULT_HOLD_AFTER_CLAIM",
            false,
        )?;
        Ok(Config {
            mongo_uri,
            database,
            jwt_key: JwtKey::new(jwt_key.as_bytes()),
            nats,
            expiration_window: Duration::from_secs(expiration_seconds),
            port,
            body_limit: 16 * 1024,
            http,
            relay_retry: Duration::from_secs(1),
            relay_sweep: Duration::from_secs(60),
            publish_timeout: Duration::from_secs(2),
            fault_hold_after_claim,
        })
    }
}

fn parse_or<T: std::str::FromStr>(
    value: Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match value {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: format!("`{value}`: {e}"),
            }),
    }
}

/// The database named by the URI's path (`mongodb://host:27017/orders?opts` → `orders`).
pub fn database_from_uri(uri: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "MONGO_URI",
        reason: reason.to_owned(),
    };
    let rest = uri
        .strip_prefix("mongodb://")
        .or_else(|| uri.strip_prefix("mongodb+srv://"))
        .ok_or_else(|| invalid("must start with mongodb:// or mongodb+srv://"))?;
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    if path.is_empty() {
        return Ok(DEFAULT_DATABASE.to_owned());
    }
    if path.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err(invalid("the database name in its path is not valid"));
    }
    Ok(path.to_owned())
}

/// The URI with any `user:password@` replaced, for logs.
pub fn redact_credentials(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}<redacted>{}", &uri[..scheme_end + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs = pairs.to_vec();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const BASE: [(&str, &str); 3] = [
        ("JWT_KEY", "asdf"),
        ("MONGO_URI", "mongodb://orders-mongo-srv:27017/orders"),
        ("NATS_URL", "http://nats-srv:4222"),
    ];

    #[test]
    fn reads_the_node_manifests_variables_with_their_defaults() {
        let config = Config::from_lookup(lookup(&BASE)).unwrap();
        assert_eq!(config.database, "orders");
        assert_eq!(config.port, 3000);
        assert_eq!(config.expiration_window, Duration::from_secs(900));
        assert_eq!(config.nats.url, "nats://nats-srv:4222");
        assert_eq!(config.nats.stream.name, "ticketing");
        let mut pairs = BASE.to_vec();
        pairs.extend([("PORT", "8080"), ("EXPIRATION_WINDOW_SECONDS", "60")]);
        let config = Config::from_lookup(lookup(&pairs)).unwrap();
        assert_eq!(
            (config.port, config.expiration_window),
            (8080, Duration::from_secs(60))
        );
    }

    #[test]
    fn names_the_missing_or_invalid_variable() {
        for missing in ["JWT_KEY", "MONGO_URI", "NATS_URL"] {
            let pairs: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let error = Config::from_lookup(lookup(&pairs)).unwrap_err().to_string();
            assert!(error.contains(missing), "{error}");
        }
        let mut pairs = BASE.to_vec();
        pairs.push(("EXPIRATION_WINDOW_SECONDS", "soon"));
        let error = Config::from_lookup(lookup(&pairs)).unwrap_err().to_string();
        assert!(error.contains("EXPIRATION_WINDOW_SECONDS"), "{error}");
    }

    #[test]
    fn takes_the_database_from_the_uri_path() {
        assert_eq!(database_from_uri("mongodb://h:1/shop").unwrap(), "shop");
        assert_eq!(
            database_from_uri("mongodb://u:p@h:1,h2:2/shop?replicaSet=rs").unwrap(),
            "shop"
        );
        assert_eq!(database_from_uri("mongodb://h:1").unwrap(), "orders");
        assert_eq!(database_from_uri("mongodb://h:1/?w=1").unwrap(), "orders");
        assert!(database_from_uri("postgres://h/x").is_err());
        assert!(database_from_uri("mongodb://h:1/a.b").is_err());
    }

    #[test]
    fn env_vars_lists_exactly_the_variables_the_config_reads() {
        let read = std::sync::Mutex::new(Vec::new());
        let _ = Config::from_lookup(|name| {
            read.lock().unwrap().push(name.to_owned());
            lookup(&BASE)(name)
        });
        let mut read = read.into_inner().unwrap();
        read.extend(TELEMETRY.iter().map(|var| var.name.to_owned()));
        read.sort();
        read.dedup();
        let mut listed: Vec<_> = env_vars().iter().map(|var| var.name.to_owned()).collect();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn never_shows_secrets_in_debug_output() {
        let mut pairs = BASE.to_vec();
        pairs[0] = ("JWT_KEY", "super-secret-key");
        pairs[1] = ("MONGO_URI", "mongodb://admin:hunter2@h:1/orders");
        let shown = format!("{:?}", Config::from_lookup(lookup(&pairs)).unwrap());
        assert!(!shown.contains("super-secret-key"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
