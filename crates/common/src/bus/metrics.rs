use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of a published event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    pub subject: String,
    /// `ok` (stored), `duplicate` (dropped by JetStream as a re-publish) or `error`.
    pub outcome: String,
}

/// Labels of a message handled by a listener.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub subject: String,
    /// `ack`; `retry` (nak with backoff); `panic` (the handler panicked: nak with backoff);
    /// `unavailable` (a dependency failed, tried again in place); terminated ones: `gave_up` (still not applicable after the delivery limit),
    /// `reject` (by the handler), `undecodable` or `invalid` (refused by `Event::validate`).
    pub outcome: String,
}

/// Labels of a listener restart.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// Counters of the bus, registered once per process and shared by its publisher and listeners.
#[derive(Debug, Clone, Default)]
pub struct BusMetrics {
    pub published: Family<PublishLabels, Counter>,
    pub handled: Family<HandledLabels, Counter>,
    pub restarts: Family<ConsumerLabels, Counter>,
}

impl BusMetrics {
    /// Creates the counters and registers them as `events_published` and `events_handled`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "events_published",
            "Events published, by subject and outcome",
            metrics.published.clone(),
        );
        registry.register(
            "events_handled",
            "Events handled by listeners, by subject and outcome",
            metrics.handled.clone(),
        );
        registry.register(
            "listener_restarts",
            "Listeners started again after an error or a panic, by consumer",
            metrics.restarts.clone(),
        );
        metrics
    }

    pub(crate) fn count_restart(&self, consumer: &str) {
        self.restarts
            .get_or_create(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .inc();
    }

    pub(crate) fn count_published(&self, subject: &str, outcome: &str) {
        self.published
            .get_or_create(&PublishLabels {
                subject: subject.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// How many messages of `subject` ended with `outcome` so far.
    pub fn handled_count(&self, subject: &str, outcome: &str) -> u64 {
        self.handled
            .get_or_create(&HandledLabels {
                subject: subject.to_owned(),
                outcome: outcome.to_owned(),
            })
            .get()
    }

    pub(crate) fn count_handled(&self, subject: &str, outcome: &str) {
        self.handled
            .get_or_create(&HandledLabels {
                subject: subject.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
