//! [`Bus`]: the one handle a service holds on its bus, whichever transport runs: JetStream, or
//! NATS Streaming for the course's unchanged cluster (docs/contract.md §2.1, §2.3). `NATS_TRANSPORT`
//! chooses; `auto` asks `_STAN.discover.<NATS_CLUSTER_ID>` and takes NATS Streaming if a server
//! answers, JetStream otherwise.

use std::sync::Arc;

use async_nats::jetstream;
use futures::future::BoxFuture;

use super::streaming::{Connection, StreamingError};
use super::{
    BusError, BusMetrics, Listener, ListenerOptions, NatsConfig, Publisher, StreamSpec, connect,
    connection_check, ensure_stream, run_listener,
};
use crate::bus::listener::run_streaming_listener;
use tokio_util::sync::CancellationToken;

/// `NATS_TRANSPORT`: which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// NATS Streaming if a server answers for `NATS_CLUSTER_ID`, else JetStream.
    Auto,
    /// NATS Streaming (the course's broker).
    Streaming,
    /// NATS JetStream.
    Jetstream,
}

/// The transport a [`Bus`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    JetStream,
    Streaming,
}

impl Transport {
    /// `jetstream` or `streaming`, as `NATS_TRANSPORT` spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::JetStream => "jetstream",
            Transport::Streaming => "streaming",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service's connection to its bus: publishes, runs listeners, answers readiness, closes.
/// Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    kind: Kind,
    stream: StreamSpec,
    /// Why this transport was chosen, for the log and `/readyz`.
    reason: Arc<str>,
}

#[derive(Clone)]
enum Kind {
    JetStream {
        client: async_nats::Client,
        js: Box<jetstream::Context>,
    },
    Streaming(Connection),
}

impl Bus {
    /// Connects as `service` and chooses the transport by `NATS_TRANSPORT`: on JetStream the
    /// stream is created or completed ([`ensure_stream`]); on NATS Streaming a session is opened
    /// as `NATS_CLIENT_ID` (the service's name and a random suffix when unset, so that
    /// replicas never share one).
    pub async fn connect(config: &NatsConfig, service: &str) -> Result<Bus, BusError> {
        let client = connect(config, service).await?;
        let stream = config.stream();
        let cluster_id = config.cluster_id.as_str();
        let bus = match config.transport {
            TransportChoice::Jetstream => {
                on_jetstream(client, stream, "NATS_TRANSPORT=jetstream").await?
            }
            TransportChoice::Streaming => {
                let connection = open_streaming(client, config, service).await?;
                Bus::streaming(connection, stream).chosen("NATS_TRANSPORT=streaming")
            }
            TransportChoice::Auto => match open_streaming(client.clone(), config, service).await {
                Ok(connection) => Bus::streaming(connection, stream).chosen(&format!(
                        "NATS_TRANSPORT=auto and a NATS Streaming server answers _STAN.discover.{cluster_id}"
                    )),
                Err(BusError::Streaming(StreamingError::NoServer { .. })) => {
                    let reason = format!(
                        "NATS_TRANSPORT=auto and no NATS Streaming server answers _STAN.discover.{cluster_id}"
                    );
                    on_jetstream(client, stream, &reason)
                        .await
                        .map_err(|source| BusError::NoTransport {
                            cluster_id: cluster_id.to_owned(),
                            source: Box::new(source),
                        })?
                }
                Err(e) => return Err(e),
            },
        };
        tracing::info!(transport = %bus.transport(), reason = %bus.reason, "NATS transport chosen");
        Ok(bus)
    }

    /// JetStream through `js`, on `stream` (which must exist: see [`ensure_stream`]).
    pub fn jetstream(js: jetstream::Context, stream: StreamSpec) -> Bus {
        Bus {
            kind: Kind::JetStream {
                client: js.client(),
                js: Box::new(js),
            },
            stream,
            reason: "given".into(),
        }
    }

    /// NATS Streaming over an open `connection`; `stream` gives the channels' prefix.
    pub fn streaming(connection: Connection, stream: StreamSpec) -> Bus {
        Bus {
            kind: Kind::Streaming(connection),
            stream,
            reason: "given".into(),
        }
    }

    /// Records why this transport was chosen.
    fn chosen(mut self, reason: &str) -> Bus {
        self.reason = reason.into();
        self
    }

    /// The transport running.
    pub fn transport(&self) -> Transport {
        match self.kind {
            Kind::JetStream { .. } => Transport::JetStream,
            Kind::Streaming(_) => Transport::Streaming,
        }
    }

    /// The transport and why it was chosen, e.g. `streaming (NATS_TRANSPORT=auto and …)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.transport(), self.reason)
    }

    /// The core NATS client underneath.
    pub fn client(&self) -> &async_nats::Client {
        match &self.kind {
            Kind::JetStream { client, .. } => client,
            Kind::Streaming(connection) => connection.client(),
        }
    }

    /// The stream (JetStream) or the channels' names (NATS Streaming).
    pub fn stream(&self) -> &StreamSpec {
        &self.stream
    }

    /// A publisher on this bus, counting into `metrics` when given.
    pub fn publisher(&self, metrics: Option<BusMetrics>) -> Publisher {
        match &self.kind {
            Kind::JetStream { js, .. } => {
                Publisher::new((**js).clone(), self.stream.clone(), metrics)
            }
            Kind::Streaming(connection) => {
                Publisher::streaming(connection.clone(), self.stream.clone(), metrics)
            }
        }
    }

    /// Runs `listener` until `shutdown` (see [`super::supervise`], which restarts it on errors).
    pub async fn run_listener<L: Listener>(
        &self,
        listener: Arc<L>,
        options: &ListenerOptions,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        match &self.kind {
            Kind::JetStream { js, .. } => run_listener(js, listener, options, shutdown).await,
            Kind::Streaming(connection) => {
                run_streaming_listener(connection, listener, options, shutdown).await
            }
        }
    }

    /// The `/readyz` check: JetStream answers a request; or a NATS Streaming session is open
    /// and answers a ping.
    pub fn check(
        &self,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + use<> {
        let check: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync> =
            match &self.kind {
                Kind::JetStream { client, .. } => Box::new(connection_check(client.clone())),
                Kind::Streaming(connection) => {
                    let connection = connection.clone();
                    Box::new(move || {
                        let connection = connection.clone();
                        Box::pin(async move { connection.check().await })
                    })
                }
            };
        move || check()
    }

    /// Ends the session (NATS Streaming; durable groups stay) and drains the connection, so
    /// that acks and publishes in the client's buffer reach the server.
    pub async fn close(&self) {
        if let Kind::Streaming(connection) = &self.kind {
            connection.close().await;
        }
        if let Err(e) = self.client().drain().await {
            tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "draining NATS failed");
        }
    }
}

/// JetStream on `client`, with `stream` created or completed.
async fn on_jetstream(
    client: async_nats::Client,
    stream: StreamSpec,
    reason: &str,
) -> Result<Bus, BusError> {
    let js = jetstream::new(client);
    ensure_stream(&js, &stream).await?;
    Ok(Bus::jetstream(js, stream).chosen(reason))
}

/// Opens a NATS Streaming session for `service` on `client`.
async fn open_streaming(
    client: async_nats::Client,
    config: &NatsConfig,
    service: &str,
) -> Result<Connection, BusError> {
    let client_id = match config.client_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("{service}-{}", nuid::next()),
    };
    Ok(Connection::open(client, &config.cluster_id, &client_id).await?)
}
