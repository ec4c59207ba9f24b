//! The event bus on NATS JetStream (SPEC.md section 2).
//!
//! - [`connect`]: configuration from the environment, connecting, and [`ensure_stream`] which
//!   creates the stream or adds the subjects it lacks.
//! - [`Publisher`]: publishes any [`crate::Event`] with its `Nats-Msg-Id` and awaits the ack.
//! - [`Listener`] and [`run_listener`]: a durable pull consumer per (queue group, subject), shared by
//!   every replica; the runner owns acknowledgement. [`supervise`] restarts a listener that
//!   stopped or panicked; [`connection_check`] is the NATS readiness check.
//! - [`BusMetrics`]: counters both services expose on `/metrics`.

mod connect;
mod listener;
mod metrics;
mod publisher;

pub use connect::{
    BusError, NatsConfig, StreamSpec, connect, connection_check, ensure_stream, normalize_url,
};
pub use listener::{
    Backoff, DEFAULT_MAX_DELIVERIES, HandlerError, Listener, ListenerOptions, MessageInfo,
    consumer_name, run_listener, supervise,
};
pub use metrics::{BusMetrics, ConsumerLabels};
pub use publisher::{PublishError, Published, Publisher};
