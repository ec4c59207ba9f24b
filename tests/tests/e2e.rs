//! End-to-end: `orders` and `expiration` as separate processes against the local stack, driven
//! only over HTTP and NATS. Build the binaries first (`cargo build --workspace --bins`; the
//! README's test command does). Every test prints the expiry latency it observed.

mod e2e {
    mod clusters;
    mod crashes;
    mod demo;
    mod flow;
    mod interop;
    mod kubernetes;
    mod support;
}
