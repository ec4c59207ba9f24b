//! The worker's configuration, read once from the environment and validated at start.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `NATS_URL` | required | NATS server(s); `http://` is accepted as `nats://` |
//! | `NATS_CLUSTER_ID` | `ticketing` | JetStream stream name |
//! | `NATS_CLIENT_ID` | `expiration` | connection name (the pod name in Kubernetes) |
//! | `NATS_SUBJECT_PREFIX` | empty | put before every subject (tests isolate themselves with it) |
//! | `REDIS_URL` | – | `redis://[user:password@]host:port[/db]`; overrides the two below |
//! | `REDIS_HOST` | required unless `REDIS_URL` | Redis host (`expiration-redis-srv`) |
//! | `REDIS_PORT` | `6379` | Redis port |
//! | `REDIS_KEY_PREFIX` | `ticketing` | first part of the queue's hash tag |
//! | `EXPIRATION_QUEUE` | `expiration` | queue name: keys are `{<prefix>:<queue>}:*` |
//! | `OPS_PORT` | `8080` | port of `/healthz`, `/readyz`, `/metrics` (0: any free port) |
//! | `EXPIRATION_CONCURRENCY` | `64` | most publishes in flight per replica |
//! | `EXPIRATION_LEASE_MS` | `30000` | lease of a claimed job; must exceed twice the publish timeout |
//! | `EXPIRATION_PUBLISH_TIMEOUT_MS` | `5000` | longest wait for one publish acknowledgement |
//! | `EXPIRATION_MAX_ATTEMPTS` | `10` | fires of one job before it is dead-lettered |
//! | `EXPIRATION_RETRY_INITIAL_MS` | `1000` | first retry delay, doubled per attempt |
//! | `EXPIRATION_RETRY_MAX_MS` | `60000` | longest retry delay |
//! | `EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH` | `false` | tests only: claim jobs but never publish |
//! | `LISTENER_MAX_DELIVERIES` | `20` | deliveries after which an event still not applicable is given up |
//! | `HTTP_HEADER_TIMEOUT_SECONDS` | `10` | ops port: longest wait for a request head (also idle keep-alive) |
//! | `HTTP_BODY_TIMEOUT_SECONDS` | `10` | longest a request body may take (the ops port reads none) |
//! | `HTTP_MAX_CONNECTIONS` | `64` | ops port: most open connections |

use std::fmt;
use std::time::Duration;

use common::bus::{Backoff, BusError, NatsConfig};
use common::env::{EnvVar, NATS, TELEMETRY};
use common::server::{HTTP_OPS, ServerLimits};

use crate::queue::QueueName;
use crate::worker::{CLAIM_AHEAD, WorkerOptions};

/// Everything the worker reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection and stream.
    pub nats: NatsConfig,
    /// Redis and the queue in it.
    pub redis: RedisConfig,
    /// Port of the ops endpoints.
    pub ops_port: u16,
    /// Timeouts and connection cap of the ops port.
    pub ops_limits: ServerLimits,
    /// How jobs are claimed, published and retried.
    pub worker: WorkerOptions,
    /// Longest wait for a JetStream publish acknowledgement.
    pub publish_timeout: Duration,
}

