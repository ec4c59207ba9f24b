use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};

use crate::Subject;
use crate::config::{Expected, redact_url};

/// How a service reaches NATS and consumes from it: the settings both services share. `Debug`
/// hides the credentials of `NATS_URL`.
#[derive(Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server(s), comma-separated; http:// is accepted and treated as nats://; credentials as nats://user:password@host or nats://token@host (percent-encoded)
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

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("client_id", &self.client_id)
            .field("transport", &self.transport)
            .field("cluster_id", &self.cluster_id)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream_replicas", &self.stream_replicas)
            .field("max_deliveries", &self.max_deliveries)
            .finish()
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
    #[error("NATS_URL=`{url}` is invalid: expected {expected}")]
    Url {
        /// Credentials redacted.
        url: String,
        expected: Expected,
    },
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
    let servers = servers.join(",");
    // Credentials that cannot be used are a settings error too, found before any connection.
    Credentials::split(&servers)?;
    Ok(servers)
}

/// Credentials written in `NATS_URL`: `nats://user:password@host:4222` or
/// `nats://token@host:4222`, each part percent-decoded (a password holding `@`, `:` or `/` must
/// be written `%40`, `%3A`, `%2F`). async-nats ignores credentials in a URL, so they are taken
/// out of the addresses the client keeps (and logs) and handed to its options
/// ([`with_credentials`]); both transports connect through [`connect`]. `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword { user: String, password: String },
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::UserPassword { .. } => f.write_str("UserPassword(<redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The servers of a comma-separated list without their credentials, and the credentials.
    /// Servers written with credentials must all carry the same ones; a server written without
    /// any gets them as well (as do the servers the client discovers), since the client has
    /// one set of credentials for every server.
    pub fn split(urls: &str) -> Result<(Vec<String>, Option<Credentials>), Expected> {
        let mut found: Option<Credentials> = None;
        let mut addresses = Vec::new();
        for url in servers(urls) {
            let (address, credentials) = Self::of_server(url)?;
            addresses.push(address);
            match (&found, credentials) {
                (_, None) => {}
                (None, Some(credentials)) => found = Some(credentials),
                (Some(first), Some(credentials)) if *first == credentials => {}
                (Some(_), Some(_)) => {
                    return Err(Expected(
                        "the same credentials on every server of the list (one client sends one set to all of them)".into(),
                    ));
                }
            }
        }
        Ok((addresses, found))
    }

    /// A server's `host[:port]` has a numeric port, if any: `nats://u:pa,ss@host` is split at
    /// the comma into `nats://u:pa` (host `u`, port `pa`) and `nats://ss@host`, and must not be
    /// taken for two servers (nor shown as one, half a password in it).
    fn check_port(host_and_rest: &str) -> Result<(), Expected> {
        let authority = host_and_rest.split('/').next().unwrap_or_default();
        // An IPv6 address is bracketed: its port follows the `]`.
        let after_host = match authority.rfind(']') {
            Some(end) => &authority[end + 1..],
            None => authority,
        };
        match after_host.rsplit_once(':') {
            Some((_, port)) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => {
                Err(Expected(
                    "servers written `host:port` (a `,` in credentials percent-encoded as `%2C`)"
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// One server's URL without its `user:password@` or `token@`, and those credentials. The
    /// last `@` ends them, as [`redact_url`] hides them.
    fn of_server(url: &str) -> Result<(String, Option<Credentials>), Expected> {
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return Ok((url.to_owned(), None));
        };
        let Some(at) = url[scheme_end..].rfind('@').map(|i| scheme_end + i) else {
            Self::check_port(&url[scheme_end..])?;
            return Ok((url.to_owned(), None));
        };
        Self::check_port(&url[at + 1..])?;
        let address = format!("{}{}", &url[..scheme_end], &url[at + 1..]);
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| Expected("credentials that percent-decode to UTF-8 text".into()))
        };
        let credentials = match url[scheme_end..at].split_once(':') {
            Some((user, password)) if !user.is_empty() => Credentials::UserPassword {
                user: decode(user)?,
                password: decode(password)?,
            },
            None if at > scheme_end => Credentials::Token(decode(&url[scheme_end..at])?),
            _ => {
                return Err(Expected(
                    "`user:password@` or `token@` before the host, not empty".into(),
                ));
            }
        };
        Ok((address, Some(credentials)))
    }
}

/// `options` authenticating with `credentials`, if any.
pub fn with_credentials(
    options: async_nats::ConnectOptions,
    credentials: Option<&Credentials>,
) -> async_nats::ConnectOptions {
    match credentials {
        None => options,
        Some(Credentials::UserPassword { user, password }) => {
            options.user_and_password(user.clone(), password.clone())
        }
        Some(Credentials::Token(token)) => options.token(token.clone()),
    }
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

/// Connects as `service` (or `NATS_CLIENT_ID`), with the credentials `NATS_URL` carries (see
/// [`Credentials`]); the client is given the addresses without them. After the first
/// connection the client reconnects by itself for as long as the process lives.
pub async fn connect(config: &NatsConfig, service: &str) -> Result<async_nats::Client, BusError> {
    let (addresses, credentials) =
        Credentials::split(&config.url).map_err(|expected| BusError::Url {
            url: redact_url(&config.url),
            expected,
        })?;
    with_credentials(async_nats::ConnectOptions::new(), credentials.as_ref())
        .name(config.client_name(service))
        .connection_timeout(Duration::from_secs(5))
        // A server that stopped answering (frozen, or cut off) is left for another, or
        // reconnected to, after two unanswered pings rather than the default two minutes.
        .ping_interval(PING_INTERVAL)
        .connect(addresses)
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
    fn credentials_in_the_url_are_taken_out_of_the_addresses_and_percent_decoded() {
        let user = |user: &str, password: &str| {
            Some(Credentials::UserPassword {
                user: user.into(),
                password: password.into(),
            })
        };
        let split = |urls: &str| Credentials::split(urls).unwrap();
        assert_eq!(
            split("nats://ticketing:p%40ss%3Aw%2Frd@a:4222,nats://b:4222"),
            (
                vec!["nats://a:4222".to_owned(), "nats://b:4222".to_owned()],
                user("ticketing", "p@ss:w/rd")
            )
        );
        // The last `@` ends them, as redact_url hides them; an empty password is a password.
        assert_eq!(split("nats://u:p@ss@a:1").1, user("u", "p@ss"));
        assert_eq!(split("nats://u:@a:1").1, user("u", ""));
        assert_eq!(
            split("nats://s3cr3t@a:1"),
            (
                vec!["nats://a:1".to_owned()],
                Some(Credentials::Token("s3cr3t".into()))
            )
        );
        // A token holding `:` must be written %3A, or it reads as user:password.
        assert_eq!(
            split("tls://to%3Aken@a:1").1,
            Some(Credentials::Token("to:ken".into()))
        );
        assert_eq!(
            split("nats://a:1,nats://b:2"),
            (vec!["nats://a:1".to_owned(), "nats://b:2".to_owned()], None)
        );
        assert_eq!(split("nats://u:p@a:1, nats://u:p@b:2").1, user("u", "p"));
        let error = |urls: &str| Credentials::split(urls).unwrap_err().to_string();
        assert!(
            error("nats://u:one@a:1,nats://u:two@b:1").starts_with("the same credentials"),
            "{}",
            error("nats://u:one@a:1,nats://u:two@b:1")
        );
        assert!(error("nats://a@a:1,nats://u:a@b:1").starts_with("the same credentials"));
        assert!(error("nats://@a:1").contains("not empty"));
        assert!(error("nats://:pw@a:1").contains("not empty"));
        assert!(error("nats://u:%FF@a:1").contains("UTF-8"));
        let debug = format!("{:?}", split("nats://u:hunter2@a:1").1);
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn nats_url_credentials_are_checked_as_settings_and_never_shown() {
        let config = nats(&[("NATS_URL", "http://u:hunter2@nats-srv:4222")]).unwrap();
        assert_eq!(config.url, "nats://u:hunter2@nats-srv:4222");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("nats://<redacted>@nats-srv:4222"),
            "{debug}"
        );
        let differ = nats(&[("NATS_URL", "nats://u:one@a:1,nats://u:two@b:1")]).unwrap_err();
        assert_eq!(
            differ,
            "NATS_URL=`nats://<redacted>@a:1,nats://<redacted>@b:1` is invalid: expected the same credentials on every server of the list (one client sends one set to all of them)"
        );
        // A `,` left unencoded in a password: not two servers, and not half a password shown.
        let comma = nats(&[("NATS_URL", "nats://u:hun,ter2@a:1")]).unwrap_err();
        assert_eq!(
            comma,
            "NATS_URL=`nats://<redacted>@a:1` is invalid: expected servers written `host:port` (a `,` in credentials percent-encoded as `%2C`)"
        );
        let empty = nats(&[("NATS_URL", "nats://:hunter2@a:1")]).unwrap_err();
        assert!(
            empty.starts_with("NATS_URL=`nats://<redacted>@a:1` is invalid")
                && !empty.contains("hunter2"),
            "{empty}"
        );
    }

    #[test]
    fn only_whole_subject_wildcards_cover_our_subjects() {
        let subjects = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&subjects(&["ticket:created"]), "ticket:created"));
        assert!(covers(&subjects(&[">"]), "order:created"));
        assert!(!covers(&subjects(&["ticket:*"]), "ticket:created"));
    }
}
