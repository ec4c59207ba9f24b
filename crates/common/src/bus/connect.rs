use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};

use crate::Subject;

/// How a service reaches NATS and consumes from it, read from `NATS_URL`, `NATS_CLIENT_ID`,
/// `NATS_CLUSTER_ID`, `NATS_SUBJECT_PREFIX` and `LISTENER_MAX_DELIVERIES`.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs, already normalised to `nats://` (see [`normalize_url`]).
    pub url: String,
    /// Connection name (the pod name in Kubernetes).
    pub client_id: String,
    /// The stream and the subjects on it.
    pub stream: StreamSpec,
    /// `LISTENER_MAX_DELIVERIES`: see [`super::ListenerOptions::max_deliveries`].
    pub max_deliveries: u64,
}

/// The JetStream stream holding the six subjects, and a prefix put before each subject.
///
/// The prefix is empty in production (the subjects are the Node stack's). JetStream forbids two
/// streams with overlapping subjects on one server, so tests give each test its own stream name
/// and prefix (`NATS_SUBJECT_PREFIX`) to share one server without seeing each other's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name (`NATS_CLUSTER_ID`, default `ticketing`).
    pub name: String,
    /// Put before every subject (`NATS_SUBJECT_PREFIX`, default empty).
    pub subject_prefix: String,
}

impl StreamSpec {
    /// The stream `name` with the Node stack's subjects.
    pub fn new(name: impl Into<String>) -> Self {
        StreamSpec {
            name: name.into(),
            subject_prefix: String::new(),
        }
    }

    /// The NATS subject `subject` travels on in this stream.
    pub fn subject(&self, subject: Subject) -> String {
        format!("{}{}", self.subject_prefix, subject.as_str())
    }
}

impl NatsConfig {
    /// The options of every listener of a service on this configuration.
    pub fn listener_options(&self) -> super::ListenerOptions {
        let mut options = super::ListenerOptions::new(self.stream.clone());
        options.max_deliveries = self.max_deliveries;
        options
    }

    /// Reads the NATS settings; `default_client_id` is used when `NATS_CLIENT_ID` is unset.
    pub fn from_env(default_client_id: &str) -> Result<Self, BusError> {
        Self::from_lookup(|name| std::env::var(name).ok(), default_client_id)
    }

    /// As [`NatsConfig::from_env`], reading variables through `lookup` (for tests and config
    /// structs that read the environment once).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        default_client_id: &str,
    ) -> Result<Self, BusError> {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let url = non_empty("NATS_URL").ok_or(BusError::Config(
            "NATS_URL is not set (for example nats://nats-srv:4222)".into(),
        ))?;
        let url = normalize_url(&url)?;
        let client_id = non_empty("NATS_CLIENT_ID").unwrap_or_else(|| default_client_id.to_owned());
        let stream = StreamSpec {
            name: non_empty("NATS_CLUSTER_ID").unwrap_or_else(|| "ticketing".to_owned()),
            subject_prefix: lookup("NATS_SUBJECT_PREFIX").unwrap_or_default(),
        };
        let max_deliveries = match non_empty("LISTENER_MAX_DELIVERIES") {
            None => super::listener::DEFAULT_MAX_DELIVERIES,
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    BusError::Config(format!(
                        "LISTENER_MAX_DELIVERIES `{value}` is not a whole number of at least 1"
                    ))
                })?,
        };
        Ok(NatsConfig {
            url,
            client_id,
            stream,
            max_deliveries,
        })
    }
}

/// Errors of connecting to NATS and setting up the stream and consumers.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream stream `{stream}`: {message}")]
    Stream { stream: String, message: String },
    #[error("cannot set up JetStream consumer `{consumer}`: {message}")]
    Consumer { consumer: String, message: String },
}

/// Accepts the Node stack's `http://nats-srv:4222` (and a comma-separated list of servers):
/// `http` becomes `nats`, `https` becomes `tls`, a missing scheme means `nats`.
pub fn normalize_url(url: &str) -> Result<String, BusError> {
    let servers: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| match server.split_once("://") {
            Some(("http", rest)) | Some(("nats", rest)) => Ok(format!("nats://{rest}")),
            Some(("https", rest)) | Some(("tls", rest)) => Ok(format!("tls://{rest}")),
            Some((scheme, _)) => Err(BusError::Config(format!(
                "NATS_URL has unsupported scheme `{scheme}` (use nats://, tls:// or http://)"
            ))),
            None => Ok(format!("nats://{server}")),
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(BusError::Config("NATS_URL is empty".into()));
    }
    Ok(servers.join(","))
}

