//! The worker's Prometheus metrics, served on `/metrics` next to the bus counters.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Counters and gauges of the expiration queue as this process sees it.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Jobs added or moved by `order:created`.
    pub scheduled: Counter,
    /// Jobs whose `expiration:complete` was acknowledged by JetStream.
    pub fired: Counter,
    /// Pending jobs removed by `order:cancelled`.
    pub cancelled: Counter,
    /// Failed fires rescheduled with backoff.
    pub retried: Counter,
    /// Fires that failed because NATS was unavailable, postponed without using an attempt.
    pub postponed: Counter,
    /// Jobs moved to the dead-letter set after their last attempt.
    pub dead_lettered: Counter,
    /// Fired jobs that were moved, cancelled or taken over before completion.
    pub lease_lost: Counter,
    /// Claim calls made to Redis (each one script call, whatever it found).
    pub claims: Counter,
    /// Jobs waiting or leased, as of this process' last claim.
    pub pending: Gauge,
    /// Fire time minus due time, in seconds.
    pub lateness: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            scheduled: Counter::default(),
            fired: Counter::default(),
            cancelled: Counter::default(),
            retried: Counter::default(),
            postponed: Counter::default(),
            dead_lettered: Counter::default(),
            lease_lost: Counter::default(),
            claims: Counter::default(),
            pending: Gauge::default(),
            // 0.5 ms to about 70 s: precision matters at the low end, outages show at the top.
            lateness: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `jobs_*` and `job_lateness_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "jobs_scheduled",
            "Expiration jobs added or moved",
            metrics.scheduled.clone(),
        );
        registry.register(
            "jobs_fired",
            "Expiration jobs whose expiration:complete was acknowledged",
            metrics.fired.clone(),
        );
        registry.register(
            "jobs_cancelled",
            "Pending expiration jobs removed by order:cancelled",
            metrics.cancelled.clone(),
        );
        registry.register(
            "jobs_retried",
            "Failed fires rescheduled with backoff",
            metrics.retried.clone(),
        );
        registry.register(
            "jobs_postponed",
            "Fires that failed while NATS was unavailable, postponed without using an attempt",
            metrics.postponed.clone(),
        );
        registry.register(
            "jobs_dead_lettered",
            "Jobs moved to the dead-letter set after their last attempt",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "jobs_lease_lost",
            "Fired jobs moved, cancelled or taken over before their completion",
            metrics.lease_lost.clone(),
        );
        registry.register(
            "jobs_claim_calls",
            "Claim calls made to Redis, whatever they found",
            metrics.claims.clone(),
        );
        registry.register(
            "jobs_pending",
            "Jobs waiting or leased at this process' last claim",
            metrics.pending.clone(),
        );
        registry.register(
            "job_lateness_seconds",
            "Fire time minus due time",
            metrics.lateness.clone(),
        );
        metrics
    }
}
