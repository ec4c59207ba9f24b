//! Child processes: the two services, and a NATS server a test owns so it can restart it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

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

/// A free TCP port on the loopback interface (released before it is returned).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running service binary with its environment, restartable after a kill.
pub struct ServiceProcess {
    pub name: String,
    path: PathBuf,
    env: Vec<(String, String)>,
    /// The port serving `/readyz`.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl ServiceProcess {
    /// Starts `binary` as `name` with exactly `env` (plus `PATH`) and waits until `/readyz` on
    /// `port` answers 200.
    pub async fn start(
        name: &str,
        binary_name: &str,
        env: Vec<(String, String)>,
        port: u16,
    ) -> anyhow::Result<Self> {
        let log = log_dir().join(format!("{name}.log"));
        let mut process = ServiceProcess {
            name: name.to_owned(),
            path: binary(binary_name),
            env,
            port,
            child: None,
            log,
            starts: 0,
        };
        process.spawn()?;
        process.wait_ready(Duration::from_secs(30)).await?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        use std::io::Write;
        writeln!(&log, "---- start #{} of {} ----", self.starts, self.name)?;
        let child = Command::new(&self.path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            if let Ok(response) = crate::http::get(&url, None).await
                && response.status == 200
            {
                return Ok(());
            }
            if start.elapsed() > deadline {
                anyhow::bail!(
                    "{} not ready after {deadline:?}; log:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Process id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the exit code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        Ok(status.code())
    }

    /// Starts the same binary with the same environment again and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn()?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// A `nats-server -js` of the test's own, with its JetStream store in a directory that
/// survives restarts.
pub struct OwnNats {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl OwnNats {
    /// Starts a JetStream server on a free port and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let store = log_dir().join(format!("nats-{port}-{}", std::process::id()));
        let mut nats = OwnNats {
            port,
            store,
            child: None,
        };
        nats.spawn().await?;
        Ok(nats)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start nats-server ({e}); run scripts/stack up to install it"
                )
            })?;
        self.child = Some(child);
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server on {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops the server (SIGKILL: its JetStream store stays on disk).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        self.spawn().await
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