/// Where the queue lives. `Debug` hides any password in the URL.
#[derive(Clone)]
pub struct RedisConfig {
    /// A `redis://` URL.
    pub url: String,
    /// The queue's key prefix and name.
    pub queue: QueueName,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("queue", &self.queue)
            .finish()
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// A variable that is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} {problem}")]
    Invalid { name: &'static str, problem: String },
    #[error(transparent)]
    Nats(#[from] BusError),
    #[error("{0}")]
    Http(String),
}

/// The variables the worker reads itself (NATS and logging ones come from `common`).
pub const EXPIRATION_VARS: [EnvVar; 13] = [
    EnvVar {
        name: "REDIS_URL",
        required: false,
        default: None,
        about: "Redis URL (redis:// or rediss://); overrides REDIS_HOST and REDIS_PORT",
    },
    EnvVar {
        name: "REDIS_HOST",
        required: true,
        default: None,
        about: "Redis host, unless REDIS_URL is set",
    },
    EnvVar {
        name: "REDIS_PORT",
        required: false,
        default: Some("6379"),
        about: "Redis port with REDIS_HOST",
    },
    EnvVar {
        name: "REDIS_KEY_PREFIX",
        required: false,
        default: Some("ticketing"),
        about: "first part of the queue's hash tag",
    },
    EnvVar {
        name: "EXPIRATION_QUEUE",
        required: false,
        default: Some("expiration"),
        about: "queue name; keys are {prefix:queue}:*",
    },
    EnvVar {
        name: "OPS_PORT",
        required: false,
        default: Some("8080"),
        about: "port of /healthz, /readyz and /metrics",
    },
    EnvVar {
        name: "EXPIRATION_CONCURRENCY",
        required: false,
        default: Some("64"),
        about: "publishes in flight per replica",
    },
    EnvVar {
        name: "EXPIRATION_LEASE_MS",
        required: false,
        default: Some("30000"),
        about: "lease of a claimed job; another replica fires it after this",
    },
    EnvVar {
        name: "EXPIRATION_PUBLISH_TIMEOUT_MS",
        required: false,
        default: Some("5000"),
        about: "longest wait for one publish acknowledgement",
    },
    EnvVar {
        name: "EXPIRATION_MAX_ATTEMPTS",
        required: false,
        default: Some("10"),
        about: "fires before a job is dead-lettered",
    },
    EnvVar {
        name: "EXPIRATION_RETRY_INITIAL_MS",
        required: false,
        default: Some("1000"),
        about: "first retry delay after a failed publish",
    },
    EnvVar {
        name: "EXPIRATION_RETRY_MAX_MS",
        required: false,
        default: Some("60000"),
        about: "longest retry delay",
    },
    EnvVar {
        name: "EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH",
        required: false,
        default: Some("false"),
        about: "test only: claim jobs but never publish them",
    },
];

/// Every variable the `expiration` binary reads, as `expiration --env-vars` prints them.
pub fn env_vars() -> Vec<EnvVar> {
    EXPIRATION_VARS
        .iter()
        .chain(NATS.iter())
        .chain(HTTP_OPS.iter())
        .chain(TELEMETRY.iter())
        .copied()
        .collect()
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let nats = NatsConfig::from_lookup(&lookup, "expiration")?;
        let redis = RedisConfig::from_lookup(&lookup)?;
        let ops_port = env.parse("OPS_PORT", 8080u16, "a port number (0-65535)")?;
        let ops_limits =
            ServerLimits::from_lookup(&lookup, ServerLimits::OPS).map_err(ConfigError::Http)?;
        let millis = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            let ms = env.parse(name, default, "a whole number of milliseconds")?;
            if ms == 0 {
                return Err(invalid(name, "must be more than 0".into()));
            }
            Ok(Duration::from_millis(ms))
        };
        let concurrency = env.parse("EXPIRATION_CONCURRENCY", 64usize, "a positive integer")?;
        if concurrency == 0 {
            return Err(invalid(
                "EXPIRATION_CONCURRENCY",
                "must be at least 1".into(),
            ));
        }
        let max_attempts = env.parse("EXPIRATION_MAX_ATTEMPTS", 10u32, "a positive integer")?;
        if max_attempts == 0 {
            return Err(invalid(
                "EXPIRATION_MAX_ATTEMPTS",
                "must be at least 1".into(),
            ));
        }
        let lease = millis("EXPIRATION_LEASE_MS", 30_000)?;
        let publish_timeout = millis("EXPIRATION_PUBLISH_TIMEOUT_MS", 5_000)?;
        if lease <= publish_timeout * CLAIM_AHEAD as u32 {
            // A claimed job may wait one round of publishes for a slot, then publish: a shorter
            // lease would let another replica fire it again while this one still could.
            return Err(invalid(
                "EXPIRATION_LEASE_MS",
                format!(
                    "({} ms) must exceed twice EXPIRATION_PUBLISH_TIMEOUT_MS ({} ms)",
                    lease.as_millis(),
                    publish_timeout.as_millis()
                ),
            ));
        }
        let backoff = Backoff {
            initial: millis("EXPIRATION_RETRY_INITIAL_MS", 1_000)?,
            max: millis("EXPIRATION_RETRY_MAX_MS", 60_000)?,
        };
        let hold_before_fire = env.parse(
            "EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH",
            false,
            "`true` or `false`",
        )?;
        Ok(Config {
            nats,
            redis,
            ops_port,
            ops_limits,
            worker: WorkerOptions {
                concurrency,
                lease,
                max_attempts,
                backoff,
                hold_before_fire,
                ..WorkerOptions::default()
            },
            publish_timeout,
        })
    }
}

