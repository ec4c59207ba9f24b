//! The expiration worker: turns `order:created` into `expiration:complete` at `expiresAt`.
//!
//! - [`config`]: the typed configuration read from the environment, with its table of variables.
//! - [`queue`]: the Redis delayed-job queue (keyed jobs, batch claim with leases, retry, dead
//!   letter, cancel) as Lua scripts; independent of NATS.
//! - [`worker`]: the firing loop that sleeps until the earliest due job, and the [`worker::JobHandler`]
//!   trait; [`publish`]: the handler publishing `expiration:complete`.
//! - [`listeners`]: `order:created` schedules, `order:cancelled` cancels.
//! - [`metrics`]: the `jobs_*` counters and the lateness histogram.
//! - [`startup`]: [`startup::Application`], the whole worker with its ops port, stopped by a token.
//! - [`inspect`]: the `expiration inspect` report.

pub mod config;
pub mod inspect;
pub mod listeners;
pub mod metrics;
pub mod publish;
pub mod queue;
pub mod startup;
pub mod worker;
