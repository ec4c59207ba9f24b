//! Test support: where the local stack (`scripts/stack up`) listens, and a JetStream stream of
//! a test's own so that tests share one NATS server without seeing each other's events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::bus::{self, Publisher, StreamSpec};
use crate::{Event, Subject};

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
}

impl TestStream {
    /// Connects to `NATS_URL` and creates the stream.
    pub async fn new() -> Self {
        let name = unique_name("test");
        let spec = StreamSpec {
            subject_prefix: format!("{name}."),
            name,
        };
        let client = async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
            panic!(
                "NATS at {} does not answer ({e}); run scripts/stack up",
                nats_url()
            )
        });
        let js = jetstream::new(client.clone());
        bus::ensure_stream(&js, &spec)
            .await
            .expect("creating the test stream");
        TestStream { client, js, spec }
    }

    /// The environment a service process needs to use this stream.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", nats_url()),
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
