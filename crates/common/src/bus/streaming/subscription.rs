//! Durable queue subscriptions, as the course's `Listener` makes them: durable name = queue
//! group, deliver all available, manual ack, the ack wait given.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;

use super::{Connection, REQUEST_TIMEOUT, Session, StreamingError, proto, request_decoded};

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    /// The channel (the subject, with the test prefix if any).
    pub channel: String,
    /// The queue group, also the durable name: every replica of a service shares it.
    pub queue_group: String,
    /// How long the server waits for an ack before sending the message again (whole seconds).
    pub ack_wait: Duration,
    /// Most unacknowledged messages the server hands this member at once.
    pub max_in_flight: usize,
}

/// A subscription of the current session. It ends ([`Subscription::next`] gives `None`) when
/// that session is lost; subscribing again on the next session resumes the durable group.
pub struct Subscription {
    connection: Connection,
    session: Arc<Session>,
    messages: async_nats::Subscriber,
    acker: Arc<Acker>,
    queue_group: String,
    /// [`Subscription::close`] was called.
    closed: bool,
}

/// Where a subscription's acks go (changes with every subscribe).
struct Acker {
    client: async_nats::Client,
    ack_inbox: String,
    channel: String,
}

/// One delivered message.
pub struct Delivery {
    /// The message's sequence in its channel.
    pub sequence: u64,
    pub data: Bytes,
    /// Sent before and not acknowledged in time.
    pub redelivered: bool,
    /// How many times it was sent again (0 the first time; older servers leave it 0).
    pub redelivery_count: u32,
    /// When the server stored it, in nanoseconds since the Unix epoch.
    pub timestamp: i64,
    acker: Arc<Acker>,
}

impl Delivery {
    /// How many times this message has been delivered, this time included.
    pub fn delivered(&self) -> u64 {
        match (self.redelivered, self.redelivery_count) {
            (false, _) => 1,
            (true, count) => u64::from(count).max(1) + 1,
        }
    }

    /// Acknowledges it: the server will not send it again. Sent without a confirmation (the
    /// protocol has none); a lost ack means a redelivery after the ack wait.
    pub async fn ack(&self) -> Result<(), async_nats::PublishError> {
        self.ack_handle().ack().await
    }

    /// What acks this delivery later, without keeping its body.
    pub fn ack_handle(&self) -> AckHandle {
        AckHandle {
            sequence: self.sequence,
            acker: self.acker.clone(),
        }
    }
}

/// Acks one delivery of a subscription: kept, instead of the whole [`Delivery`], for a message
/// left unacked while it waits for the server to send it again.
#[derive(Clone)]
pub struct AckHandle {
    /// The message's sequence in its channel.
    pub sequence: u64,
    acker: Arc<Acker>,
}

impl AckHandle {
    /// As [`Delivery::ack`]. An ack reaching the server after it closed the subscription (a
    /// lost session) is ignored there.
    pub async fn ack(&self) -> Result<(), async_nats::PublishError> {
        let ack = proto::Ack {
            subject: self.acker.channel.clone(),
            sequence: self.sequence,
        };
        self.acker
            .client
            .publish(self.acker.ack_inbox.clone(), ack.encode_to_vec().into())
            .await
    }
}

