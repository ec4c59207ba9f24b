//! NATS Streaming channels of a test's own: the analogue of [`super::TestStream`] on the
//! course's broker, so that tests share one server (the local stack's, `STAN_URL`) without
//! seeing each other's events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{EventLog, Logged, unique_name};
use crate::bus::streaming::{Connection, SubscriptionSpec};
use crate::bus::{Bus, Publisher, StreamSpec};
use crate::{Event, Subject};

/// `STAN_URL`, or the local stack's default.
pub fn stan_url() -> String {
    std::env::var("STAN_URL").unwrap_or_else(|_| "nats://127.0.0.1:14223".into())
}

/// `STAN_CLUSTER_ID`, or the course's `ticketing`.
pub fn stan_cluster_id() -> String {
    std::env::var("STAN_CLUSTER_ID").unwrap_or_else(|_| "ticketing".into())
}

/// `STAN_MONITOR_URL`'s port, or the local stack's default.
fn stan_monitor_port() -> u16 {
    std::env::var("STAN_MONITOR_URL")
        .ok()
        .and_then(|url| url.rsplit(':').next()?.trim_end_matches('/').parse().ok())
        .unwrap_or(18223)
}

/// The six channels under a unique prefix on a NATS Streaming server, and a session on it.
pub struct TestChannels {
    pub connection: Connection,
    pub spec: StreamSpec,
    /// The server.
    pub url: String,
    pub cluster_id: String,
}

impl TestChannels {
    /// Channels on the local stack's NATS Streaming server (`STAN_URL`).
    pub async fn new() -> Self {
        Self::on(&stan_url(), &stan_cluster_id()).await
    }

    /// Channels on the server at `url` (a test's own) serving `cluster_id`.
    pub async fn on(url: &str, cluster_id: &str) -> Self {
        let name = unique_name("test");
        let spec = StreamSpec {
            subject_prefix: format!("{name}."),
            name,
            replicas: 1,
        };
        let connection = connect(url, cluster_id, &unique_name("test-client"))
            .await
            .unwrap_or_else(|e| {
                panic!("NATS Streaming at {url} ({cluster_id}) does not answer ({e}); run scripts/stack up")
            });
        TestChannels {
            connection,
            spec,
            url: url.to_owned(),
            cluster_id: cluster_id.to_owned(),
        }
    }

    /// The six channels themselves, unprefixed as in production, on the server at `url` serving
    /// `cluster_id`: those of services deployed elsewhere (a cluster's), to watch and feed them.
    pub async fn existing(url: &str, cluster_id: &str) -> Self {
        let mut channels = Self::on(url, cluster_id).await;
        channels.spec.subject_prefix = String::new();
        channels
    }

    /// The bus a service would hold on these channels.
    pub fn bus(&self) -> Bus {
        Bus::streaming(self.connection.clone(), self.spec.clone())
    }

    /// The environment a service process needs to use these channels.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.url.clone()),
            ("NATS_CLUSTER_ID", self.cluster_id.clone()),
            ("NATS_SUBJECT_PREFIX", self.spec.subject_prefix.clone()),
            ("NATS_TRANSPORT", "streaming".into()),
        ]
    }

    /// A publisher to these channels.
    pub fn publisher(&self) -> Publisher {
        Publisher::streaming(self.connection.clone(), self.spec.clone(), None)
    }

    /// Publishes `event` and waits for the ack.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.publisher()
            .publish(event)
            .await
            .expect("publishing a test event");
    }

    /// Publishes raw bytes on `subject`'s channel (a body no service would write).
    pub async fn publish_raw(&self, subject: Subject, body: &[u8]) {
        self.connection
            .publish(&self.spec.subject(subject), body.to_vec().into())
            .await
            .expect("publishing a test body");
    }

    /// Messages sent to the members of durable queue group `group` on `subject`'s channel and
    /// not acked yet, as the server's monitoring endpoint (`STAN_MONITOR_URL`) reports them.
    pub async fn pending(&self, subject: Subject, group: &str) -> u64 {
        self.subscriptions(subject, group)
            .await
            .iter()
            .filter_map(|sub| sub["pending_count"].as_u64())
            .sum()
    }

    /// The members of durable queue group `group` on `subject`'s channel, as the server's
    /// monitoring endpoint (`STAN_MONITOR_URL`) describes them (`is_durable`, `max_inflight`,
    /// `ack_wait` in seconds, `pending_count`, ...).
    pub async fn subscriptions(&self, subject: Subject, group: &str) -> Vec<serde_json::Value> {
        let path = format!(
            "/streaming/channelsz?channel={}&subs=1",
            self.spec.subject(subject)
        );
        let answer = super::get(stan_monitor_port(), &path)
            .await
            .expect("the NATS Streaming monitoring endpoint answers (STAN_MONITOR_URL)");
        let queue = format!("{group}:{group}");
        answer.json()["subscriptions"]
            .as_array()
            .map(|subscriptions| {
                subscriptions
                    .iter()
                    .filter(|sub| sub["queue_name"] == queue.as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts logging every message of the six channels, from their first, with the server's
    /// store time (a durable group of the log's own per channel).
    pub async fn log(&self) -> EventLog {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let group = unique_name("log");
        let mut subscriptions = Vec::new();
        for subject in Subject::ALL {
            let spec = SubscriptionSpec {
                channel: self.spec.subject(subject),
                queue_group: group.clone(),
                ack_wait: Duration::from_secs(30),
                max_in_flight: 1024,
            };
            let subscription = self
                .connection
                .subscribe(&spec)
                .await
                .expect("subscribing the event log");
            subscriptions.push((subject, subscription));
        }
        let sink = entries.clone();
        let task = tokio::spawn(async move {
            let merged = futures::stream::select_all(subscriptions.into_iter().map(
                |(subject, subscription)| {
                    Box::pin(futures::stream::unfold(
                        subscription,
                        move |mut subscription| async move {
                            let delivery = subscription.next().await?;
                            Some(((subject, delivery), subscription))
                        },
                    ))
                },
            ));
            futures::pin_mut!(merged);
            use futures::StreamExt;
            while let Some((subject, delivery)) = merged.next().await {
                let _ = delivery.ack().await;
                if delivery.redelivered {
                    continue;
                }
                let stored_at = chrono::DateTime::from_timestamp_nanos(delivery.timestamp);
                sink.lock().expect("event log lock").push(Logged {
                    subject,
                    body: String::from_utf8_lossy(&delivery.data).into_owned(),
                    stored_at,
                    sequence: delivery.sequence,
                });
            }
        });
        EventLog {
            entries,
            task,
            stream: None,
        }
    }
}

/// A session as `client_id` on the NATS Streaming server at `url`, with a core connection that
/// reconnects at once after a test restarts its own server.
pub async fn connect(
    url: &str,
    cluster_id: &str,
    client_id: &str,
) -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await?;
    Ok(Connection::open(client, cluster_id, client_id).await?)
}
