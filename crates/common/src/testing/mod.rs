//! Test support, one module per concern; only ever enabled as a dev-dependency feature.
//!
//! - here: where the local stack (`scripts/stack up`) listens, unique names, polling.
//! - [`http`]: one HTTP/1.1 request on a fresh connection, reading `/metrics`, idle sockets and
//!   probes timed as the kubelet's.
//! - [`stream`]: a JetStream stream of a test's own ([`TestStream`], deleted on drop) and the
//!   [`EventLog`] of everything it holds.
//! - [`channels`]: the same on NATS Streaming ([`TestChannels`]); [`bus`]: either of them
//!   ([`TestBus`]), for tests that run on both transports.
//! - [`servers`]: processes a test owns and can kill: a NATS or Redis server of its own (NATS
//!   and NATS Streaming also requiring credentials), and the service binaries themselves
//!   ([`ServiceProcess`]).
//! - [`clusters`]: a Redis Cluster and a JetStream cluster of a test's own, whose nodes it can
//!   kill, freeze and start again.
//! - [`cli`]: the command-line manners every binary must have.

pub mod bus;
pub mod channels;
pub mod cli;
pub mod clusters;
pub mod http;
pub mod servers;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use bus::TestBus;
pub use channels::{TestChannels, stan_url};
pub use http::{Answer, Probes, get, idle_sockets, metric, metric_value, probe, send};
pub use servers::{
    MongoServer, NatsServer, NatsWithPassword, RedisServer, ServiceProcess, StanFileServer,
    StanServer, StanWithToken, TEST_PASSWORD, TEST_TOKEN, TEST_USER, free_port, resident_memory,
};
pub use stream::{EventLog, Logged, TestStream};

/// `NATS_URL`, or the local stack's default.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:14222".into())
}

/// `REDIS_URL`, or the local stack's default.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

/// `MONGO_URI`, or the local stack's default.
pub fn mongo_uri() -> String {
    std::env::var("MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:37017".into())
}

/// A name no other test of any process uses: `<prefix>-<pid>-<time>-<counter>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_explained(deadline, what, condition, async { String::new() }).await;
}

/// [`eventually`], whose panic also carries what `explain` (run only then) says of the state it
/// gave up on.
pub async fn eventually_explained<F, Fut>(
    deadline: Duration,
    what: &str,
    mut condition: F,
    explain: impl Future<Output = String>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        if start.elapsed() >= deadline {
            let explanation = explain.await;
            let sep = if explanation.is_empty() { "" } else { "\n" };
            panic!("timed out after {deadline:?} waiting for {what}{sep}{explanation}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory of the test's own under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}
