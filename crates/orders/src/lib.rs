//! The orders service: buyers reserve tickets, with no double booking and no lost events.
//!
//! - [`config`]: the settings, read from the environment once and validated.
//! - [`startup`]: [`startup::Application`] connects MongoDB and NATS, binds the port, and runs
//!   the API, the listeners and the outbox relay until shutdown.
//! - [`routes`]: the four routes of docs/contract.md §4 (one file each) and the ops endpoints.
//! - [`models`]: the `orders` and `tickets` documents, their conditional updates and indexes.
//! - [`listeners`]: `ticket:created`, `ticket:updated`, `expiration:complete`, `payment:created`.
//! - [`outbox`]: publishing the events stored with each change, and the relay that retries them.
//! - [`metrics`]: the Prometheus metrics served on `/metrics`.

pub mod config;
pub mod listeners;
pub mod metrics;
pub mod models;
pub mod outbox;
pub mod routes;
pub mod startup;

pub use config::Config;
pub use startup::Application;
