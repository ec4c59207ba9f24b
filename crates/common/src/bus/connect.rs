use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};

use crate::Subject;
use crate::config::{Expected, redact_url};

/// How a service reaches NATS and consumes from it: the settings both services share.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server(s), comma-separated; http:// is accepted and treated as nats://
    #[arg(id = "nats_url", value_name = "URL", long = "nats-url", env = "NATS_URL", hide_env_values = true, value_parser = normalize_url)]
    pub url: String,
    /// Client id on NATS Streaming (letters, digits, - and _; the service's name and a random suffix when unset) and connection name (the pod name)
    #[arg(
        id = "nats_client_id",
        value_name = "NAME",
        long = "nats-client-id",
        env = "NATS_CLIENT_ID"
    )]
    pub client_id: Option<String>,
    /// Which bus: auto (NATS Streaming if a server answers for NATS_CLUSTER_ID, else JetStream), streaming or jetstream
    #[arg(
        id = "nats_transport",
        value_name = "TRANSPORT",
        long = "nats-transport",
        env = "NATS_TRANSPORT",
        default_value = "auto",
        value_enum
    )]
    pub transport: super::TransportChoice,
    /// NATS Streaming: the cluster id; JetStream: the stream holding the six subjects
    #[arg(id = "nats_cluster_id", value_name = "ID", long = "nats-cluster-id", env = "NATS_CLUSTER_ID", default_value = "ticketing", value_parser = crate::config::parse::non_empty)]
    pub cluster_id: String,
    /// Put before every subject; for tests sharing one server
    #[arg(
        id = "nats_subject_prefix",
        value_name = "PREFIX",
        long = "nats-subject-prefix",
        env = "NATS_SUBJECT_PREFIX",
        default_value = ""
    )]
    pub subject_prefix: String,
    /// JetStream: replicas of the stream when a service creates it (1, or 3 on a three-server cluster); an existing stream is left as it is, a difference logged
    #[arg(id = "nats_stream_replicas", value_name = "N", long = "nats-stream-replicas", env = "NATS_STREAM_REPLICAS", default_value = "1", value_parser = stream_replicas)]
    pub stream_replicas: usize,
    /// Deliveries after which an event a listener still cannot apply is given up (logged, counted as events_handled{outcome="gave_up"}); dependency outages do not count
    #[arg(id = "listener_max_deliveries", value_name = "N", long = "listener-max-deliveries", env = "LISTENER_MAX_DELIVERIES", default_value = "20", value_parser = crate::config::parse::positive::<u64>)]
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
    /// Replicas of the stream when we create it (`NATS_STREAM_REPLICAS`, default 1).
    pub replicas: usize,
}

impl StreamSpec {
    /// The stream `name` with the Node stack's subjects, one replica.
    pub fn new(name: impl Into<String>) -> Self {
        StreamSpec {
            name: name.into(),
            subject_prefix: String::new(),
            replicas: 1,
        }
    }

    /// The NATS subject `subject` travels on in this stream.
    pub fn subject(&self, subject: Subject) -> String {
        format!("{}{}", self.subject_prefix, subject.as_str())
    }
}

impl NatsConfig {
    /// The stream and its subjects.
    pub fn stream(&self) -> StreamSpec {
        StreamSpec {
            name: self.cluster_id.clone(),
            subject_prefix: self.subject_prefix.clone(),
            replicas: self.stream_replicas,
        }
    }

    /// The connection name: `NATS_CLIENT_ID`, else `service`.
    pub fn client_name<'a>(&'a self, service: &'a str) -> &'a str {
        self.client_id
            .as_deref()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or(service)
    }

    /// The options of every listener of a service on this configuration.
    pub fn listener_options(&self) -> super::ListenerOptions {
        let mut options = super::ListenerOptions::new(self.stream());
        options.max_deliveries = self.max_deliveries;
        options
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of connecting to NATS and setting up the stream and consumers.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// Credentials redacted.
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up JetStream stream `{stream}`")]
    Stream {
        stream: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "stream `{stream}` cannot hold {subjects}: stream `{holder}` already does. Set NATS_CLUSTER_ID={holder} to share it, or delete stream `{holder}`"
    )]
    SubjectsTaken {
        stream: String,
        holder: String,
        subjects: String,
    },
    #[error("cannot set up the listener `{consumer}`")]
    Consumer {
        consumer: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Streaming(#[from] super::streaming::StreamingError),
    #[error(
        "no NATS Streaming server answers for cluster id `{cluster_id}`, and JetStream cannot be used either; is NATS_CLUSTER_ID right?"
    )]
    NoTransport {
        cluster_id: String,
        #[source]
        source: Box<BusError>,
    },
}

