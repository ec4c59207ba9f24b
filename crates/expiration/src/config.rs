//! The worker's settings: each declared once below, with its environment variable, default and
//! help (`expiration --help`, `expiration --env-vars`); read and validated once at start.

use std::fmt;
use std::time::Duration;

use clap::{Args, Parser};
use common::bus::{Backoff, NatsConfig};
use common::config::{ConfigError, Expected, Settings, parse, redact_url};
use common::server::HttpArgs;
use common::telemetry::LogArgs;

use crate::queue::{QueueName, RedisTarget, WaitReplicas};
use crate::worker::{CLAIM_AHEAD, WorkerOptions};

/// The expiration worker: schedules a job for every `order:created` and publishes
/// `expiration:complete` when it is due.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "expiration",
    version,
    about,
    long_about = None,
    after_help = "Inspecting the queue: `expiration inspect --help`."
)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Port of /healthz, /readyz and /metrics (0: any free port)
    #[arg(long = "ops-port", env = "OPS_PORT", default_value = "8080", value_parser = parse::port)]
    pub ops_port: u16,
    #[command(flatten)]
    pub ops_http: HttpArgs<64>,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings for Config {
    fn check(self) -> Result<Self, ConfigError> {
        let worker = &self.worker;
        if worker.lease <= worker.publish_timeout * CLAIM_AHEAD as u32 {
            // A claimed job may wait one round of publishes for a slot, then publish: a shorter
            // lease would let another replica fire it again while this one still could.
            return Err(ConfigError::new(
                "EXPIRATION_LEASE_MS",
                format!(
                    "({} ms) must exceed twice EXPIRATION_PUBLISH_TIMEOUT_MS ({} ms)",
                    worker.lease.as_millis(),
                    worker.publish_timeout.as_millis()
                ),
            ));
        }
        Ok(self)
    }
}

/// Where the queue lives: all the `inspect` command needs. `Debug` hides any password.
#[derive(Clone, Args)]
pub struct RedisConfig {
    /// Redis URL (redis://); overrides REDIS_HOST and REDIS_PORT. A comma-separated list of a Redis Cluster's nodes selects the cluster client
    #[arg(id = "redis_url", value_name = "URL", long = "redis-url", env = "REDIS_URL", hide_env_values = true, value_parser = redis_url)]
    pub url: Option<String>,
    /// Talk to a Redis Cluster even through one URL (a cluster's configuration endpoint)
    #[arg(id = "redis_cluster", value_name = "BOOL", long = "redis-cluster", env = "REDIS_CLUSTER", default_value = "false", value_parser = parse::boolean, action = clap::ArgAction::Set)]
    pub cluster: bool,
    /// Replicas that must hold a schedule before its order:created is acked (Redis WAIT): auto is 1 if the queue's master has a replica at start, else 0
    #[arg(id = "redis_wait_replicas", value_name = "N", long = "redis-wait-replicas", env = "REDIS_WAIT_REPLICAS", default_value = "auto", value_parser = wait_replicas)]
    pub wait_replicas: WaitReplicas,
    /// Longest wait for those replicas per batch of schedules, in milliseconds; past it the events are retried
    #[arg(id = "redis_wait_timeout_ms", value_name = "MS", long = "redis-wait-timeout-ms", env = "REDIS_WAIT_TIMEOUT_MS", default_value = "1000", value_parser = parse::millis)]
    pub wait_timeout: Duration,
    /// Redis host, unless REDIS_URL is set
    #[arg(
        id = "redis_host",
        value_name = "HOST",
        long = "redis-host",
        env = "REDIS_HOST",
        required_unless_present = "redis_url"
    )]
    pub host: Option<String>,
    /// Redis port with REDIS_HOST
    #[arg(id = "redis_port", value_name = "PORT", long = "redis-port", env = "REDIS_PORT", default_value = "6379", value_parser = parse::port)]
    pub port: u16,
    /// First part of the queue's hash tag
    #[arg(id = "redis_key_prefix", value_name = "PREFIX", long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", default_value = "ticketing", value_parser = tag_part)]
    pub key_prefix: String,
    /// Queue name; its keys are {REDIS_KEY_PREFIX:EXPIRATION_QUEUE}:*
    #[arg(id = "expiration_queue", value_name = "NAME", long = "expiration-queue", env = "EXPIRATION_QUEUE", default_value = "expiration", value_parser = tag_part)]
    pub queue: String,
}

