//! A JetStream stream of a test's own, so that tests share one NATS server without seeing each
//! other's events, and the log of everything it holds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::{eventually, eventually_explained, nats_url, unique_name};
use crate::bus::{self, Publisher, StreamSpec};
use crate::{Event, Subject};

/// A stream of the test's own on the local stack's NATS (or a server of the test's own), with
/// all six subjects under a unique prefix. It is deleted, with its consumers, when dropped.
/// ([`TestStream::existing`] is a stream the services made, which is never deleted.)
pub struct TestStream {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub spec: StreamSpec,
    /// The server it lives on.
    pub url: String,
    /// The test made the stream, and deletes it.
    owned: bool,
}

impl TestStream {
    /// Connects to `NATS_URL` and creates the stream.
    pub async fn new() -> Self {
        Self::on(&nats_url()).await
    }

    /// Connects to the NATS server at `url` (a test's own server) and creates the stream.
    pub async fn on(url: &str) -> Self {
        Self::replicated(url, 1).await
    }

    /// Connects to the NATS servers at `url` (a comma-separated list: a cluster of the test's
    /// own) and creates the stream with `replicas` replicas.
    pub async fn replicated(url: &str, replicas: usize) -> Self {
        let name = unique_name("test");
        let spec = StreamSpec {
            subject_prefix: format!("{name}."),
            name,
            replicas,
        };
        let client = async_nats::ConnectOptions::new()
            // Reconnect at once after a test restarts its own server.
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(bus::servers(url))
            .await
            .unwrap_or_else(|e| {
                panic!("NATS at {url} does not answer ({e}); run scripts/stack up")
            });
        let js = jetstream::new(client.clone());
        bus::ensure_stream(&js, &spec)
            .await
            .expect("creating the test stream");
        if replicas > 1 {
            // A publish reaches the stream only once its leader is elected and has told the
            // other servers of its subjects.
            eventually(
                Duration::from_secs(20),
                "the test stream's leader and current replicas",
                || async {
                    let Ok(mut stream) = js.get_stream(&spec.name).await else {
                        return false;
                    };
                    stream.info().await.is_ok_and(|info| {
                        info.cluster.as_ref().is_some_and(|cluster| {
                            cluster.leader.is_some()
                                && cluster.replicas.len() + 1 == replicas
                                && cluster.replicas.iter().all(|replica| replica.current)
                        })
                    })
                },
            )
            .await;
        }
        TestStream {
            client,
            js,
            spec,
            url: url.to_owned(),
            owned: true,
        }
    }

    /// The stream `name` that services deployed elsewhere (a cluster's) made on the server at
    /// `url`, its subjects unprefixed as in production: to watch and feed their events. Never
    /// deleted by the test.
    pub async fn existing(url: &str, name: &str) -> Self {
        let client = async_nats::ConnectOptions::new()
            .connect(bus::servers(url))
            .await
            .unwrap_or_else(|e| panic!("NATS at {url} does not answer ({e})"));
        let js = jetstream::new(client.clone());
        js.get_stream(name).await.unwrap_or_else(|e| {
            panic!("no stream {name} at {url} ({e}): have the services started?")
        });
        TestStream {
            client,
            js,
            spec: StreamSpec {
                name: name.to_owned(),
                subject_prefix: String::new(),
                replicas: 1,
            },
            url: url.to_owned(),
            owned: false,
        }
    }

