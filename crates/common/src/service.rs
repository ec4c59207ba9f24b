//! The shape every service binary shares: settings, logging, the signal handler installed before
//! anything connects, build, run until SIGTERM or Ctrl-C, and an exit code that tells how it went.
//!
//! ```text
//! fn main() -> ExitCode {
//!     let config = Config::load();              // --help, --env-vars, or one line and exit 2
//!     common::service::main("orders", &config.log.clone(), |shutdown| async move {
//!         Application::build(config).await?.run(shutdown).await
//!     })
//! }
//! ```

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::telemetry::{ErrorChain, LogArgs};

/// Runs the service `name`: initialises logging with `log`, starts the Tokio runtime, installs
/// the SIGTERM / Ctrl-C handler, then awaits `service` with the token those signals cancel.
/// Exit code 0 when it returns `Ok` (a clean stop), 1 when it fails to start or fails while
/// running, the error logged once with its cause chain.
pub fn main<F, Fut, E>(name: &str, log: &LogArgs, service: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    crate::telemetry::init(log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = crate::shutdown::cancel_on_signal(shutdown.clone()) {
            tracing::error!(error = %e, "cannot handle signals");
            return ExitCode::FAILURE;
        }
        match service(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "{name} failed");
                ExitCode::FAILURE
            }
        }
    })
}
