//! The queue and the worker against real Redis and NATS: the local stack's (`scripts/stack up`),
//! and servers of a test's own for the tests that kill or stop them. One test binary; one module
//! per section.

mod worker {
    pub mod helpers;

    mod clusters;
    mod in_process;
    mod own_servers;
    mod processes;
    mod queue;
}
