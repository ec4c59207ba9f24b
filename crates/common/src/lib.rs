//! Shared pieces of the ticketing services (`orders`, `expiration`).
//!
//! - [`subjects`]: the six NATS subjects and their exact strings.
//! - [`events`]: one typed event per subject, serialised exactly as the Node stack does, and the
//!   [`events::Event`] trait tying each type to its subject and its deduplication id.
//! - [`bus`]: NATS JetStream: connecting, making sure the stream exists, the generic
//!   [`bus::Publisher`] and the [`bus::Listener`] trait with its runner ([`bus::run_listener`]).
//! - [`http`] (feature `http`): the contract's error body (docs/contract.md §4.3) and the current-user / require-auth extractors.
//! - [`build_info`]: the package version and git commit a binary was built from (`--version`).
//! - [`config`]: settings declared once with clap: `--help`, `--env-vars`, one-line errors.
//! - [`ops`]: the `/healthz`, `/readyz` and `/metrics` answers, served on a worker's ops port.
//! - [`server`]: serving HTTP/1.1 with a header timeout, a cap on request heads, a connection cap
//!   that sheds the connection idle the longest, and graceful shutdown.
//! - [`telemetry`]: `tracing` set-up (pretty or JSON by `LOG_FORMAT`, level by `RUST_LOG`).
//! - [`shutdown`]: SIGTERM / Ctrl-C to a cancellation token; [`service`]: the `main` both
//!   services share (settings, logging, signals, build, run, exit code).
//! - `testing` (feature `testing`): the local stack's addresses and a private stream per test.

pub mod build_info;
pub mod bus;
pub mod config;
pub mod events;
#[cfg(feature = "http")]
pub mod http;
pub mod ops;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use events::Event;
pub use subjects::Subject;
