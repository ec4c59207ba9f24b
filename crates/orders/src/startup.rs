//! Building and running the service: used by `main` and, on port 0 with a database and stream
//! of their own, by the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::bus::{self, Bus, BusError};
use common::config::redact_url;
use common::ops::Ops;
use hyper_util::service::TowerToHyperService;
use mongodb::Database;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listeners::{
    ExpirationCompleteListener, PaymentCreatedListener, TicketCreatedListener,
    TicketUpdatedListener,
};
use crate::metrics::Metrics;
use crate::models::{self, Orders, PublishedEvents, StoreError, Tickets};
use crate::outbox::{Outbox, RelaySchedule};
use crate::routes::{self, AppState};

/// Why the service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid MONGO_URI `{uri}`")]
    MongoUri {
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("MongoDB at `{uri}` does not answer")]
    Mongo {
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("cannot create the MongoDB indexes")]
    Indexes(#[source] StoreError),
    #[error(transparent)]
    Nats(#[from] BusError),
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the outbox relay failed")]
    Relay(#[source] tokio::task::JoinError),
}

/// A built service, bound to its port, ready to [`run`](Application::run).
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    database: Database,
    bus: Bus,
    config: Config,
}

impl Application {
    /// Connects to MongoDB (creating the indexes) and the bus (choosing its transport; on
    /// JetStream, creating the stream), and binds the port.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let uri = redact_url(&config.mongo.uri);
        let mut options = ClientOptions::parse(&config.mongo.uri)
            .await
            .map_err(|source| StartupError::MongoUri {
                uri: uri.clone(),
                source,
            })?;
        options.app_name = Some("orders".into());
        // The driver's defaults wait 30 s for a server and 10 s for a connection; a request has
        // `REQUEST_TIMEOUT_SECONDS` in all, so give up on both well within it (the URI's own
        // serverSelectionTimeoutMS / connectTimeoutMS, when given, win).
        let budget = config.request_timeout;
        options
            .server_selection_timeout
            .get_or_insert(budget.mul_f64(0.6).min(Duration::from_secs(5)));
        options
            .connect_timeout
            .get_or_insert(budget.mul_f64(0.4).min(Duration::from_secs(2)));
        // The driver finds a server that stopped answering and came back only through its
        // heartbeat: at the default 10 s a thawed server stayed unused for over a minute in the
        // outage tests; at 1 s requests are served again within a second or two.
        options.heartbeat_freq.get_or_insert(Duration::from_secs(1));
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        options.command_event_handler = Some(metrics.count_db_commands());
        let client =
            mongodb::Client::with_options(options).map_err(|source| StartupError::MongoUri {
                uri: uri.clone(),
                source,
            })?;
        let database = client.database(&config.mongo.database);
        database
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|source| StartupError::Mongo { uri, source })?;
        models::ensure_indexes(&database)
            .await
            .map_err(StartupError::Indexes)?;

        let bus = Bus::connect(&config.nats, "orders").await?;

        let mut orders = Orders::new(&database);
        if config.fault_hold_after_claim {
            tracing::warn!(
                "fault injection ORDERS_FAULT_HOLD_AFTER_CLAIM is on: claimed order changes are never applied by their claimer (tests only)"
            );
            orders = orders.holding_claimed_changes();
        }
        let publisher = bus.publisher(Some(metrics.bus.clone()));
        let outbox = Arc::new(Outbox::new(
            orders.clone(),
            PublishedEvents::new(&database),
            publisher,
            config.publish_timeout,
        ));
        let ops = Ops::new(registry)
            .with_check("mongodb", {
                let database = database.clone();
                move || {
                    let database = database.clone();
                    async move {
                        database
                            .run_command(doc! { "ping": 1 })
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }
            })
            .with_check("nats", bus.check())
            .with_detail("nats_transport", bus.describe());
        let state = AppState {
            orders,
            tickets: Tickets::new(&database),
            outbox,
            jwt_key: config.jwt_key.clone(),
            metrics,
            ops: Arc::new(ops),
            expiration_window: config.expiration_window,
            budget: routes::Budget {
                body_timeout: config.http.body_timeout,
                body_limit: config.body_limit,
                request_timeout: config.request_timeout,
            },
        };

        let address = SocketAddr::from(([0, 0, 0, 0], config.port));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { address, source })?
            .port();
        Ok(Application {
            listener,
            port,
            state,
            database,
            bus,
            config,
        })
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database holding `orders` and `tickets`.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Serves the API, runs the listeners and the outbox relay until `shutdown` is cancelled;
    /// then stops accepting, lets requests and messages in hand finish, flushes the outbox and
    /// closes the bus.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let Application {
            listener,
            state,
            bus,
            config,
            port,
            ..
        } = self;
        let mut options = config.nats.listener_options();
        options.metrics = Some(state.metrics.bus.clone());
        let mut listeners = JoinSet::new();
        listeners.spawn(bus::supervise(
            bus.clone(),
            Arc::new(TicketCreatedListener {
                tickets: state.tickets.clone(),
            }),
            options.clone(),
            shutdown.clone(),
        ));
        listeners.spawn(bus::supervise(
            bus.clone(),
            Arc::new(TicketUpdatedListener {
                tickets: state.tickets.clone(),
            }),
            options.clone(),
            shutdown.clone(),
        ));
        listeners.spawn(bus::supervise(
            bus.clone(),
            Arc::new(ExpirationCompleteListener {
                orders: state.orders.clone(),
                outbox: state.outbox.clone(),
            }),
            options.clone(),
            shutdown.clone(),
        ));
        listeners.spawn(bus::supervise(
            bus.clone(),
            Arc::new(PaymentCreatedListener {
                orders: state.orders.clone(),
                outbox: state.outbox.clone(),
                metrics: state.metrics.clone(),
            }),
            options.clone(),
            shutdown.clone(),
        ));
        // The relay outlives requests and listeners so that its last pass sees all their events.
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(state.outbox.clone().run(
            RelaySchedule {
                retry: config.relay_retry,
                sweep: config.relay_sweep,
            },
            relay_stop.clone(),
        ));

        tracing::info!(port, "orders service listening");
        let connections = state.ops.connections();
        let service = TowerToHyperService::new(routes::router(state));
        common::server::serve(
            listener,
            service,
            config.http.limits(),
            connections,
            shutdown.clone(),
        )
        .await;
        while listeners.join_next().await.is_some() {}
        relay_stop.cancel();
        let relay = relay.await;
        bus.close().await;
        relay.map_err(StartupError::Relay)?;
        tracing::info!("orders service stopped");
        Ok(())
    }
}