/// Accepts the Node stack's `http://nats-srv:4222` (and a comma-separated list of servers):
/// `http` becomes `nats`, `https` becomes `tls`, a missing scheme means `nats`.
pub fn normalize_url(url: &str) -> Result<String, Expected> {
    let expected = || {
        Expected("NATS server URLs (nats://, tls:// or http://host:port, comma-separated)".into())
    };
    let servers: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| match server.split_once("://") {
            Some(("http", rest)) | Some(("nats", rest)) => Ok(format!("nats://{rest}")),
            Some(("https", rest)) | Some(("tls", rest)) => Ok(format!("tls://{rest}")),
            Some(_) => Err(expected()),
            None => Ok(format!("nats://{server}")),
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(expected());
    }
    Ok(servers.join(","))
}

/// JetStream allows 1 to 5 replicas of a stream.
fn stream_replicas(value: &str) -> Result<usize, Expected> {
    match value.trim().parse() {
        Ok(replicas @ 1..=5) => Ok(replicas),
        _ => Err(Expected("a number of replicas from 1 to 5".into())),
    }
}

/// The servers of a comma-separated list, for the client (which reads a single string as one
/// server): it tries them in turn and learns the rest of a cluster from the first it reaches.
pub fn servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// How often the client pings the server; two unanswered pings mark the connection dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Connects as `service` (or `NATS_CLIENT_ID`). After the first connection the client
/// reconnects by itself for as long as the process lives.
pub async fn connect(config: &NatsConfig, service: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name(config.client_name(service))
        .connection_timeout(Duration::from_secs(5))
        // A server that stopped answering (frozen, or cut off) is left for another, or
        // reconnected to, after two unanswered pings rather than the default two minutes.
        .ping_interval(PING_INTERVAL)
        .connect(servers(&config.url))
        .await
        .map_err(|source| BusError::Connect {
            url: redact_url(&config.url),
            source,
        })
}

/// The `/readyz` check of a NATS connection: ready when connected and JetStream answers a
/// request (a frozen server keeps the connection "connected" until pings time out), else the
/// connection's state or JetStream's error.
pub fn connection_check(
    client: async_nats::Client,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
    move || {
        let client = client.clone();
        Box::pin(async move {
            match client.connection_state() {
                async_nats::connection::State::Connected => {}
                other => return Err(other.to_string()),
            }
            // Any answer of the JetStream API will do; its content is not needed here.
            client
                .request("$JS.API.INFO", bytes::Bytes::new())
                .await
                .map(|_| ())
                .map_err(|e| format!("JetStream does not answer: {e}"))
        })
    }
}

/// How long JetStream remembers message ids to drop duplicates, for streams we create.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// What [`ensure_stream`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSetup {
    /// We created it, with the replicas asked for.
    Created,
    /// It existed (its missing subjects, if any, were added); with this many replicas, which
    /// are never changed here.
    Existing { replicas: usize },
}

