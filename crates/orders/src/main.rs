//! The `orders` binary: configuration, telemetry, the service, until SIGTERM or Ctrl-C.

use anyhow::Context;
use orders::{Application, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if common::env::print_if_asked(&orders::config::env_vars()) {
        return Ok(());
    }
    common::telemetry::init();
    let config = Config::from_env().context("cannot start the orders service")?;
    let shutdown = CancellationToken::new();
    common::shutdown::cancel_on_signal(shutdown.clone()).context("cannot handle signals")?;
    let app = Application::build(config, shutdown)
        .await
        .context("cannot start the orders service")?;
    app.run().await.context("the orders service failed")?;
    Ok(())
}