    /// The environment a service process needs to use this stream.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.url.clone()),
            ("NATS_CLUSTER_ID", self.spec.name.clone()),
            ("NATS_SUBJECT_PREFIX", self.spec.subject_prefix.clone()),
            ("NATS_STREAM_REPLICAS", self.spec.replicas.to_string()),
        ]
    }

    /// Waits (up to 10 s) until this stream's connection is up again, after a test restarted its
    /// own server.
    pub async fn reconnected(&self) {
        eventually(
            Duration::from_secs(10),
            "the test's NATS client to reconnect",
            || async { self.client.connection_state() == async_nats::connection::State::Connected },
        )
        .await;
    }

    /// A publisher to this stream.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.js.clone(), self.spec.clone(), None)
    }

    /// Publishes `event` and waits for the ack.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.publisher()
            .publish(event)
            .await
            .expect("publishing a test event");
    }

    /// Publishes `event` under a message id of its own, so that JetStream stores it even if the
    /// same event was published before: a redelivery as consumers see it.
    pub async fn publish_again<E: Event>(&self, event: &E) {
        self.publisher()
            .publish_body(
                E::SUBJECT,
                &unique_name("again"),
                serde_json::to_vec(event).expect("events serialise").into(),
            )
            .await
            .expect("publishing a test event");
    }

    /// Every body stored so far on `subject`, oldest first.
    pub async fn bodies(&self, subject: Subject) -> Vec<String> {
        let stream = self
            .js
            .get_stream(&self.spec.name)
            .await
            .expect("the test stream");
        let last = stream
            .get_info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let wanted = self.spec.subject(subject);
        let mut bodies = Vec::new();
        for sequence in 1..=last {
            // A sequence may be missing if the stream dropped it; skip it.
            if let Ok(message) = stream.get_raw_message(sequence).await
                && message.subject.as_str() == wanted
            {
                bodies.push(String::from_utf8_lossy(&message.payload).into_owned());
            }
        }
        bodies
    }

    /// Every event stored so far on `E`'s subject, oldest first.
    pub async fn events<E: Event>(&self) -> Vec<E> {
        self.bodies(E::SUBJECT)
            .await
            .iter()
            .map(|body| {
                serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("undecodable {} body {body}: {e}", E::SUBJECT))
            })
            .collect()
    }

    /// Waits until `count` events are stored on `E`'s subject, then returns them all.
    pub async fn wait_for<E: Event>(&self, count: usize, deadline: Duration) -> Vec<E> {
        let start = Instant::now();
        loop {
            let events = self.events::<E>().await;
            if events.len() >= count {
                return events;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?}: {} of {count} {} events",
                events.len(),
                E::SUBJECT
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Removes the stream and its consumers now (dropping it does the same), if the test made it.
    pub async fn delete(self) {
        if self.owned {
            let _ = self.js.delete_stream(&self.spec.name).await;
        }
    }
}

impl Drop for TestStream {
    /// Deletes the stream, on a thread of its own (a drop cannot await, and the test's runtime
    /// may be shutting down); a stream already deleted is no error.
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let (url, name) = (self.url.clone(), self.spec.name.clone());
        let deleting = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(bus::servers(&url));
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await
                {
                    let js = jetstream::new(client);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&name)).await;
                }
            });
        });
        let _ = deleting.join();
    }
}

/// One message of an [`EventLog`].
#[derive(Debug, Clone)]
pub struct Logged {
    pub subject: Subject,
    pub body: String,
    /// When the stream stored it (the server's clock).
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub sequence: u64,
}

impl Logged {
    /// The body decoded as `E`; panics if it is not one.
    pub fn decode<E: Event>(&self) -> E {
        assert_eq!(
            self.subject,
            E::SUBJECT,
            "decoding a {} body as {}",
            self.subject,
            E::SUBJECT
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("undecodable {} body {}: {e}", self.subject, self.body))
    }
}

/// Every message of a [`TestStream`], from its start, collected in the background as it arrives
/// (an ordered consumer), for tests that watch many events and their timing.
pub struct EventLog {
    pub(crate) entries: std::sync::Arc<std::sync::Mutex<Vec<Logged>>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// The JetStream stream logged, whose consumers a timeout describes.
    pub(crate) stream: Option<StreamProbe>,
}

impl EventLog {
    /// Everything logged so far, in stream order.
    pub fn all(&self) -> Vec<Logged> {
        self.entries.lock().expect("event log lock").clone()
    }

    /// The messages of `E`'s subject so far, decoded, with when they were stored.
    pub fn events<E: Event>(&self) -> Vec<(E, chrono::DateTime<chrono::Utc>)> {
        self.all()
            .iter()
            .filter(|logged| logged.subject == E::SUBJECT)
            .map(|logged| (logged.decode::<E>(), logged.stored_at))
            .collect()
    }

    /// Waits until `condition` holds for the log; panics with `what` after `deadline`, saying
    /// how many messages of each subject the log holds and, on JetStream, where each consumer
    /// of the stream stands.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        condition: impl Fn(&[Logged]) -> bool,
    ) {
        self.wait_until_explained(deadline, what, condition, |_| String::new())
            .await;
    }

    /// [`EventLog::wait_until`], whose panic also carries what `explain` says of the log.
    pub async fn wait_until_explained(
        &self,
        deadline: Duration,
        what: &str,
        condition: impl Fn(&[Logged]) -> bool,
        explain: impl FnOnce(&[Logged]) -> String,
    ) {
        let explanation = async {
            let all = self.all();
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for logged in &all {
                *counts.entry(logged.subject.to_string()).or_default() += 1;
            }
            let counts: Vec<String> = counts
                .iter()
                .map(|(subject, n)| format!("{n} {subject}"))
                .collect();
            let mut lines = vec![format!("the log holds: {}", counts.join(", "))];
            if let Some(stream) = &self.stream {
                lines.push(stream.consumers_state().await);
            }
            lines.push(explain(&all));
            lines.retain(|line| !line.is_empty());
            lines.join("\n")
        };
        eventually_explained(
            deadline,
            what,
            || async { condition(&self.all()) },
            explanation,
        )
        .await;
    }

    /// Waits for `count` messages of `E`'s subject and returns them.
    pub async fn wait_for<E: Event>(
        &self,
        count: usize,
        deadline: Duration,
    ) -> Vec<(E, chrono::DateTime<chrono::Utc>)> {
        let what = format!("{count} {} events", E::SUBJECT);
        self.wait_until(deadline, &what, |all| {
            all.iter().filter(|l| l.subject == E::SUBJECT).count() >= count
        })
        .await;
        self.events::<E>()
    }
}