impl RedisConfig {
    /// The `redis://` URL to connect to: `REDIS_URL`, else `REDIS_HOST` and `REDIS_PORT`.
    pub fn url(&self) -> String {
        match (&self.url, &self.host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => format!("redis://{host}:{}", self.port),
            // clap requires one of the two.
            (None, None) => String::new(),
        }
    }

    /// Where Redis is, whether it is a cluster, and how schedules are replicated.
    pub fn target(&self) -> RedisTarget {
        let mut target = RedisTarget::parse(&self.url());
        target.cluster |= self.cluster;
        target.replicas = self.wait_replicas;
        target.wait_timeout = self.wait_timeout;
        target
    }

    /// The queue's key prefix and name.
    pub fn queue(&self) -> QueueName {
        QueueName::new(&self.key_prefix, &self.queue)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url()))
            .field("cluster", &self.cluster)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("queue", &self.queue())
            .finish()
    }
}

/// One `redis://` URL, or a comma-separated list of them (a cluster's nodes).
fn redis_url(value: &str) -> Result<String, Expected> {
    let urls: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() || urls.iter().any(|url| !url.starts_with("redis://")) {
        return Err(Expected(
            "redis:// URLs, one or a comma-separated list of a cluster's nodes".into(),
        ));
    }
    Ok(urls.join(","))
}

fn wait_replicas(value: &str) -> Result<WaitReplicas, Expected> {
    value.parse().map_err(Expected)
}

/// A part of the queue's hash tag: no braces, no spaces.
fn tag_part(value: &str) -> Result<String, Expected> {
    if value.is_empty() || value.contains(['{', '}']) || value.chars().any(char::is_whitespace) {
        Err(Expected("a non-empty name without braces or spaces".into()))
    } else {
        Ok(value.to_owned())
    }
}

/// How jobs are claimed, published and retried.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Publishes in flight per replica
    #[arg(long = "expiration-concurrency", env = "EXPIRATION_CONCURRENCY", default_value = "256", value_parser = parse::positive::<usize>)]
    pub concurrency: usize,
    /// Lease of a claimed job, in milliseconds; another replica fires it after this. Must exceed twice EXPIRATION_PUBLISH_TIMEOUT_MS
    #[arg(long = "expiration-lease-ms", env = "EXPIRATION_LEASE_MS", default_value = "30000", value_parser = parse::millis)]
    pub lease: Duration,
    /// Longest wait for one publish acknowledgement, in milliseconds
    #[arg(long = "expiration-publish-timeout-ms", env = "EXPIRATION_PUBLISH_TIMEOUT_MS", default_value = "5000", value_parser = parse::millis)]
    pub publish_timeout: Duration,
    /// Fires of one job before it is dead-lettered
    #[arg(long = "expiration-max-attempts", env = "EXPIRATION_MAX_ATTEMPTS", default_value = "10", value_parser = parse::positive::<u32>)]
    pub max_attempts: u32,
    /// First retry delay after a failed publish, in milliseconds; doubled per attempt
    #[arg(long = "expiration-retry-initial-ms", env = "EXPIRATION_RETRY_INITIAL_MS", default_value = "1000", value_parser = parse::millis)]
    pub retry_initial: Duration,
    /// Longest retry delay, in milliseconds
    #[arg(long = "expiration-retry-max-ms", env = "EXPIRATION_RETRY_MAX_MS", default_value = "60000", value_parser = parse::millis)]
    pub retry_max: Duration,
    /// Farthest an order:created's expiresAt may be ahead of now, in seconds; a later one is rejected (terminated and counted as outcome="reject"), never scheduled
    #[arg(long = "expiration-max-ahead-seconds", env = "EXPIRATION_MAX_AHEAD_SECONDS", default_value = "604800", value_parser = parse::seconds)]
    pub max_ahead: Duration,
    /// Tests only: claim jobs but never publish them, as a process stuck between the two would
    #[arg(long = "fault-hold-before-publish", env = "EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH", default_value = "false", value_parser = parse::boolean, hide = true)]
    pub hold_before_publish: bool,
}

