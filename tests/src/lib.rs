//! The end-to-end harness: the `orders` and `expiration` binaries as child processes against the
//! local stack, with the rest of the ticketing stack (tickets, payments, auth, a browser) played
//! over NATS and HTTP the way the Node services do it.
//!
//! - [`process`]: a service process (start, wait until ready, SIGKILL, SIGTERM, restart) and a
//!   broker of a test's own (NATS with JetStream, NATS Streaming in memory or on files) that can
//!   be restarted.
//! - [`http`]: a small HTTP/1.1 client, and [`orders_api`]: the orders API as the web client calls it.
//! - [`peers`]: what the tickets, payments and auth services do: `ticket:created`,
//!   `payment:created`, session cookies.
//! - [`scenario`]: a private world (stream, database, Redis key prefix) and the environment both
//!   services need to live in it.
//! - [`stats`]: expiry latency percentiles.
//! - [`walk`]: the demo's walk (an order through its expiry, a second buyer refused, a paid
//!   order kept), also taken on a cluster by `cluster-check`.

pub mod http;
pub mod ids;
pub mod orders_api;
pub mod peers;
pub mod process;
pub mod scenario;
pub mod stats;
pub mod walk;