/// Makes sure the stream exists and holds all six subjects. Another service may have created it
/// first, with only its own subjects: the missing ones are added, nothing is removed. A stream
/// we create gets `spec.replicas`; an existing one with other replicas is reported (logged) and
/// left alone, since changing replicas moves its data and is the operator's decision.
pub async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<StreamSetup, BusError> {
    let name = spec.name.as_str();
    let subjects: Vec<String> = Subject::ALL
        .iter()
        .map(|subject| spec.subject(*subject))
        .collect();
    let fail = |source: BoxError| BusError::Stream {
        stream: name.to_owned(),
        source,
    };
    // Two services starting together may race to create it: the loser finds it on the next turn.
    for _ in 0..5 {
        match js.get_stream(name).await {
            Ok(existing) => {
                let mut config = existing.cached_info().config.clone();
                let setup = StreamSetup::Existing {
                    replicas: config.num_replicas.max(1),
                };
                if config.num_replicas.max(1) != spec.replicas {
                    tracing::warn!(
                        stream = name,
                        replicas = config.num_replicas.max(1),
                        wanted = spec.replicas,
                        "the stream exists with other replicas than NATS_STREAM_REPLICAS and is left as it is; to change it: nats stream edit {name} --replicas {}",
                        spec.replicas
                    );
                }
                let missing: Vec<String> = subjects
                    .iter()
                    .filter(|subject| !covers(&config.subjects, subject))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    return Ok(setup);
                }
                tracing::info!(
                    stream = name,
                    ?missing,
                    "adding our subjects to the existing stream"
                );
                config.subjects.extend(missing.clone());
                return match js.update_stream(config).await {
                    Ok(_) => Ok(setup),
                    Err(e) if is_overlap(&e) => Err(subjects_taken(js, name, &missing).await),
                    Err(e) => Err(fail(e.into())),
                };
            }
            Err(e) if is_stream_not_found(&e) => {
                let config = stream::Config {
                    name: name.to_owned(),
                    subjects: subjects.clone(),
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    num_replicas: spec.replicas,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => {
                        tracing::info!(
                            stream = name,
                            replicas = spec.replicas,
                            "created the JetStream stream"
                        );
                        return Ok(StreamSetup::Created);
                    }
                    Err(e) if is_overlap(&e) => {
                        return Err(subjects_taken(js, name, &subjects).await);
                    }
                    Err(e) => {
                        tracing::debug!(stream = name, error = %e, "stream creation lost a race; looking again")
                    }
                }
            }
            Err(e) => return Err(fail(e.into())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(fail(
        "another process kept changing it while we set it up".into(),
    ))
}

fn is_overlap(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(error.kind(), jetstream::context::CreateStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP)
}

/// The error naming the stream that already captures some of `subjects`.
async fn subjects_taken(js: &jetstream::Context, stream: &str, subjects: &[String]) -> BusError {
    let mut holder = None;
    let mut taken = Vec::new();
    for subject in subjects {
        if let Ok(name) = js.stream_by_subject(subject.as_str()).await
            && name != stream
        {
            holder.get_or_insert(name);
            taken.push(format!("`{subject}`"));
        }
    }
    BusError::SubjectsTaken {
        stream: stream.to_owned(),
        holder: holder.unwrap_or_else(|| "another stream".into()),
        subjects: taken.join(", "),
    }
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

    /// A binary whose only settings are the NATS ones.
    #[derive(clap::Parser, Debug)]
    struct OnlyNats {
        #[command(flatten)]
        nats: NatsConfig,
    }

    impl crate::config::Settings for OnlyNats {}

    fn nats(pairs: &'static [(&'static str, &'static str)]) -> Result<NatsConfig, String> {
        use crate::config::Settings;
        OnlyNats::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .map(|only| only.nats)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_node_stacks_variables_with_defaults() {
        let config = nats(&[("NATS_URL", "http://nats-srv:4222")]).unwrap();
        assert_eq!(config.url, "nats://nats-srv:4222");
        assert_eq!(config.client_name("orders"), "orders");
        assert_eq!(config.stream(), StreamSpec::new("ticketing"));
        assert_eq!(config.max_deliveries, 20);
        assert_eq!(
            config.stream().subject(Subject::OrderCreated),
            "order:created"
        );
        let config = nats(&[
            ("NATS_URL", "nats://x:1"),
            ("NATS_CLIENT_ID", "orders-depl-abc"),
            ("NATS_CLUSTER_ID", "t2"),
            ("NATS_SUBJECT_PREFIX", "t2."),
        ])
        .unwrap();
        assert_eq!(
            (config.client_name("orders"), config.stream().name.as_str()),
            ("orders-depl-abc", "t2")
        );
        assert_eq!(
            config.stream().subject(Subject::PaymentCreated),
            "t2.payment:created"
        );
        let missing = nats(&[]).unwrap_err();
        assert!(missing.starts_with("NATS_URL must be set"), "{missing}");
        let bad = nats(&[("NATS_URL", "ftp://u:secret@x:1")]).unwrap_err();
        assert!(
            bad.starts_with("NATS_URL=`ftp://<redacted>@x:1` is invalid"),
            "{bad}"
        );
        let bad =
            nats(&[("NATS_URL", "nats://x:1"), ("LISTENER_MAX_DELIVERIES", "0")]).unwrap_err();
        assert!(bad.starts_with("LISTENER_MAX_DELIVERIES=`0`"), "{bad}");
    }

    #[test]
    fn only_whole_subject_wildcards_cover_our_subjects() {
        let subjects = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&subjects(&["ticket:created"]), "ticket:created"));
        assert!(covers(&subjects(&[">"]), "order:created"));
        assert!(!covers(&subjects(&["ticket:*"]), "ticket:created"));
    }
}
