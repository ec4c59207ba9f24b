//! Test support: where the local stack (`scripts/stack up`) listens, and a JetStream stream of
//! a test's own so that tests share one NATS server without seeing each other's events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::bus::{self, Publisher, StreamSpec};
use crate::{Event, Subject};

/// An HTTP answer, for tests.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: Option<String>,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The messages of a SPEC error body; panics if the body is not one.
    pub fn messages(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("not an error body: {:?} {}", self.status, self.body))
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Sends one HTTP/1.1 request on a fresh connection to `host:port`.
pub async fn send(
    (host, port): (&str, u16),
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<bytes::Bytes>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(http_body_util::Full::new(body.unwrap_or_default()))?)
        .await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `NATS_URL`, or the local stack's default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:14222".into())
}

/// `REDIS_URL`, or the local stack's default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

/// `MONGO_URI`, or the local stack's default.
pub fn mongo_uri() -> String {
    std::env::var("MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:37017".into())
}

/// A free TCP port on the loopback interface (released before it is returned).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A child process that is SIGKILLed when dropped, so that a failing test leaves none behind.
pub struct ChildProcess {
    child: Option<std::process::Child>,
}

impl ChildProcess {
    /// Spawns `command`.
    pub fn spawn(command: &mut std::process::Command) -> std::io::Result<Self> {
        Ok(ChildProcess {
            child: Some(command.spawn()?),
        })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// SIGKILL: it dies at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then its exit status once it has stopped (SIGKILL after `deadline`).
    pub async fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `GET /readyz` on `port` until it answers 200; panics with `what` after `deadline`.
pub async fn wait_ready(port: u16, deadline: Duration, what: &str) {
    eventually(deadline, what, || async {
        send(("127.0.0.1", port), http::Method::GET, "/readyz", &[], None)
            .await
            .is_ok_and(|answer| answer.status == http::StatusCode::OK)
    })
    .await;
}

/// A name no other test of any process uses: `<prefix>-<pid>-<time>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream of the test's own on the local stack's NATS, with all six subjects under a unique
/// prefix. Call [`TestStream::delete`] at the end of the test.
pub struct TestStream {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub spec: StreamSpec,
    /// The server it lives on.
    pub url: String,
}

impl TestStream {
    /// Connects to `NATS_URL` and creates the stream.
    pub async fn new() -> Self {
        Self::on(&nats_url()).await
    }

    /// Connects to the NATS server at `url` (a test's own server) and creates the stream.
    pub async fn on(url: &str) -> Self {
        let name = unique_name("test");
        let spec = StreamSpec {
            subject_prefix: format!("{name}."),
            name,
        };
        let client = async_nats::connect(url).await.unwrap_or_else(|e| {
            panic!("NATS at {url} does not answer ({e}); run scripts/stack up")
        });
        let js = jetstream::new(client.clone());
        bus::ensure_stream(&js, &spec)
            .await
            .expect("creating the test stream");
        TestStream {
            client,
            js,
            spec,
            url: url.to_owned(),
        }
    }

    /// The environment a service process needs to use this stream.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.url.clone()),
            ("NATS_CLUSTER_ID", self.spec.name.clone()),
            ("NATS_SUBJECT_PREFIX", self.spec.subject_prefix.clone()),
        ]
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

    /// Removes the stream and its consumers.
    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.spec.name).await;
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
    entries: std::sync::Arc<std::sync::Mutex<Vec<Logged>>>,
    task: tokio::task::JoinHandle<()>,
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

    /// Waits until `condition` holds for the log; panics with `what` after `deadline`.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        condition: impl Fn(&[Logged]) -> bool,
    ) {
        eventually(deadline, what, || async { condition(&self.all()) }).await;
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

impl Drop for EventLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestStream {
    /// Starts logging every message of the stream, from its first.
    pub async fn log(&self) -> EventLog {
        use futures::StreamExt;
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
            while let Some(message) = messages.next().await {
                let Ok(message) = message else { continue };
                let Ok(info) = message.info() else { continue };
                let Some(subject) = message
                    .subject
                    .as_str()
                    .strip_prefix(prefix.as_str())
                    .and_then(Subject::parse)
                else {
                    continue;
                };
                let logged = Logged {
                    subject,
                    body: String::from_utf8_lossy(&message.payload).into_owned(),
                    stored_at: info.published,
                    sequence: info.stream_sequence,
                };
                sink.lock().expect("event log lock").push(logged);
            }
        });
        EventLog { entries, task }
    }
}
