//! The service's Prometheus metrics.

use std::time::Duration;

use common::bus::BusMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route template (`/api/orders/{order_id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

/// Labels of a database command.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// The command's name as the driver sends it: `find`, `insert`, `update`, `delete`, …
    pub command: String,
    /// The collection it names (`orders`, `tickets`, …), empty for commands without one.
    pub collection: String,
}

/// Labels of a request's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the service exposes on `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events published and handled (shared with `common`'s bus).
    pub bus: BusMetrics,
    /// Requests by method, route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by method and route.
    pub latency: HistogramFamily,
    /// Payments received for orders already cancelled: money taken for a released ticket.
    pub payment_for_cancelled: Counter,
    /// Commands sent to MongoDB, by name and collection: what each route and listener costs the
    /// database.
    pub db_commands: Family<CommandLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            bus: BusMetrics::register(registry),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            payment_for_cancelled: Counter::default(),
            db_commands: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            metrics.latency.clone(),
        );
        registry.register(
            "payment_for_cancelled_order",
            "payment:created events for orders that were already cancelled",
            metrics.payment_for_cancelled.clone(),
        );
        registry.register(
            "mongodb_commands",
            "Commands sent to MongoDB, by command name and collection",
            metrics.db_commands.clone(),
        );
        metrics
    }

    /// Counts every command the MongoDB driver sends (its monitoring heartbeats are not
    /// commands, and are not counted).
    pub fn count_db_commands(
        &self,
    ) -> mongodb::event::EventHandler<mongodb::event::command::CommandEvent> {
        let commands = self.db_commands.clone();
        mongodb::event::EventHandler::callback(move |event| {
            if let mongodb::event::command::CommandEvent::Started(started) = event {
                // A command document starts with the command, whose value is the collection.
                let collection = started
                    .command
                    .iter()
                    .next()
                    .and_then(|(_, value)| value.as_str())
                    .unwrap_or_default()
                    .to_owned();
                commands
                    .get_or_create(&CommandLabels {
                        command: started.command_name,
                        collection,
                    })
                    .inc();
            }
        })
    }

    /// Records one finished request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }
}