impl WorkerArgs {
    /// The worker's options from these settings.
    pub fn options(&self) -> WorkerOptions {
        WorkerOptions {
            concurrency: self.concurrency,
            lease: self.lease,
            max_attempts: self.max_attempts,
            backoff: Backoff {
                initial: self.retry_initial,
                max: self.retry_max,
            },
            hold_before_fire: self.hold_before_publish,
            ..WorkerOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_pairs(pairs)
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
        assert_eq!(config.nats.client_name("expiration"), "expiration-depl-abc");
        assert_eq!(config.redis.url(), "redis://expiration-redis-srv:6379");
        assert_eq!(config.redis.queue().tag(), "{ticketing:expiration}");
        assert_eq!(config.ops_port, 8080);
        assert_eq!(config.ops_http.max_connections, 64);
        assert_eq!(config.worker.lease, Duration::from_secs(30));
        assert_eq!(config.worker.publish_timeout, Duration::from_secs(5));
        assert_eq!(config.worker.max_ahead, Duration::from_secs(7 * 24 * 3600));
        assert!(!config.worker.options().hold_before_fire);
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
        assert_eq!(config.redis.url(), "redis://user:s3cret@r:6380/2");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redis://<redacted>@r:6380/2"), "{debug}");
    }

    #[test]
    fn a_list_of_nodes_or_redis_cluster_selects_the_cluster_client() {
        let base = [("NATS_URL", "nats://n:4222")];
        let target = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            config(&pairs).unwrap().redis.target()
        };
        let one = target(&[("REDIS_HOST", "r")]);
        assert!(!one.cluster);
        assert_eq!(one.replicas, WaitReplicas::Auto);
        assert_eq!(one.wait_timeout, Duration::from_secs(1));
        let nodes = target(&[("REDIS_URL", "redis://a:7000,redis://b:7001, redis://c:7002")]);
        assert!(nodes.cluster);
        assert_eq!(nodes.nodes.len(), 3);
        let endpoint = target(&[
            ("REDIS_URL", "redis://config.example:6379"),
            ("REDIS_CLUSTER", "true"),
            ("REDIS_WAIT_REPLICAS", "2"),
            ("REDIS_WAIT_TIMEOUT_MS", "250"),
        ]);
        assert!(endpoint.cluster);
        assert_eq!(endpoint.replicas, WaitReplicas::Count(2));
        assert_eq!(endpoint.wait_timeout, Duration::from_millis(250));
    }

    #[test]
    fn each_bad_variable_is_named_in_the_message() {
        let base = [("NATS_URL", "nats://n:4222"), ("REDIS_HOST", "r")];
        let error = |extra: (&str, &str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            config(&pairs).unwrap_err().to_string()
        };
        assert_eq!(
            error(("REDIS_PORT", "x")),
            "REDIS_PORT=`x` is invalid: expected a port number from 0 to 65535"
        );
        assert!(error(("OPS_PORT", "70000")).starts_with("OPS_PORT"));
        assert!(error(("EXPIRATION_LEASE_MS", "2000")).contains("must exceed"));
        assert!(error(("EXPIRATION_CONCURRENCY", "0")).starts_with("EXPIRATION_CONCURRENCY"));
        assert_eq!(
            error(("EXPIRATION_MAX_AHEAD_SECONDS", "a week")),
            "EXPIRATION_MAX_AHEAD_SECONDS=`a week` is invalid: expected a whole number of seconds, at least 1"
        );
        assert!(error(("EXPIRATION_QUEUE", "a}b")).starts_with("EXPIRATION_QUEUE"));
        assert!(error(("REDIS_URL", "http://r")).starts_with("REDIS_URL"));
        assert!(error(("REDIS_URL", "redis://a,http://b")).starts_with("REDIS_URL"));
        assert_eq!(
            error(("REDIS_WAIT_REPLICAS", "one")),
            "REDIS_WAIT_REPLICAS=`one` is invalid: expected `auto` or a whole number of replicas"
        );
        let missing = config(&[("NATS_URL", "nats://n:4222")])
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("REDIS_HOST must be set"), "{missing}");
        let missing = config(&[("REDIS_HOST", "r")]).unwrap_err().to_string();
        assert!(missing.starts_with("NATS_URL must be set"), "{missing}");
    }
}
