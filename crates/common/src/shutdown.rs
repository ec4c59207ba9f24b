//! Turning SIGTERM (Kubernetes) and Ctrl-C (a developer) into a cancelled token.

use tokio_util::sync::CancellationToken;

/// Cancels `token` when SIGTERM or Ctrl-C (SIGINT) arrives. The handlers are installed before
/// this returns, so a signal sent right after start-up is not missed. Must be called inside a
/// Tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = interrupt.recv() => tracing::info!("Ctrl-C received; shutting down"),
                _ = token.cancelled() => return,
            }
            token.cancel();
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received; shutting down"),
                _ = token.cancelled() => return,
            }
            token.cancel();
        }))
    }
}
