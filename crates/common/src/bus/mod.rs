//! The event bus: NATS JetStream, or NATS Streaming for the course's unchanged cluster
//! (docs/contract.md §2). Services hold a [`Bus`] and never see which transport runs.
//!
//! - [`Bus`] (in `transport`): chooses the transport (`NATS_TRANSPORT`), hands out publishers,
//!   runs listeners, answers readiness and closes.
//! - [`streaming`]: the NATS Streaming client (sessions, publishes, durable queue subscriptions).
//! - [`connect`]: configuration from the environment, connecting (with the [`Credentials`]
//!   `NATS_URL` carries, for both transports), and [`ensure_stream`] which creates the stream or
//!   adds the subjects it lacks.
//! - [`Publisher`]: publishes any [`crate::Event`] and awaits the server's ack (on JetStream with
//!   its `Nats-Msg-Id`, so that a re-publish is dropped).
//! - [`Listener`]: a handler of one event for one queue group; [`supervise`] runs it on the bus
//!   (JetStream: a durable pull consumer per (queue group, subject), [`run_listener`]; NATS
//!   Streaming: a durable queue subscription), shared by every replica, and restarts it if it
//!   stops or panics. The runner owns acknowledgement.
//! - [`BusMetrics`]: counters both services expose on `/metrics`.

mod connect;
mod listener;
mod metrics;
mod publisher;
pub mod streaming;
mod transport;

pub use connect::{
    BusError, Credentials, NatsConfig, StreamSetup, StreamSpec, connect, connection_check,
    ensure_stream, normalize_url, servers, with_credentials,
};
pub use listener::{
    Backoff, DEFAULT_MAX_DELIVERIES, DEFAULT_MAX_WAITING, HandlerError, Listener, ListenerOptions,
    MessageInfo, consumer_name, run_listener, supervise,
};
pub use metrics::{BusMetrics, ConsumerLabels};
pub use publisher::{PublishError, Published, Publisher};
pub use transport::{Bus, Transport, TransportChoice};
