//! The wire contract against the Node clients of the ticketing stack: `tests/interop/interop.mjs`
//! (npm `nats`, `jsonwebtoken`, `cookie-session`) plays tickets, payments, auth and a browser
//! against both services and asserts the JSON field by field.

use std::path::Path;
use std::process::Stdio;

use e2e::scenario::Scenario;

#[tokio::test]
async fn node_clients_of_the_ticketing_stack_speak_the_same_contract() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci --prefix tests/interop` (scripts/test does)",
        dir.display()
    );
    // A window long enough that expiry never interferes with the checks.
    let world = Scenario::new(120).await;
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
        "the Node interop script failed: see its output above"
    );
    assert!(
        stdout.contains("interop: 9 passed, 0 failed"),
        "not every interop check ran"
    );
    drop((orders, expiration));
    world.finish().await;
}
