//! [`TestBus`]: a test's own place on either transport, so that one test body runs on both.

use std::time::Duration;

use super::{EventLog, TestChannels, TestStream, eventually};
use crate::bus::{Bus, Publisher, StreamSpec, Transport, consumer_name};
use crate::{Event, Subject};

/// A JetStream stream ([`TestStream`]) or NATS Streaming channels ([`TestChannels`]) of the
/// test's own.
pub enum TestBus {
    JetStream(Box<TestStream>),
    Streaming(TestChannels),
}

impl TestBus {
    /// On the local stack's server of `transport`.
    pub async fn new(transport: Transport) -> Self {
        match transport {
            Transport::JetStream => TestBus::JetStream(Box::new(TestStream::new().await)),
            Transport::Streaming => TestBus::Streaming(TestChannels::new().await),
        }
    }

    /// On a server of the test's own at `url`, speaking `transport` (NATS Streaming: cluster id
    /// `ticketing`).
    pub async fn on(transport: Transport, url: &str) -> Self {
        match transport {
            Transport::JetStream => TestBus::JetStream(Box::new(TestStream::on(url).await)),
            Transport::Streaming => TestBus::Streaming(TestChannels::on(url, "ticketing").await),
        }
    }

    /// The bus of services deployed elsewhere (a cluster's), reached at `url`: JetStream's stream
    /// or NATS Streaming's cluster `name`, subjects unprefixed. Never deleted.
    pub async fn existing(transport: Transport, url: &str, name: &str) -> Self {
        match transport {
            Transport::JetStream => {
                TestBus::JetStream(Box::new(TestStream::existing(url, name).await))
            }
            Transport::Streaming => TestBus::Streaming(TestChannels::existing(url, name).await),
        }
    }

    /// JetStream on the servers at `url` (a cluster of the test's own), the stream with
    /// `replicas` replicas.
    pub async fn replicated(url: &str, replicas: usize) -> Self {
        TestBus::JetStream(Box::new(TestStream::replicated(url, replicas).await))
    }

    pub fn transport(&self) -> Transport {
        match self {
            TestBus::JetStream(_) => Transport::JetStream,
            TestBus::Streaming(_) => Transport::Streaming,
        }
    }

    /// The stream, or the channels' prefix.
    pub fn spec(&self) -> &StreamSpec {
        match self {
            TestBus::JetStream(stream) => &stream.spec,
            TestBus::Streaming(channels) => &channels.spec,
        }
    }

    /// The bus a service would hold here.
    pub fn bus(&self) -> Bus {
        match self {
            TestBus::JetStream(stream) => Bus::jetstream(stream.js.clone(), stream.spec.clone()),
            TestBus::Streaming(channels) => channels.bus(),
        }
    }

    /// The environment a service process needs to use it (`NATS_TRANSPORT` included).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            TestBus::JetStream(stream) => {
                let mut env = stream.env();
                env.push(("NATS_TRANSPORT", "jetstream".into()));
                env
            }
            TestBus::Streaming(channels) => channels.env(),
        }
    }

    pub fn publisher(&self) -> Publisher {
        match self {
            TestBus::JetStream(stream) => stream.publisher(),
            TestBus::Streaming(channels) => channels.publisher(),
        }
    }

    /// Publishes `event` and waits for the ack.
    pub async fn publish<E: Event>(&self, event: &E) {
        match self {
            TestBus::JetStream(stream) => stream.publish(event).await,
            TestBus::Streaming(channels) => channels.publish(event).await,
        }
    }

    /// Publishes a body no service would write.
    pub async fn publish_raw(&self, subject: Subject, body: &[u8]) {
        match self {
            TestBus::JetStream(stream) => {
                stream
                    .js
                    .publish(stream.spec.subject(subject), body.to_vec().into())
                    .await
                    .expect("publishing a test body")
                    .await
                    .expect("JetStream stores a test body");
            }
            TestBus::Streaming(channels) => channels.publish_raw(subject, body).await,
        }
    }

    /// Every message from the start, as it arrives (see [`EventLog`]).
    pub async fn log(&self) -> EventLog {
        match self {
            TestBus::JetStream(stream) => stream.log().await,
            TestBus::Streaming(channels) => channels.log().await,
        }
    }

    /// Messages of `subject` handed to queue group `group` and not acked yet.
    pub async fn pending_acks(&self, subject: Subject, group: &str) -> u64 {
        match self {
            TestBus::JetStream(stream) => {
                let name = consumer_name(group, subject);
                let Ok(js_stream) = stream.js.get_stream(&stream.spec.name).await else {
                    return 0;
                };
                js_stream
                    .consumer_info(name)
                    .await
                    .map(|info| info.num_ack_pending as u64)
                    .unwrap_or(0)
            }
            TestBus::Streaming(channels) => channels.pending(subject, group).await,
        }
    }

    /// Waits (up to 5 s) until every message of `subject` handed to `group` is acked; on
    /// JetStream, also that the group's consumer exists and has nothing left to deliver.
    pub async fn all_acked(&self, subject: Subject, group: &str) {
        eventually(Duration::from_secs(5), "every message acked", || async {
            match self {
                TestBus::JetStream(stream) => {
                    let name = consumer_name(group, subject);
                    match stream.js.get_stream(&stream.spec.name).await {
                        Ok(js_stream) => js_stream
                            .consumer_info(name)
                            .await
                            .is_ok_and(|info| (info.num_ack_pending, info.num_pending) == (0, 0)),
                        Err(_) => false,
                    }
                }
                TestBus::Streaming(channels) => channels.pending(subject, group).await == 0,
            }
        })
        .await;
    }

    /// Removes what the test made, where the server keeps it (JetStream's stream; NATS
    /// Streaming's channels expire with the server's memory store).
    pub async fn delete(self) {
        if let TestBus::JetStream(stream) = self {
            stream.delete().await;
        }
    }
}
