//! The wire contract against the Node clients of the ticketing stack: `tests/interop/interop.mjs`
//! (`jsonwebtoken`, `cookie-session`, and on the bus npm `nats` for JetStream or the course's own
//! `@sgtickets/common` with `node-nats-streaming` for NATS Streaming) plays tickets, payments,
//! auth and a browser against both services and asserts the JSON field by field.

use std::path::Path;
use std::process::Stdio;

use common::bus::Transport;
use e2e::scenario::Scenario;

#[tokio::test]
async fn node_clients_of_the_ticketing_stack_speak_the_same_contract() {
    interop(Transport::JetStream).await;
}

#[tokio::test]
async fn the_courses_own_library_on_nats_streaming_speaks_the_same_contract() {
    interop(Transport::Streaming).await;
}

async fn interop(transport: Transport) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci --prefix tests/interop` (scripts/test does)",
        dir.display()
    );
    // A window long enough that expiry never interferes with the checks.
    let world = Scenario::on(transport, 120).await;
    let orders = world.start_orders("interop-orders").await.unwrap();
    let expiration = world.start_expiration("interop-expiration").await.unwrap();
    let env = world.orders_env(orders.port, "interop");
    let output = tokio::process::Command::new("node")
        .arg("interop.mjs")
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ORDERS_URL", orders.url())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("node runs (it is on every machine of this kind)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Node interop script failed on {transport}: see its output above"
    );
    assert!(
        stdout.contains(&format!("interop: transport {transport} ")),
        "the script did not run on {transport}"
    );
    assert!(
        stdout.contains("interop: 9 passed, 0 failed"),
        "not every interop check ran"
    );
    drop((orders, expiration));
    world.finish().await;
}
