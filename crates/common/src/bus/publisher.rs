use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use super::{BusMetrics, StreamSpec};
use crate::{Event, Subject};

/// Publishes events to JetStream and waits for the stream to store them.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    stream: StreamSpec,
    metrics: Option<BusMetrics>,
}

/// What JetStream answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Stream sequence of the stored message (of the first copy, for a duplicate).
    pub sequence: u64,
    /// The message id was seen inside the duplicate window: nothing new was stored.
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
    #[error("JetStream did not store the {subject} event")]
    Publish {
        subject: Subject,
        #[source]
        source: jetstream::context::PublishError,
    },
}

impl Publisher {
    /// Whether the connection to NATS is up, so that a publish can be acknowledged now.
    pub fn connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// A publisher to `stream` on `js`; counts outcomes in `metrics` when given.
    pub fn new(js: jetstream::Context, stream: StreamSpec, metrics: Option<BusMetrics>) -> Self {
        Publisher {
            js,
            stream,
            metrics,
        }
    }

    /// Publishes `event` with its `Nats-Msg-Id` and awaits the JetStream acknowledgement.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Published, PublishError> {
        let body = serde_json::to_vec(event).map_err(|source| PublishError::Encode {
            subject: E::SUBJECT,
            source,
        })?;
        self.publish_body(E::SUBJECT, &event.message_id(), Bytes::from(body))
            .await
    }

    /// Publishes an already encoded body (what an outbox stored) under `message_id`.
    pub async fn publish_body(
        &self,
        subject: Subject,
        message_id: &str,
        body: Bytes,
    ) -> Result<Published, PublishError> {
        let result = async {
            let message = PublishMessage::build().payload(body).message_id(message_id);
            self.js
                .send_publish(self.stream.subject(subject), message)
                .await?
                .await
        }
        .await;
        let outcome = match &result {
            Ok(ack) if ack.duplicate => "duplicate",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        if let Some(metrics) = &self.metrics {
            metrics.count_published(subject.as_str(), outcome);
        }
        let ack = result.map_err(|source| PublishError::Publish { subject, source })?;
        tracing::debug!(%subject, message_id, sequence = ack.sequence, duplicate = ack.duplicate, "published");
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
