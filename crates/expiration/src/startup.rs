//! Building and running the worker: connections, the stream, listeners, the firing loop and the
//! ops port, all stopped by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use common::bus::{self, Bus, BusError, BusMetrics, ListenerOptions};
use common::ops::Ops;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listeners::{OrderCancelledListener, OrderCreatedListener, order_created};
use crate::metrics::Metrics;
use crate::publish::PublishExpiration;
use crate::queue::{Queue, QueueError};
use crate::worker::Worker;

/// Why the worker could not start, or stopped with an error.
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
    #[error("a task of the worker failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A built worker, connected and listening on its ops port, not yet running.
pub struct Application {
    config: Config,
    queue: Queue,
    bus: Bus,
    ops: Arc<Ops>,
    ops_listener: TcpListener,
    metrics: Metrics,
    bus_metrics: BusMetrics,
}

impl Application {
    /// Connects to Redis and the bus (choosing its transport; on JetStream, making sure the
    /// stream exists) and binds the ops port.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let queue = Queue::open(&config.redis.target(), config.redis.queue())
            .await
            .map_err(StartupError::Redis)?;
        tracing::info!(
            cluster = queue.on_cluster(),
            replicas_required = queue.replicas_required(),
            wait_timeout = ?config.redis.wait_timeout,
            "connected to Redis; a schedule counts once that many replicas hold it"
        );
        let bus = Bus::connect(&config.nats, "expiration").await?;

        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let bus_metrics = BusMetrics::register(&mut registry);
        let redis = queue.clone();
        let ops = Ops::new(registry)
            .with_check("redis", move || {
                let redis = redis.clone();
                async move { redis.ready().await }
            })
            .with_check("nats", bus.check())
            .with_detail("nats_transport", bus.describe());
        let ops_listener = TcpListener::bind(("0.0.0.0", config.ops_port))
            .await
            .map_err(|source| StartupError::OpsPort {
                port: config.ops_port,
                source,
            })?;
        Ok(Application {
            config,
            queue,
            bus,
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
    /// flight, closes the bus and returns; an error if one of its tasks failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let Application {
            config,
            queue,
            bus,
            ops,
            ops_listener,
            metrics,
            bus_metrics,
        } = self;
        // The ops server outlives the worker so /healthz answers during the drain.
        let ops_shutdown = CancellationToken::new();
        let ops_task =
            tokio::spawn(ops.serve(ops_listener, config.ops_http.limits(), ops_shutdown.clone()));
        let wakes = tokio::spawn(queue.clone().watch_wakes(shutdown.clone()));

        let mut options = config.nats.listener_options();
        options.metrics = Some(bus_metrics.clone());
        let created = tokio::spawn(bus::supervise(
            bus.clone(),
            Arc::new(OrderCreatedListener::new(
                queue.clone(),
                metrics.clone(),
                config.worker.max_ahead,
            )),
            ListenerOptions {
                max_in_flight: order_created::IN_FLIGHT,
                ..options.clone()
            },
            shutdown.clone(),
        ));
        let cancelled = tokio::spawn(bus::supervise(
            bus.clone(),
            Arc::new(OrderCancelledListener::new(queue.clone(), metrics.clone())),
            options,
            shutdown.clone(),
        ));

        let stream = config.nats.stream();
        let publisher = bus.publisher(Some(bus_metrics));
        let handler = PublishExpiration::new(publisher, config.worker.publish_timeout);
        let worker = Worker::new(queue, handler, config.worker.options(), metrics);
        tracing::info!(queue = %config.redis.queue().tag(), stream = %stream.name, transport = %bus.transport(), "expiration worker running");
        // A worker that fails takes the listeners down with it, so that the process exits.
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        let worker = worker.await;
        shutdown.cancel();

        let (created, cancelled, wakes) = tokio::join!(created, cancelled, wakes);
        bus.close().await;
        ops_shutdown.cancel();
        let ops = ops_task.await;
        for result in [worker, created, cancelled, wakes, ops] {
            result.map_err(StartupError::Task)?;
        }
        tracing::info!("expiration worker stopped");
        Ok(())
    }
}
