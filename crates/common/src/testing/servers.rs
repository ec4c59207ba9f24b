//! Processes a test owns, every one killed when dropped: a NATS server (JetStream on disk), a
//! Redis server (append-only, fsync always) or a MongoDB-compatible server of the test's own,
//! which it can freeze and thaw, kill and start again on the same port and data, and the service
//! binaries themselves ([`ServiceProcess`]). A NATS server and a NATS Streaming server that
//! require credentials ([`NatsWithPassword`], [`StanWithToken`]) check that `NATS_URL`'s are used.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{eventually, temp_dir};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A free TCP port on the loopback interface (released before it is returned).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// SIGTERM to `child`, then its exit code once it has exited (at most `deadline`).
async fn terminate(child: &mut Child, deadline: Duration) -> Result<Option<i32>, BoxError> {
    if let Some(pid) = child.id() {
        signal(pid, "TERM");
    }
    let status = tokio::time::timeout(deadline, child.wait())
        .await
        .map_err(|_| format!("no exit within {deadline:?} of SIGTERM"))??;
    Ok(status.code())
}

/// How to run one kind of server of a test's own.
pub trait Launch {
    /// The program and its arguments for `port` and data directory `dir`.
    fn command(port: u16, dir: &Path) -> Command;
    /// Whether the server on `port` answers.
    fn answers(port: u16) -> impl Future<Output = bool> + Send;
}

/// A server process of a test's own, on a free port with its data in a directory of its own
/// that survives restarts and is removed on drop.
pub struct OwnServer<S> {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    kind: std::marker::PhantomData<S>,
}

impl<S: Launch> OwnServer<S> {
    async fn start_in(dir: PathBuf) -> Self {
        let mut server = OwnServer {
            port: free_port(),
            dir,
            child: None,
            kind: std::marker::PhantomData,
        };
        server.start_again().await;
        server
    }

    /// Starts it (again) on its port and data, and waits until it answers.
    pub async fn start_again(&mut self) {
        let child = S::command(self.port, &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a test server ({e}); run scripts/stack up"));
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "the test's own server to answer",
            || S::answers(port),
        )
        .await;
    }

    /// SIGKILL: it dies at once; its data stays for [`OwnServer::start_again`].
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, and waits until it has exited.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(10)).await;
        }
    }

    /// SIGKILL, then the same server again on the same port and data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.start_again().await;
    }
}

impl<S> Drop for OwnServer<S> {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nats-server -js`, its JetStream store on disk.
pub struct Nats;

impl Launch for Nats {
    fn command(port: u16, dir: &Path) -> Command {
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir);
        command
    }

    async fn answers(port: u16) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    }
}

/// A NATS server with JetStream of the test's own.
pub type NatsServer = OwnServer<Nats>;

/// The user [`NatsWithPassword`] requires.
pub const TEST_USER: &str = "ticketing";

/// The password [`NatsWithPassword`] requires: it holds `@`, `:` and `/`, so in a URL it must be
/// percent-encoded ([`NatsWithPassword::url_with_credentials`]).
pub const TEST_PASSWORD: &str = "p@ss:w/rd";

/// The token [`StanWithToken`] requires.
pub const TEST_TOKEN: &str = "stan-t0ken";

/// `nats-server -js` that requires the user [`TEST_USER`] with [`TEST_PASSWORD`].
pub struct NatsPassword;

impl Launch for NatsPassword {
    fn command(port: u16, dir: &Path) -> Command {
        let mut command = Nats::command(port, dir);
        command.args(["--user", TEST_USER, "--pass", TEST_PASSWORD]);
        command
    }

    async fn answers(port: u16) -> bool {
        Nats::answers(port).await
    }
}

/// A NATS server with JetStream of the test's own, refusing clients without [`TEST_USER`] and
/// [`TEST_PASSWORD`].
pub type NatsWithPassword = OwnServer<NatsPassword>;

impl NatsWithPassword {
    /// `nats://ticketing:p%40ss%3Aw%2Frd@127.0.0.1:<port>`: the credentials as `NATS_URL` carries them.
    pub fn url_with_credentials(&self) -> String {
        let encode = |part: &str| {
            percent_encoding::utf8_percent_encode(part, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        self.url_with(&format!("{}:{}", encode(TEST_USER), encode(TEST_PASSWORD)))
    }
}

/// `nats-streaming-server` as [`Stan`] runs it, requiring the token [`TEST_TOKEN`].
pub struct StanToken;

impl Launch for StanToken {
    fn command(port: u16, _dir: &Path) -> Command {
        let mut command = stan_command(port);
        command.args(["--auth", TEST_TOKEN]);
        command
    }

    async fn answers(port: u16) -> bool {
        stan_answers_with(
            port,
            async_nats::ConnectOptions::with_token(TEST_TOKEN.into()),
        )
        .await
    }
}

/// A NATS Streaming server of the test's own (memory store), refusing clients without
/// [`TEST_TOKEN`].
pub type StanWithToken = OwnServer<StanToken>;

impl StanWithToken {
    /// `nats://stan-t0ken@127.0.0.1:<port>`: the token as `NATS_URL` carries it.
    pub fn url_with_credentials(&self) -> String {
        self.url_with(TEST_TOKEN)
    }
}

/// Servers clients reach with a `nats://` URL.
pub trait SpeaksNats: Launch {
    /// The name of its data directory.
    const NAME: &'static str;
}

impl SpeaksNats for Nats {
    const NAME: &'static str = "nats";
}

impl SpeaksNats for Stan {
    const NAME: &'static str = "stan";
}

impl SpeaksNats for StanFile {
    const NAME: &'static str = "stan-file";
}

impl SpeaksNats for NatsPassword {
    const NAME: &'static str = "nats-password";
}

impl SpeaksNats for StanToken {
    const NAME: &'static str = "stan-token";
}

impl<S: SpeaksNats> OwnServer<S> {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::start_in(temp_dir(S::NAME)).await
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://<userinfo>@127.0.0.1:<port>`, `userinfo` as written (percent-encoded).
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("nats://{userinfo}@127.0.0.1:{}", self.port)
    }
}

/// Sends `request` to `127.0.0.1:port` on a fresh connection and returns the first bytes of the
/// reply; `None` if nothing answers within 2 s (a frozen server accepts, then never replies).
async fn exchange(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request).await.ok()?;
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).await.ok()?;
        reply.truncate(n);
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// `redis-server` with append-only persistence fsynced on every write.
pub struct Redis;

