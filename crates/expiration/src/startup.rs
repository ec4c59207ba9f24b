//! Building and running the worker: connections, the stream, listeners, the firing loop and the
//! ops port, all stopped by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::bus::{
    self, BusError, BusMetrics, Listener, ListenerOptions, Publisher, StreamSpec, run_listener,
};
use common::ops::Ops;
use common::telemetry::ErrorChain;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listeners::{OrderCancelledListener, OrderCreatedListener};
use crate::metrics::Metrics;
use crate::publish::PublishExpiration;
use crate::queue::{Queue, QueueError};
use crate::worker::Worker;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach Redis")]
    Redis(#[source] QueueError),
    #[error(transparent)]
    Nats(#[from] BusError),
    #[error("cannot listen on the ops port {port}")]
    OpsPort {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// A built worker, connected and listening on its ops port, not yet running.
pub struct Application {
    config: Config,
    queue: Queue,
    client: async_nats::Client,
    js: jetstream::Context,
    ops: Arc<Ops>,
    ops_listener: TcpListener,
    metrics: Metrics,
    bus_metrics: BusMetrics,
}

impl Application {
    /// Connects to Redis and NATS, makes sure the stream exists and binds the ops port.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let queue = Queue::connect(&config.redis.url, config.redis.queue.clone())
            .await
            .map_err(StartupError::Redis)?;
        let client = bus::connect(&config.nats).await?;
        let js = jetstream::new(client.clone());
        bus::ensure_stream(&js, &config.nats.stream).await?;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let bus_metrics = BusMetrics::register(&mut registry);
        let redis = queue.clone();
        let nats = client.clone();
        let ops = Ops::new(registry)
            .with_check("redis", move || {
                let redis = redis.clone();
                async move { redis.ping().await.map_err(|e| ErrorChain(&e).to_string()) }
            })
            .with_check("nats", move || {
                let state = nats.connection_state();
                async move {
                    match state {
                        async_nats::connection::State::Connected => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            });
        let ops_listener = TcpListener::bind(("0.0.0.0", config.ops_port))
            .await
            .map_err(|source| StartupError::OpsPort {
                port: config.ops_port,
                source,
            })?;
        Ok(Application {
            config,
            queue,
            client,
            js,
            ops: Arc::new(ops),
            ops_listener,
            metrics,
            bus_metrics,
        })
    }

    /// The address of `/healthz`, `/readyz` and `/metrics` (the real port when 0 was asked).
    pub fn ops_address(&self) -> SocketAddr {
        self.ops_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The queue this worker fires from.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Runs until `shutdown`: then stops claiming and listening, finishes the publishes in
    /// flight, drains NATS and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let Application {
            config,
            queue,
            client,
            js,
            ops,
            ops_listener,
            metrics,
            bus_metrics,
        } = self;
        // The ops server outlives the worker so /healthz answers during the drain.
        let ops_shutdown = CancellationToken::new();
        let ops_task =
            tokio::spawn(ops.serve(ops_listener, config.ops_limits, ops_shutdown.clone()));
        let wakes = tokio::spawn(queue.clone().watch_wakes(shutdown.clone()));

        let mut options = config.nats.listener_options();
        options.metrics = Some(bus_metrics.clone());
        let created = tokio::spawn(supervise(
            js.clone(),
            Arc::new(OrderCreatedListener::new(queue.clone(), metrics.clone())),
            options.clone(),
            shutdown.clone(),
        ));
        let cancelled = tokio::spawn(supervise(
            js.clone(),
            Arc::new(OrderCancelledListener::new(queue.clone(), metrics.clone())),
            options,
            shutdown.clone(),
        ));

        let publisher = Publisher::new(js, config.nats.stream.clone(), Some(bus_metrics));
        let handler = PublishExpiration::new(publisher, config.publish_timeout);
        let worker = Worker::new(queue, handler, config.worker.clone(), metrics);
        tracing::info!(queue = %config_queue(&config.nats.stream, &config), "expiration worker running");
        worker.run(shutdown.clone()).await;

        let _ = tokio::join!(created, cancelled, wakes);
        if let Err(e) = client.drain().await {
            tracing::warn!(error = %ErrorChain(&e), "cannot drain NATS");
        }
        ops_shutdown.cancel();
        let _ = ops_task.await;
        tracing::info!("expiration worker stopped");
    }
}

fn config_queue(stream: &StreamSpec, config: &Config) -> String {
    format!("{} on stream {}", config.redis.queue.tag(), stream.name)
}

/// Runs a listener until `shutdown`, restarting it when it stops on an error (NATS away long
/// enough for the consumer lookup to fail): the worker keeps firing meanwhile.
async fn supervise<L: Listener>(
    js: jetstream::Context,
    listener: Arc<L>,
    options: ListenerOptions,
    shutdown: CancellationToken,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        match run_listener(&js, listener.clone(), &options, shutdown.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), ?pause, "listener stopped; restarting it");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