/// Connects with the configured connection name. After the first connection the client
/// reconnects by itself for as long as the process lives.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name(&config.client_id)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .map_err(|source| BusError::Connect {
            url: config.url.clone(),
            source,
        })
}

/// How long JetStream remembers message ids to drop duplicates, for streams we create.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Makes sure the stream exists and holds all six subjects. Another service may have created it
/// first, with only its own subjects: the missing ones are added, nothing is removed.
pub async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<(), BusError> {
    let name = spec.name.as_str();
    let subjects: Vec<String> = Subject::ALL
        .iter()
        .map(|subject| spec.subject(*subject))
        .collect();
    let fail = |message: String| BusError::Stream {
        stream: name.to_owned(),
        message,
    };
    // Two services starting together may race to create it: the loser finds it on the next turn.
    for _ in 0..5 {
        match js.get_stream(name).await {
            Ok(existing) => {
                let mut config = existing.cached_info().config.clone();
                let missing: Vec<String> = subjects
                    .iter()
                    .filter(|subject| !covers(&config.subjects, subject))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                tracing::info!(
                    stream = name,
                    ?missing,
                    "adding our subjects to the existing stream"
                );
                config.subjects.extend(missing);
                js.update_stream(config)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                return Ok(());
            }
            Err(e) if is_stream_not_found(&e) => {
                let config = stream::Config {
                    name: name.to_owned(),
                    subjects: subjects.clone(),
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => {
                        tracing::info!(stream = name, "created the JetStream stream");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::debug!(stream = name, error = %e, "stream creation lost a race; looking again")
                    }
                }
            }
            Err(e) => return Err(fail(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(fail("it kept changing while we set it up".into()))
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Whether a stream's subject list already captures `subject`. Our subjects have no `.`, so only
/// an equal subject or a whole-subject wildcard (`*`, `>`) matches.
fn covers(subjects: &[String], subject: &str) -> bool {
    subjects
        .iter()
        .any(|s| s == subject || s == "*" || s == ">")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_node_stacks_http_scheme() {
        assert_eq!(
            normalize_url("http://nats-srv:4222").unwrap(),
            "nats://nats-srv:4222"
        );
        assert_eq!(
            normalize_url("nats://a:4222, http://b:4222").unwrap(),
            "nats://a:4222,nats://b:4222"
        );
        assert_eq!(
            normalize_url("https://secure:4222").unwrap(),
            "tls://secure:4222"
        );
        assert_eq!(
            normalize_url("localhost:4222").unwrap(),
            "nats://localhost:4222"
        );
        assert!(normalize_url("ftp://x:1").is_err());
        assert!(normalize_url(" , ").is_err());
    }

    #[test]
    fn reads_the_node_stacks_variables_with_defaults() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config =
            NatsConfig::from_lookup(env(&[("NATS_URL", "http://nats-srv:4222")]), "orders")
                .unwrap();
        assert_eq!(config.url, "nats://nats-srv:4222");
        assert_eq!(config.client_id, "orders");
        assert_eq!(config.stream, StreamSpec::new("ticketing"));
        assert_eq!(
            config.stream.subject(Subject::OrderCreated),
            "order:created"
        );
        let config = NatsConfig::from_lookup(
            env(&[
                ("NATS_URL", "nats://x:1"),
                ("NATS_CLIENT_ID", "orders-depl-abc"),
                ("NATS_CLUSTER_ID", "t2"),
                ("NATS_SUBJECT_PREFIX", "t2."),
            ]),
            "orders",
        )
        .unwrap();
        assert_eq!(
            (config.client_id.as_str(), config.stream.name.as_str()),
            ("orders-depl-abc", "t2")
        );
        assert_eq!(
            config.stream.subject(Subject::PaymentCreated),
            "t2.payment:created"
        );
        let missing = NatsConfig::from_lookup(env(&[]), "orders")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("NATS_URL"), "{missing}");
    }

    #[test]
    fn only_whole_subject_wildcards_cover_our_subjects() {
        let subjects = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&subjects(&["ticket:created"]), "ticket:created"));
        assert!(covers(&subjects(&[">"]), "order:created"));
        assert!(!covers(&subjects(&["ticket:*"]), "ticket:created"));
    }
}
