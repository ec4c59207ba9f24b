//! The workspace's service binaries as processes ([`ServiceProcess`], from `common::testing`),
//! found in the build's target directory, their logs kept in `<target>/e2e-logs`.

use std::path::{Path, PathBuf};

pub use common::testing::servers::{Nats, OwnServer, SpeaksNats, StanFile};
pub use common::testing::{ServiceProcess, StanServer, free_port};

/// Where the workspace's binaries are: `E2E_BIN_DIR`, else `<target>/debug` (or `release`
/// with `E2E_PROFILE=release`), where `cargo build --workspace --bins` puts them.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    target.join(std::env::var("E2E_PROFILE").unwrap_or_else(|_| "debug".into()))
}

/// The path of binary `name`, failing clearly if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the services first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Directory for the logs of child processes: `<target>/e2e-logs`.
pub fn log_dir() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .map(|p| p.join("e2e-logs"))
        .unwrap_or_else(|| PathBuf::from("e2e-logs"));
    std::fs::create_dir_all(&dir).expect("creating the log directory");
    dir
}

/// Starts the workspace binary `binary_name` as `name` with exactly `env`, its log kept in
/// `<target>/e2e-logs/<name>.log`, and waits until `/readyz` on `port` answers 200.
pub async fn start_service(
    name: &str,
    binary_name: &str,
    env: Vec<(String, String)>,
    port: u16,
) -> anyhow::Result<ServiceProcess> {
    let mut process = ServiceProcess::start(name, &binary(binary_name), env, port, &log_dir())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    process.keep_log();
    Ok(process)
}
