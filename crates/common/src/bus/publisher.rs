use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use super::streaming::Connection;
use super::{BusMetrics, StreamSpec, Transport};
use crate::{Event, Subject};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes events and waits for the server to store them. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    target: Target,
    stream: StreamSpec,
    metrics: Option<BusMetrics>,
}

#[derive(Clone)]
enum Target {
    JetStream(Box<jetstream::Context>),
    Streaming(Connection),
}

/// What the server answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// JetStream: the stream sequence of the stored message (of the first copy, for a
    /// duplicate). NATS Streaming does not say.
    pub sequence: Option<u64>,
    /// JetStream saw the message id inside its duplicate window: nothing new was stored. Never
    /// true on NATS Streaming, which does not de-duplicate.
    pub duplicate: bool,
}

/// Why a publish failed. Every variant but `Encode` is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode the {subject} event")]
    Encode {
        subject: Subject,
        #[source]
        source: serde_json::Error,
    },
    #[error("{transport} did not store the {subject} event")]
    Publish {
        subject: Subject,
        transport: Transport,
        #[source]
        source: BoxError,
    },
}

impl Publisher {
    /// A publisher to `stream` on JetStream `js`; counts outcomes in `metrics` when given.
    pub fn new(js: jetstream::Context, stream: StreamSpec, metrics: Option<BusMetrics>) -> Self {
        Publisher {
            target: Target::JetStream(Box::new(js)),
            stream,
            metrics,
        }
    }

    /// A publisher to the channels of `stream` on NATS Streaming.
    pub fn streaming(
        connection: Connection,
        stream: StreamSpec,
        metrics: Option<BusMetrics>,
    ) -> Self {
        Publisher {
            target: Target::Streaming(connection),
            stream,
            metrics,
        }
    }

    /// Whether the server can acknowledge a publish now: the connection to NATS is up (and, on
    /// NATS Streaming, a session is open).
    pub fn connected(&self) -> bool {
        match &self.target {
            Target::JetStream(js) => {
                js.client().connection_state() == async_nats::connection::State::Connected
            }
            Target::Streaming(connection) => connection.connected(),
        }
    }

    /// Publishes `event` (with its `Nats-Msg-Id` on JetStream) and awaits the server's ack.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Published, PublishError> {
        let body = serde_json::to_vec(event).map_err(|source| PublishError::Encode {
            subject: E::SUBJECT,
            source,
        })?;
        self.publish_body(E::SUBJECT, &event.message_id(), Bytes::from(body))
            .await
    }

    /// Publishes an already encoded body (what an outbox stored) under `message_id` (used by
    /// JetStream to drop a re-publish; NATS Streaming has no such thing).
    pub async fn publish_body(
        &self,
        subject: Subject,
        message_id: &str,
        body: Bytes,
    ) -> Result<Published, PublishError> {
        let channel = self.stream.subject(subject);
        let (result, transport): (Result<Published, BoxError>, _) = match &self.target {
            Target::JetStream(js) => {
                let result = async {
                    let message = PublishMessage::build().payload(body).message_id(message_id);
                    js.send_publish(channel, message).await?.await
                }
                .await
                .map(|ack| Published {
                    sequence: Some(ack.sequence),
                    duplicate: ack.duplicate,
                })
                .map_err(Into::into);
                (result, Transport::JetStream)
            }
            Target::Streaming(connection) => {
                let result = connection
                    .publish(&channel, body)
                    .await
                    .map(|()| Published {
                        sequence: None,
                        duplicate: false,
                    })
                    .map_err(Into::into);
                (result, Transport::Streaming)
            }
        };
        let outcome = match &result {
            Ok(published) if published.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        if let Some(metrics) = &self.metrics {
            metrics.count_published(subject.as_str(), outcome);
        }
        let published = result.map_err(|source| PublishError::Publish {
            subject,
            transport,
            source,
        })?;
        tracing::debug!(%subject, message_id, sequence = ?published.sequence, duplicate = published.duplicate, "published");
        Ok(published)
    }
}