/// What a timed-out wait asks JetStream about the logged stream.
pub(crate) struct StreamProbe {
    js: jetstream::Context,
    name: String,
}

impl StreamProbe {
    /// One line per consumer of the stream: where it stands, and its leader.
    async fn consumers_state(&self) -> String {
        use futures::StreamExt;
        let Ok(stream) = self.js.get_stream(&self.name).await else {
            return format!("stream {}: no answer to its info", self.name);
        };
        let mut lines = vec![format!("consumers of stream {}:", self.name)];
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            lines.push(match info {
                Ok(info) => format!(
                    "  {}: delivered {}, acked up to {}, ack pending {}, redelivered {}, \
                     pending {}, pull requests waiting {}, leader {}",
                    info.name,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_pending,
                    info.num_waiting,
                    info.cluster
                        .and_then(|cluster| cluster.leader)
                        .unwrap_or_else(|| "-".into()),
                ),
                Err(e) => format!("  (a consumer's info failed: {e})"),
            });
        }
        lines.join("\n")
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// After this long without a message, an [`EventLog`] asks the stream whether it missed any.
const LOG_QUIET: Duration = Duration::from_secs(1);

impl TestStream {
    /// Starts logging every message of the stream, from its first.
    ///
    /// Messages arrive through an ordered consumer. That consumer lives on one server, and when
    /// the server dies the client takes a minute or more to notice and rebuild it; so whenever
    /// the log has heard nothing for [`LOG_QUIET`], it asks the stream (which survives a lost
    /// server) whether it holds more, and fetches what it missed by sequence.
    pub async fn log(&self) -> EventLog {
        use futures::StreamExt;
        use jetstream::stream::RawMessageErrorKind;
        use tokio::time::timeout;
        let stream = self
            .js
            .get_stream(&self.spec.name)
            .await
            .expect("the test stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("an ordered consumer");
        let mut messages = consumer.messages().await.expect("ordered messages");
        let entries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = entries.clone();
        let prefix = self.spec.subject_prefix.clone();
        let task = tokio::spawn(async move {
            // The last stream sequence logged: what the consumer delivers again is skipped.
            let last = std::sync::atomic::AtomicU64::new(0);
            let log = |subject: &str, payload: &[u8], stored_at, sequence| {
                if sequence <= last.load(Ordering::Relaxed) {
                    return;
                }
                last.store(sequence, Ordering::Relaxed);
                let Some(subject) = subject
                    .strip_prefix(prefix.as_str())
                    .and_then(Subject::parse)
                else {
                    return;
                };
                sink.lock().expect("event log lock").push(Logged {
                    subject,
                    body: String::from_utf8_lossy(payload).into_owned(),
                    stored_at,
                    sequence,
                });
            };
            loop {
                match timeout(LOG_QUIET, messages.next()).await {
                    Ok(None) => return,
                    Ok(Some(Ok(message))) => {
                        if let Ok(info) = message.info() {
                            log(
                                message.subject.as_str(),
                                &message.payload,
                                info.published,
                                info.stream_sequence,
                            );
                        }
                    }
                    // The client is reconnecting or rebuilding the consumer.
                    Ok(Some(Err(_))) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_quiet) => {
                        // Bounded, so that a request to a stream leader just lost is soon
                        // asked again of the next one.
                        let Ok(Ok(info)) = timeout(LOG_QUIET, stream.get_info()).await else {
                            continue;
                        };
                        let mut next = last.load(Ordering::Relaxed) + 1;
                        while next <= info.state.last_sequence {
                            let Ok(fetched) =
                                timeout(LOG_QUIET, stream.get_raw_message(next)).await
                            else {
                                break;
                            };
                            match fetched {
                                Ok(message) => log(
                                    message.subject.as_str(),
                                    &message.payload,
                                    message.time,
                                    message.sequence,
                                ),
                                // Deleted from the stream: nothing to log.
                                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                                Err(_) => break,
                            }
                            next += 1;
                        }
                    }
                }
            }
        });
        EventLog {
            entries,
            task,
            stream: Some(StreamProbe {
                js: self.js.clone(),
                name: self.spec.name.clone(),
            }),
        }
    }
}
