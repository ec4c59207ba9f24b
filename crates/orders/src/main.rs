//! The `orders` binary: settings, then the service until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use common::config::Settings;
use orders::{Application, Config};

fn main() -> ExitCode {
    let config = Config::load();
    let log = config.log.clone();
    common::service::main("the orders service", &log, |shutdown| async move {
        Application::build(config).await?.run(shutdown).await
    })
}
