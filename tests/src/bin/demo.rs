//! The main job: both services as processes on the local stack, walking orders through their
//! life the way the rest of the ticketing stack drives them. `scripts/demo` brings the stack up,
//! builds, and runs this.
//!
//! ```text
//! demo [--window SECONDS] [--transport jetstream|streaming] [--keep-running]
//! ```

use std::time::Instant;

use anyhow::ensure;
use clap::Parser;
use common::bus::Transport;
use common::config::{Settings, parse};
use common::testing::TestBus;
use e2e::orders_api::OrdersApi;
use e2e::scenario::Scenario;
use e2e::walk::{show, step, walk};

/// Walks orders through their life with both services running as processes on the local stack
/// (`scripts/demo` brings the stack up and builds first).
#[derive(Debug, Parser)]
#[command(name = "demo", version, long_about = None)]
struct Options {
    /// Expiration window of the orders, in seconds
    #[arg(long = "window", default_value = "5", value_parser = parse::positive::<u64>)]
    window_secs: u64,
    /// The bus: jetstream, or streaming (NATS Streaming, the course's broker)
    #[arg(long, value_enum, default_value = "jetstream")]
    transport: DemoTransport,
    /// Leave the services up afterwards (Ctrl-C stops them), with the API URL and a cookie for curl
    #[arg(long)]
    keep_running: bool,
}

impl Settings for Options {}

/// The transports the demo can run on.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DemoTransport {
    Jetstream,
    Streaming,
}

impl From<DemoTransport> for Transport {
    fn from(transport: DemoTransport) -> Self {
        match transport {
            DemoTransport::Jetstream => Transport::JetStream,
            DemoTransport::Streaming => Transport::Streaming,
        }
    }
}

#[tokio::main]
async fn main() {
    let options = Options::load();
    let started = Instant::now();
    match run(options).await {
        Ok(summary) => {
            println!(
                "\nOK in {:.1} s: {summary}",
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("\nFAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(options: Options) -> anyhow::Result<String> {
    let world = Scenario::on(options.transport.into(), options.window_secs).await;
    let place = match &world.bus {
        TestBus::JetStream(stream) => format!("JetStream stream {}", stream.spec.name),
        TestBus::Streaming(channels) => format!(
            "NATS Streaming cluster {} at {}",
            channels.cluster_id, channels.url
        ),
    };
    step(&format!(
        "starting orders and expiration (expiration window {} s; {place}, subjects prefixed {:?})",
        options.window_secs,
        world.bus.spec().subject_prefix
    ));
    let mut orders = world.start_orders("demo-orders").await?;
    let mut expiration = world.start_expiration("demo-expiration").await?;
    show(format!(
        "orders     {}  (log {})",
        orders.url(),
        orders.log_path().display()
    ));
    show(format!(
        "expiration {}  (log {})",
        expiration.url(),
        expiration.log_path().display()
    ));

    let result = walk(&world, &OrdersApi::new(&orders.url()), options.window_secs).await;

    if result.is_ok() && options.keep_running {
        let buyer = world.buyer("you@example.com");
        step("services keep running; Ctrl-C stops them");
        show(format!("API:    {}/api/orders", orders.url()));
        show(format!("cookie: {}", buyer.cookie));
        show(format!(
            "try:    curl -s -H 'Cookie: {}' {}/api/orders",
            buyer.cookie,
            orders.url()
        ));
        let _ = tokio::signal::ctrl_c().await;
    }
    let orders_exit = orders.terminate().await;
    let expiration_exit = expiration.terminate().await;
    world.finish().await;
    let summary = result?;
    ensure!(
        matches!(orders_exit, Ok(Some(0))),
        "orders did not exit cleanly on SIGTERM: {orders_exit:?}"
    );
    ensure!(
        matches!(expiration_exit, Ok(Some(0))),
        "expiration did not exit cleanly on SIGTERM: {expiration_exit:?}"
    );
    show("both services stopped cleanly on SIGTERM");
    Ok(summary)
}