impl RedisConfig {
    /// Reads `REDIS_URL` or `REDIS_HOST`/`REDIS_PORT`, `REDIS_KEY_PREFIX` and `EXPIRATION_QUEUE`
    /// (all the inspection command needs).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let url = match (env.get("REDIS_URL"), env.get("REDIS_HOST")) {
            (Some(url), _) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(invalid(
                        "REDIS_URL",
                        format!("must start with redis:// (got `{}`)", redact(&url)),
                    ));
                }
                url
            }
            (None, Some(host)) => {
                let port = env.parse("REDIS_PORT", 6379u16, "a port number (1-65535)")?;
                format!("redis://{host}:{port}")
            }
            (None, None) => {
                return Err(invalid(
                    "REDIS_HOST",
                    "is not set, nor REDIS_URL (for example REDIS_HOST=expiration-redis-srv)"
                        .into(),
                ));
            }
        };
        let name = |var: &'static str, default: &str| -> Result<String, ConfigError> {
            let value = env.get(var).unwrap_or_else(|| default.to_owned());
            if value.contains(['{', '}']) || value.chars().any(char::is_whitespace) {
                return Err(invalid(
                    var,
                    format!("must not contain braces or spaces (got `{value}`)"),
                ));
            }
            Ok(value)
        };
        Ok(RedisConfig {
            url,
            queue: QueueName::new(
                name("REDIS_KEY_PREFIX", "ticketing")?,
                name("EXPIRATION_QUEUE", "expiration")?,
            ),
        })
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

fn invalid(name: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { name, problem }
}

struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| invalid(name, format!("must be {expected} (got `{value}`)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn env_vars_lists_exactly_the_variables_the_config_reads() {
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        // With REDIS_URL, then without it (REDIS_PORT is only read with REDIS_HOST).
        for url in [Some("redis://r:1"), None] {
            let _ = Config::from_lookup(|name| {
                read.borrow_mut().insert(name.to_owned());
                match name {
                    "REDIS_URL" => url.map(str::to_owned),
                    "NATS_URL" => Some("nats://n:1".into()),
                    "REDIS_HOST" => Some("r".into()),
                    _ => None,
                }
            });
        }
        let listed: std::collections::BTreeSet<String> = EXPIRATION_VARS
            .iter()
            .chain(NATS.iter())
            .chain(HTTP_OPS.iter())
            .map(|var| var.name.to_owned())
            .collect();
        assert_eq!(read.into_inner(), listed);
        assert_eq!(
            env_vars().len(),
            EXPIRATION_VARS.len() + NATS.len() + HTTP_OPS.len() + TELEMETRY.len()
        );
    }

    #[test]
    fn the_original_manifests_variables_are_enough() {
        let config = config(&[
            ("NATS_URL", "http://nats-srv:4222"),
            ("NATS_CLUSTER_ID", "ticketing"),
            ("NATS_CLIENT_ID", "expiration-depl-abc"),
            ("REDIS_HOST", "expiration-redis-srv"),
        ])
        .unwrap();
        assert_eq!(config.nats.url, "nats://nats-srv:4222");
        assert_eq!(config.nats.client_id, "expiration-depl-abc");
        assert_eq!(config.redis.url, "redis://expiration-redis-srv:6379");
        assert_eq!(config.redis.queue.tag(), "{ticketing:expiration}");
        assert_eq!(config.ops_port, 8080);
        assert_eq!(config.worker.lease, Duration::from_secs(30));
        assert_eq!(config.publish_timeout, Duration::from_secs(5));
        assert!(!config.worker.hold_before_fire);
    }

    #[test]
    fn redis_url_overrides_host_and_port_and_its_password_stays_out_of_debug() {
        let config = config(&[
            ("NATS_URL", "nats://n:4222"),
            ("REDIS_HOST", "ignored"),
            ("REDIS_PORT", "1234"),
            ("REDIS_URL", "redis://user:s3cret@r:6380/2"),
        ])
        .unwrap();
        assert_eq!(config.redis.url, "redis://user:s3cret@r:6380/2");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redis://***@r:6380/2"), "{debug}");
    }

    #[test]
    fn each_bad_variable_is_named_in_the_message() {
        let base = [("NATS_URL", "nats://n:4222"), ("REDIS_HOST", "r")];
        let error = |extra: (&str, &str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            config(&pairs).unwrap_err().to_string()
        };
        assert!(error(("REDIS_PORT", "x")).starts_with("REDIS_PORT must be a port number"));
        assert!(error(("OPS_PORT", "70000")).starts_with("OPS_PORT"));
        assert!(error(("EXPIRATION_LEASE_MS", "2000")).contains("must exceed"));
        assert!(error(("EXPIRATION_CONCURRENCY", "0")).starts_with("EXPIRATION_CONCURRENCY"));
        assert!(error(("EXPIRATION_QUEUE", "a}b")).starts_with("EXPIRATION_QUEUE"));
        assert!(error(("REDIS_URL", "http://r")).starts_with("REDIS_URL"));
        let missing = config(&[("NATS_URL", "nats://n:4222")])
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("REDIS_HOST is not set"), "{missing}");
        let missing = config(&[("REDIS_HOST", "r")]).unwrap_err().to_string();
        assert!(missing.contains("NATS_URL"), "{missing}");
    }
}