impl Launch for Redis {
    fn command(port: u16, dir: &Path) -> Command {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir);
        command
    }

    async fn answers(port: u16) -> bool {
        exchange(port, b"PING\r\n")
            .await
            .is_some_and(|reply| reply.starts_with(b"+PONG\r\n"))
    }
}

/// A Redis server of the test's own.
pub type RedisServer = OwnServer<Redis>;

impl RedisServer {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::start_in(temp_dir("redis")).await
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// The MongoDB-compatible server of the local stack: `MONGO_SERVER` (which `scripts/stack env`
/// exports), else `mongod` or `ferretdb` on the `PATH`, else Go's `~/go/bin/ferretdb`.
fn mongo_server() -> PathBuf {
    program("MONGO_SERVER", &["mongod", "ferretdb"], "ferretdb")
}

/// The program `$variable` names, else the first of `names` on the PATH, else `go_bin` in
/// `~/go/bin` (where `go install` puts it).
fn program(variable: &str, names: &[&str], go_bin: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable).filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let on_path = |name: &&str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    };
    names.iter().find_map(on_path).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join("go/bin")
            .join(go_bin)
    })
}

/// `nats-streaming-server` as the course runs it (memory store, heartbeats every second here
/// so that a dead client is noticed quickly), cluster id `ticketing`. `STAN_SERVER` names the
/// binary (`scripts/stack env` exports it).
pub struct Stan;

/// The same with its file store in the server's directory: a restart forgets nothing.
pub struct StanFile;

fn stan_command(port: u16) -> Command {
    let mut command = Command::new(program(
        "STAN_SERVER",
        &["nats-streaming-server"],
        "nats-streaming-server",
    ));
    command.args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-hbi",
        "1s",
        "-hbt",
        "1s",
        "-hbf",
        "2",
        "-SD",
        "-cid",
        "ticketing",
        // Every test makes six channels of its own; the default limit is 100.
        "-mc",
        "0",
    ]);
    command
}

/// The cluster answers a discover request (with an error: the request is empty).
async fn stan_answers(port: u16) -> bool {
    stan_answers_with(port, async_nats::ConnectOptions::new()).await
}

/// [`stan_answers`], connecting with `options` (credentials).
async fn stan_answers_with(port: u16, options: async_nats::ConnectOptions) -> bool {
    let Ok(Ok(client)) = tokio::time::timeout(
        Duration::from_secs(2),
        options.connect(format!("nats://127.0.0.1:{port}")),
    )
    .await
    else {
        return false;
    };
    let answered = tokio::time::timeout(
        Duration::from_secs(2),
        client.request("_STAN.discover.ticketing", bytes::Bytes::new()),
    )
    .await;
    matches!(answered, Ok(Ok(_)))
}

