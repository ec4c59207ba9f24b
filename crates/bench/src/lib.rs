//! Benchmark commands that print their figures (one JSON line per run), kept out of the service
//! crates so that the services carry neither a load client nor `/proc` parsing:
//!
//! - `orders-bench`: the orders API under load against a running service.
//! - `expiration-bench`: the expiration queue alone, or the whole worker, in this process.
//!
//! The figures and the commands that produced them are in `docs/benchmarks.md`.