impl Connection {
    /// Joins (or creates, starting from the channel's first message) the durable queue group
    /// `spec.queue_group` on `spec.channel`, once a session is open.
    pub async fn subscribe(&self, spec: &SubscriptionSpec) -> Result<Subscription, StreamingError> {
        let session = self.wait_session().await.ok_or(StreamingError::Closed)?;
        let client = self.client();
        let inbox = client.new_inbox();
        // Subscribed before asking, so that nothing the server sends at once is missed.
        let messages = client
            .subscribe(inbox.clone())
            .await
            .map_err(StreamingError::Subscribe)?;
        let request = proto::SubscriptionRequest {
            client_id: self.client_id().to_owned(),
            subject: spec.channel.clone(),
            q_group: spec.queue_group.clone(),
            inbox,
            max_in_flight: i32::try_from(spec.max_in_flight.max(1)).unwrap_or(i32::MAX),
            // Rounded up: the handler's time limit is a share of the unrounded ack wait, and a
            // shorter wait on the server would redeliver a message still in hand.
            ack_wait_in_secs: i32::try_from(spec.ack_wait.as_secs_f64().ceil().max(1.0) as u64)
                .unwrap_or(i32::MAX),
            durable_name: spec.queue_group.clone(),
            start_position: proto::StartPosition::First as i32,
            start_sequence: 0,
            start_time_delta: 0,
        };
        let answer = request_decoded::<proto::SubscriptionResponse>(
            client,
            &session.subjects.sub_requests,
            request.encode_to_vec(),
            REQUEST_TIMEOUT,
        )
        .await?;
        if !answer.error.is_empty() {
            return Err(session.refused(answer.error));
        }
        let subscription = Subscription {
            connection: self.clone(),
            session,
            messages,
            acker: Arc::new(Acker {
                client: client.clone(),
                ack_inbox: answer.ack_inbox,
                channel: spec.channel.clone(),
            }),
            queue_group: spec.queue_group.clone(),
            closed: false,
        };
        // The server files a subscription under our client id, whichever session holds it
        // now. If the session we asked on was found lost meanwhile, a new one may hold the id
        // already and this member would live on there with nobody reading its inbox: the
        // messages the server hands it would wait for it forever. Leave at once instead.
        if subscription.session.lost.is_cancelled() {
            subscription.close().await;
            return Err(StreamingError::SessionLost);
        }
        Ok(subscription)
    }
}

impl Subscription {
    /// The next message; `None` once the session is lost (subscribe again on the next one).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let message = tokio::select! {
                _ = self.session.lost.cancelled() => return None,
                message = self.messages.next() => message?,
            };
            match proto::MsgProto::decode(message.payload) {
                Ok(message) => {
                    return Some(Delivery {
                        sequence: message.sequence,
                        data: message.data,
                        redelivered: message.redelivered,
                        redelivery_count: message.redelivery_count,
                        timestamp: message.timestamp,
                        acker: self.acker.clone(),
                    });
                }
                // Without a sequence it cannot even be acked; the server sends it again.
                Err(e) => {
                    tracing::warn!(channel = %self.acker.channel, error = %e, "undecodable NATS Streaming message frame; ignored")
                }
            }
        }
    }

    /// Leaves the group without ending it: the durable group and its position stay on the
    /// server for the next member (never an unsubscribe, which would delete the group when
    /// its last member leaves).
    pub async fn close(mut self) {
        self.closed = true;
        close_on_server(
            self.connection.clone(),
            self.session.clone(),
            self.acker.clone(),
            self.queue_group.clone(),
        )
        .await;
    }
}

/// A subscription dropped without [`Subscription::close`] (its task ended on an error or was
/// aborted) still leaves the group on the server, so that no message waits for a member whose
/// inbox nobody reads.
impl Drop for Subscription {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close_on_server(
                self.connection.clone(),
                self.session.clone(),
                self.acker.clone(),
                self.queue_group.clone(),
            ));
        }
    }
}

/// Asks the server to close the subscription whose acks go to `acker` (a close: the durable
/// group stays). The request names our client id, so it reaches the subscription whichever of
/// our sessions the server filed it under; if no session of ours holds the id any more, the
/// server forgot the subscription already and refuses, which is fine.
async fn close_on_server(
    connection: Connection,
    session: Arc<Session>,
    acker: Arc<Acker>,
    queue_group: String,
) {
    {
        let request = proto::UnsubscribeRequest {
            client_id: connection.client_id().to_owned(),
            subject: acker.channel.clone(),
            inbox: acker.ack_inbox.clone(),
            durable_name: queue_group,
        };
        let answer = request_decoded::<proto::SubscriptionResponse>(
            connection.client(),
            &session.subjects.sub_close_requests,
            request.encode_to_vec(),
            Duration::from_secs(2),
        )
        .await;
        match answer {
            Ok(answer) if answer.error.is_empty() => {}
            Ok(answer) => {
                tracing::debug!(channel = %acker.channel, error = %answer.error, "closing the subscription")
            }
            Err(e) => {
                tracing::debug!(channel = %acker.channel, error = %crate::telemetry::ErrorChain(&e), "closing the subscription")
            }
        }
    }
}