impl Launch for Stan {
    fn command(port: u16, _dir: &Path) -> Command {
        stan_command(port)
    }

    async fn answers(port: u16) -> bool {
        stan_answers(port).await
    }
}

impl Launch for StanFile {
    fn command(port: u16, dir: &Path) -> Command {
        let mut command = stan_command(port);
        command.args(["-store", "file", "-dir"]).arg(dir);
        command
    }

    async fn answers(port: u16) -> bool {
        stan_answers(port).await
    }
}

/// A NATS Streaming server of the test's own (memory store: a restart forgets everything).
pub type StanServer = OwnServer<Stan>;

/// A NATS Streaming server of the test's own keeping its file store across restarts.
pub type StanFileServer = OwnServer<StanFile>;

/// `mongod`, or FerretDB on its SQLite backend (see [`mongo_server`]).
pub struct Mongo;

impl Launch for Mongo {
    fn command(port: u16, dir: &Path) -> Command {
        let program = mongo_server();
        let mut command = Command::new(&program);
        if program.file_name().is_some_and(|name| name == "mongod") {
            command.arg("--dbpath").arg(dir).args([
                "--port",
                &port.to_string(),
                "--bind_ip",
                "127.0.0.1",
            ]);
        } else {
            let state = dir.join("state");
            let _ = std::fs::create_dir_all(&state);
            command
                .args(["--handler=sqlite", "--telemetry=disable", "--debug-addr=-"])
                .arg(format!("--sqlite-url=file:{}/", dir.display()))
                .arg(format!("--listen-addr=127.0.0.1:{port}"))
                .arg(format!("--state-dir={}", state.display()));
        }
        command
    }

    /// A `ping` on the wire protocol (OP_MSG), answered `ok: 1.0`.
    async fn answers(port: u16) -> bool {
        const PING: &[u8] = b"\x33\0\0\0\x01\0\0\0\0\0\0\0\xdd\x07\0\0\0\0\0\0\0\x1e\0\0\0\x10ping\0\x01\0\0\0\x02$db\0\x06\0\0\0admin\0\0";
        const OK: &[u8] = b"ok\0\0\0\0\0\0\0\xf0\x3f";
        exchange(port, PING)
            .await
            .is_some_and(|reply| reply.windows(OK.len()).any(|w| w == OK))
    }
}

/// A MongoDB-compatible server of the test's own.
pub type MongoServer = OwnServer<Mongo>;

impl MongoServer {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::start_in(temp_dir("mongo")).await
    }

    /// `mongodb://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }
}

impl<S> OwnServer<S> {
    /// SIGSTOP: the process stays, its connections stay open, nothing answers (a stalled node or
    /// a network partition looks like this).
    pub fn freeze(&self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            signal(pid, "STOP");
        }
    }

    /// SIGCONT after [`OwnServer::freeze`].
    pub fn thaw(&self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            signal(pid, "CONT");
        }
    }
}

/// The resident memory of process `pid` in bytes (`VmRSS` in `/proc/<pid>/status`); `None` once
/// it has exited, or off Linux.
pub fn resident_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// A service binary running as a child process with exactly the environment it is given (plus
/// `PATH`), its output appended to a log file. It can be killed (SIGKILL), stopped (SIGTERM) and
/// started again with the same environment. The log is removed on drop unless the test failed
/// or [`ServiceProcess::keep_log`] was called; a failed test prints where it is.
pub struct ServiceProcess {
    pub name: String,
    path: PathBuf,
    env: Vec<(String, String)>,
    /// The port serving `/readyz`.
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Where this process' part of the log begins: a kept log of an earlier run is appended to.
    log_start: u64,
    starts: u32,
    keep_log: bool,
}

impl ServiceProcess {
    /// Starts the binary at `path` as `name` with `env`, logging to `<log_dir>/<name>.log`, and
    /// waits (up to 30 s) until `/readyz` on `port` answers 200.
    pub async fn start(
        name: &str,
        path: &Path,
        env: Vec<(String, String)>,
        port: u16,
        log_dir: &Path,
    ) -> Result<Self, BoxError> {
        let mut process = Self::spawn(name, path, env, port, log_dir)?;
        process.wait_ready(Duration::from_secs(30)).await?;
        Ok(process)
    }

    /// As [`ServiceProcess::start`], without waiting for readiness.
    pub fn spawn(
        name: &str,
        path: &Path,
        env: Vec<(String, String)>,
        port: u16,
        log_dir: &Path,
    ) -> Result<Self, BoxError> {
        if !path.is_file() {
            return Err(format!(
                "{} is missing: build the services first (cargo build --workspace --bins)",
                path.display()
            )
            .into());
        }
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut process = ServiceProcess {
            name: name.to_owned(),
            path: path.to_owned(),
            env,
            port,
            child: None,
            log,
            log_start,
            starts: 0,
            keep_log: false,
        };
        process.launch()?;
        Ok(process)
    }

    fn launch(&mut self) -> Result<(), BoxError> {
        use std::io::Write;
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
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

    /// Polls `/readyz` until it answers 200; fails with the log's tail if the process exits or
    /// `deadline` passes first.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), BoxError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let tail = self.log_tail(30);
                return Err(format!(
                    "{} exited with {status} before it was ready; log:\n{tail}",
                    self.name
                )
                .into());
            }
            if let Ok(answer) = super::get(self.port, "/readyz").await
                && answer.status == http::StatusCode::OK
            {
                return Ok(());
            }
            if start.elapsed() > deadline {
                let tail = self.log_tail(30);
                return Err(
                    format!("{} not ready after {deadline:?}; log:\n{tail}", self.name).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Its resident memory in bytes, while it runs (see [`resident_memory`]).
    pub fn rss(&self) -> Option<u64> {
        resident_memory(self.pid()?)
    }

    /// The value of the metric line `name` it serves on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        super::metric(self.port, name).await
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then its exit code once it has exited (at most 30 s).
    pub async fn terminate(&mut self) -> Result<Option<i32>, BoxError> {
        match self.child.take() {
            Some(mut child) => terminate(&mut child, Duration::from_secs(30)).await,
            None => Ok(None),
        }
    }

    /// Starts the same binary with the same environment again (killing it first if it runs)
    /// and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), BoxError> {
        self.kill().await;
        self.launch()?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Keeps the log file after the test (the end-to-end harness keeps them for people).
    pub fn keep_log(&mut self) {
        self.keep_log = true;
    }

    /// The whole log of this process (every start) so far.
    pub fn log_text(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = Vec::new();
        let read = std::fs::File::open(&self.log).and_then(|mut file| {
            file.seek(std::io::SeekFrom::Start(self.log_start))?;
            file.read_to_end(&mut text)
        });
        match read {
            Ok(_) => String::from_utf8_lossy(&text).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The last `lines` lines of the log at level WARN or ERROR, with the markers of its starts.
    pub fn log_warnings(&self, lines: usize) -> String {
        warnings(&self.log_text(), lines)
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The last `lines` lines of a service's log (text or JSON format) at level WARN or ERROR, and
/// the markers [`ServiceProcess`] writes at each start.
fn warnings(log: &str, lines: usize) -> String {
    let levels = [
        " WARN ",
        " ERROR ",
        "\"level\":\"WARN\"",
        "\"level\":\"ERROR\"",
    ];
    let chosen: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("---- start #") || levels.iter().any(|l| line.contains(l)))
        .collect();
    chosen[chosen.len().saturating_sub(lines)..].join("\n")
}

/// How many warning lines a failed test prints of each service's log.
const WARNINGS_SHOWN: usize = 30;

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            // CI shows only the output: the warnings say most of what the log would.
            eprintln!(
                "{} log: {}; its starts and last warnings:\n{}",
                self.name,
                self.log.display(),
                self.log_warnings(WARNINGS_SHOWN)
            );
        } else if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_tests_summary_of_a_log_keeps_starts_warnings_and_errors_only() {
        let log = "---- start #1 of w ----\n\
                   2026-11-27T21:00:00Z  INFO expiration: running\n\
                   2026-11-27T21:00:01Z  WARN common::bus: handler failed\n\
                   {\"level\":\"ERROR\",\"message\":\"lost\"}\n\
                   {\"level\":\"INFO\",\"message\":\"fine\"}\n\
                   ---- start #2 of w ----\n\
                   2026-11-27T21:00:02Z ERROR expiration: gave up\n";
        assert_eq!(
            super::warnings(log, 10),
            "---- start #1 of w ----\n\
             2026-11-27T21:00:01Z  WARN common::bus: handler failed\n\
             {\"level\":\"ERROR\",\"message\":\"lost\"}\n\
             ---- start #2 of w ----\n\
             2026-11-27T21:00:02Z ERROR expiration: gave up"
        );
        assert_eq!(
            super::warnings(log, 2),
            "---- start #2 of w ----\n2026-11-27T21:00:02Z ERROR expiration: gave up"
        );
    }
}
