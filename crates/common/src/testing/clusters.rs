//! Real clusters on the loopback interface, every process killed and every directory removed
//! when dropped: a Redis Cluster ([`RedisCluster`], masters with replicas that fail over) and a
//! NATS cluster with JetStream ([`NatsCluster`]). Nodes can be killed (SIGKILL) and started
//! again on the same ports and data. Each node's output goes to a log file in its directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{free_port, temp_dir, unique_name};

/// Polls `condition` every 50 ms until it holds; after `deadline` panics with `what` and the
/// last lines of `logs` (the nodes' logs go with their directories when the cluster is dropped).
async fn poll<F, Fut>(deadline: Duration, what: &str, logs: &[PathBuf], mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        if start.elapsed() >= deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}{}",
                log_tails(logs)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last 15 lines of each of `logs`.
fn log_tails(logs: &[PathBuf]) -> String {
    let mut tails = String::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        tails.push_str(&format!("\n---- {} ----\n", log.display()));
        tails.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    tails
}

/// `n` distinct free ports on the loopback interface.
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    while ports.len() < n {
        let port = free_port();
        if seen.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// Spawns `command` with its output appended to `log` (a line marks each start), killed when
/// dropped.
fn spawn(mut command: Command, log: &Path) -> Child {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let _ = writeln!(&file, "---- start ----");
    let stderr = file.try_clone().expect("cloning a log file handle");
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// SIGKILL to every child, waits (at most 5 s in all) until each has exited, so that none is
/// left behind as a zombie or still writing into a directory about to be removed.
fn kill_all<'a>(children: impl Iterator<Item = &'a mut Child>) {
    let mut children: Vec<&mut Child> = children.collect();
    for child in children.iter_mut() {
        let _ = child.start_kill();
    }
    let start = Instant::now();
    for child in children {
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The value of `key:value` line `key` in an INFO-style text.
fn info_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Sends one command to the Redis node on `127.0.0.1:port` and returns its reply as text (a
/// simple string, an integer or a bulk string); `None` for an error reply, a nil, an array, or
/// no answer within 2 s.
async fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    redis_pipeline(port, &[args]).await?.pop()
}

/// Sends `commands` on one fresh connection to the Redis node on `127.0.0.1:port` and returns
/// their replies as text (see [`redis_command`]); `None` if any reply is not text or all of
/// them do not come within 2 s.
async fn redis_pipeline(port: u16, commands: &[&[&str]]) -> Option<Vec<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let attempt = async {
        let mut request = String::new();
        for args in commands {
            request.push_str(&format!("*{}\r\n", args.len()));
            for arg in *args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reader = BufReader::new(stream);
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            let mut header = String::new();
            reader.read_line(&mut header).await.ok()?;
            let reply = match header.trim_end().split_at_checked(1)? {
                ("+" | ":", rest) => rest.to_owned(),
                ("$", length) => {
                    let length: usize = length.parse().ok()?;
                    let mut body = vec![0u8; length + 2];
                    reader.read_exact(&mut body).await.ok()?;
                    body.truncate(length);
                    String::from_utf8(body).ok()?
                }
                _ => return None,
            };
            replies.push(reply);
        }
        Some(replies)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (what is between the
/// first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|len| &rest[..len])
        })
        .filter(|tag| !tag.is_empty());
    let mut crc: u16 = 0;
    for &byte in tag.unwrap_or(bytes) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A key of the harness's own in `slot`, for [`replicas_acknowledge`].
fn probe_key(slot: u16) -> String {
    (0u32..)
        .map(|n| format!("cluster-harness-probe:{{{n}}}"))
        .find(|key| key_slot(key) == slot)
        .expect("every slot has a key")
}

/// Whether at least `wanted` replicas of the master on `port` acknowledge a write to `slot` (a
/// probe key set and deleted at once) within 200 ms, by `WAIT`. That a replica is
/// `state=online` is not enough: after a diskless full sync the master streams writes to it
/// only once it has acknowledged the transfer, up to a second later, and a write made meanwhile
/// is lost with the master if it dies then.
async fn replicas_acknowledge(port: u16, slot: u16, wanted: usize) -> bool {
    let key = probe_key(slot);
    let wanted_text = wanted.to_string();
    let replies = redis_pipeline(
        port,
        &[
            &["SET", &key, "1"],
            &["DEL", &key],
            &["WAIT", &wanted_text, "200"],
        ],
    )
    .await;
    replies
        .and_then(|replies| replies.last()?.parse::<usize>().ok())
        .is_some_and(|acknowledged| acknowledged >= wanted)
}

/// One line of `CLUSTER NODES`.
struct NodeLine<'a> {
    port: u16,
    flags: Vec<&'a str>,
    config_epoch: u64,
    slots: Vec<&'a str>,
}

impl<'a> NodeLine<'a> {
    /// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
    fn parse(line: &'a str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let address = fields[1].split('@').next()?;
        Some(NodeLine {
            port: address.rsplit(':').next()?.parse().ok()?,
            flags: fields[2].split(',').collect(),
            config_epoch: fields[6].parse().ok()?,
            slots: fields[8..].to_vec(),
        })
    }

    /// A master not flagged as failed.
    fn is_live_master(&self) -> bool {
        self.flags.contains(&"master") && !self.flags.contains(&"fail")
    }

    /// Whether `slot` is in one of its ranges (`a-b` or `a`; migrations `[...]` do not count).
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|range| {
            let (low, high) = range.split_once('-').unwrap_or((range, range));
            matches!(
                (low.parse::<u16>(), high.parse::<u16>()),
                (Ok(low), Ok(high)) if (low..=high).contains(&slot)
            )
        })
    }
}

/// One `redis-server` of a [`RedisCluster`].
struct RedisNode {
    port: u16,
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisNode {
    fn command(&self) -> Command {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .arg("--cluster-config-file")
            .arg(self.dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", "2000"])
            // A replica may always fail over, however long it was cut off from its master.
            .args(["--cluster-replica-validity-factor", "0"])
            // Full syncs start at once rather than waiting 5 s for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir);
        command
    }

    fn start(&mut self) {
        let child = spawn(self.command(), &self.log());
        self.child = Some(child);
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

/// A Redis Cluster of the test's own: masters with replicas, every node `redis-server
/// --cluster-enabled yes` on a free loopback port (its cluster bus on another) with its data,
/// `nodes.conf` and `redis.log` in a directory of its own. Nodes can be killed and started
/// again; a replica takes over a killed master's slots after about 2 s (the node timeout).
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, joined with `redis-cli --cluster create`;
    /// waits until every node reports `cluster_state:ok` and every master has its replicas
    /// attached and in sync.
    pub async fn start(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let count = masters * (1 + replicas);
        // A port picked free may be taken by another test before its node binds it: then that
        // node exits at once, and the whole set starts again on other ports.
        let mut cluster = None;
        for _ in 0..3 {
            let mut nodes = Self::nodes(count);
            for node in nodes.nodes.iter_mut() {
                node.start();
            }
            if nodes.all_answer().await {
                cluster = Some(nodes);
                break;
            }
        }
        let cluster = cluster.expect("three tries to start the Redis Cluster's nodes");

        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let log = cluster.dir.join("create.log");
        let mut child = spawn(create, &log);
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("redis-cli --cluster create finishes within 60 s")
            .expect("redis-cli --cluster create runs");
        assert!(
            status.success(),
            "redis-cli --cluster create failed ({status}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );

        poll(
            Duration::from_secs(60),
            "every Redis node to report cluster_state:ok with every master's replicas in sync",
            &cluster.logs(),
            || cluster.formed(masters, replicas),
        )
        .await;
        cluster
    }

    /// `count` nodes on fresh ports, in a fresh directory, not started.
    fn nodes(count: usize) -> Self {
        let dir = temp_dir("redis-cluster");
        let ports = free_ports(2 * count);
        let nodes = ports
            .chunks(2)
            .enumerate()
            .map(|(index, pair)| {
                let node_dir = dir.join(format!("node-{index}"));
                std::fs::create_dir_all(&node_dir).expect("creating a node's directory");
                RedisNode {
                    port: pair[0],
                    bus_port: pair[1],
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        RedisCluster { dir, nodes }
    }

    /// Waits (up to 10 s) until every node answers PING; false as soon as one has exited.
    async fn all_answer(&mut self) -> bool {
        let start = Instant::now();
        for index in 0..self.nodes.len() {
            let port = self.port(index);
            loop {
                if redis_command(port, &["PING"]).await.as_deref() == Some("PONG") {
                    break;
                }
                let exited = self.nodes[index]
                    .child
                    .as_mut()
                    .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
                if exited || start.elapsed() > Duration::from_secs(10) {
                    eprintln!(
                        "Redis node {index} on port {port} did not start:{}",
                        log_tails(&[self.nodes[index].log()])
                    );
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        true
    }

    /// Every node's URL `redis://127.0.0.1:<port>`, comma-separated (what `REDIS_URL` takes).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's URL `redis://127.0.0.1:<port>`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    /// Port of node `index`.
    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].port
    }

    /// Index of the node currently master of the slot of `key` (hash tags `{...}` respected):
    /// of the live nodes that say they serve it as master, the one with the highest config
    /// epoch. Waits (up to 20 s) while no live node does, e.g. during a failover.
    pub async fn master_of(&self, key: &str) -> usize {
        let slot = key_slot(key);
        let master = std::cell::Cell::new(None);
        poll(
            Duration::from_secs(20),
            &format!("a live Redis node to be master of slot {slot} (of {key:?})"),
            &self.logs(),
            || async {
                master.set(self.claimed_master(slot).await);
                master.get().is_some()
            },
        )
        .await;
        master.get().expect("polled until there is one")
    }

    /// SIGKILL node `index`: it dies at once; its directory stays for
    /// [`RedisCluster::start_again`].
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts node `index` again on its port and directory (it rejoins the cluster, as a replica
    /// if it was failed over) and waits until it answers PING.
    pub async fn start_again(&mut self, index: usize) {
        self.kill(index).await;
        self.nodes[index].start();
        self.wait_for_ping(index).await;
    }

    /// Waits (up to `deadline`) until a live node other than `not` is master of `key`'s slot,
    /// every live node agrees on it and says `cluster_state:ok`; returns the new master's index.
    pub async fn wait_for_failover(&self, key: &str, not: usize, deadline: Duration) -> usize {
        let slot = key_slot(key);
        let master = std::cell::Cell::new(None);
        poll(
            deadline,
            &format!(
                "a Redis node other than {not} to be master of slot {slot} (of {key:?}) with \
                 the cluster ok"
            ),
            &self.logs(),
            || async {
                master.set(
                    self.claimed_master(slot)
                        .await
                        .filter(|&master| master != not),
                );
                match master.get() {
                    Some(master) => self.agree_on(slot, master).await,
                    None => false,
                }
            },
        )
        .await;
        master.get().expect("polled until there is one")
    }

    /// Waits (up to `deadline`) until the master of `key`'s slot has at least one connected
    /// replica in sync: `state=online` in its `INFO replication`, and acknowledging (`WAIT`) a
    /// write to that slot (a key of the harness's own, set and deleted at once).
    pub async fn wait_for_replica(&self, key: &str, deadline: Duration) {
        let slot = key_slot(key);
        poll(
            deadline,
            &format!("the master of slot {slot} (of {key:?}) to have a replica in sync"),
            &self.logs(),
            || async {
                let Some(master) = self.claimed_master(slot).await else {
                    return false;
                };
                let port = self.port(master);
                redis_command(port, &["INFO", "replication"])
                    .await
                    .is_some_and(|info| online_replicas(&info) >= 1)
                    && replicas_acknowledge(port, slot, 1).await
            },
        )
        .await;
    }

    /// The live nodes replicating node `master` (their `INFO replication` names its port).
    pub async fn replicas_of(&self, master: usize) -> Vec<usize> {
        let wanted = format!("master_port:{}", self.port(master));
        let mut replicas = Vec::new();
        for port in self.live_ports() {
            if let Some(info) = redis_command(port, &["INFO", "replication"]).await
                && info.lines().any(|line| line.trim() == wanted)
                && let Some(index) = self.index_of(port)
            {
                replicas.push(index);
            }
        }
        replicas
    }

    /// Sends `signal` (`STOP` freezes the node, `CONT` thaws it) to node `index`.
    pub fn signal(&self, index: usize, signal: &str) {
        let pid = self.nodes[index]
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the node runs");
        super::servers::signal(pid, signal);
    }

    /// Waits (up to 10 s) until node `index` answers PING.
    async fn wait_for_ping(&self, index: usize) {
        let port = self.port(index);
        let what = format!("Redis node {index} on port {port} to answer PING");
        let log = [self.nodes[index].log()];
        poll(Duration::from_secs(10), &what, &log, || async move {
            redis_command(port, &["PING"]).await.as_deref() == Some("PONG")
        })
        .await;
    }

    /// Every node's log file.
    fn logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(RedisNode::log).collect()
    }

    /// Ports of the nodes that run.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port == port)
    }

    /// Of the live nodes whose own line in `CLUSTER NODES` says they serve `slot` as master,
    /// the one with the highest config epoch (a restarted old master claims its slots until it
    /// hears of the newer epoch).
    async fn claimed_master(&self, slot: u16) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for port in self.live_ports() {
            let Some(nodes) = redis_command(port, &["CLUSTER", "NODES"]).await else {
                continue;
            };
            let myself = nodes
                .lines()
                .filter_map(NodeLine::parse)
                .find(|line| line.flags.contains(&"myself"));
            if let Some(line) = myself
                && line.is_live_master()
                && line.serves(slot)
                && best.is_none_or(|(epoch, _)| line.config_epoch > epoch)
                && let Some(index) = self.index_of(port)
            {
                best = Some((line.config_epoch, index));
            }
        }
        best.map(|(_, index)| index)
    }

    /// Whether every live node says `cluster_state:ok` and sees node `master` as the master of
    /// `slot`.
    async fn agree_on(&self, slot: u16, master: usize) -> bool {
        let master_port = self.port(master);
        for port in self.live_ports() {
            let Some(info) = redis_command(port, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            if info_field(&info, "cluster_state") != Some("ok") {
                return false;
            }
            let Some(nodes) = redis_command(port, &["CLUSTER", "NODES"]).await else {
                return false;
            };
            let owner = nodes
                .lines()
                .filter_map(NodeLine::parse)
                .filter(|line| line.is_live_master() && line.serves(slot))
                .max_by_key(|line| line.config_epoch);
            if owner.is_none_or(|line| line.port != master_port) {
                return false;
            }
        }
        true
    }

    /// The first slot the node on `port` says it serves.
    async fn first_slot(&self, port: u16) -> Option<u16> {
        let nodes = redis_command(port, &["CLUSTER", "NODES"]).await?;
        let myself = nodes
            .lines()
            .filter_map(NodeLine::parse)
            .find(|line| line.flags.contains(&"myself"))?;
        myself
            .slots
            .iter()
            .find_map(|range| range.split('-').next()?.parse().ok())
    }

    /// Whether every node knows all the others and says `cluster_state:ok`, there are `masters`
    /// masters with `replicas` replicas online each which acknowledge a write (see
    /// [`replicas_acknowledge`]), and every replica's link is up and synced.
    async fn formed(&self, masters: usize, replicas: usize) -> bool {
        let mut masters_ready = 0;
        for node in &self.nodes {
            let Some(cluster) = redis_command(node.port, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            if info_field(&cluster, "cluster_state") != Some("ok")
                || info_field(&cluster, "cluster_known_nodes")
                    != Some(&self.nodes.len().to_string())
            {
                return false;
            }
            let Some(info) = redis_command(node.port, &["INFO", "replication"]).await else {
                return false;
            };
            match info_field(&info, "role") {
                Some("master") if online_replicas(&info) >= replicas => {
                    let Some(slot) = self.first_slot(node.port).await else {
                        return false;
                    };
                    if replicas > 0 && !replicas_acknowledge(node.port, slot, replicas).await {
                        return false;
                    }
                    masters_ready += 1;
                }
                Some("slave")
                    if info_field(&info, "master_link_status") == Some("up")
                        && info_field(&info, "master_sync_in_progress") == Some("0") => {}
                _ => return false,
            }
        }
        masters_ready == masters
    }
}

/// How many `slaveN:...,state=online,...` lines an `INFO replication` has.
fn online_replicas(info: &str) -> usize {
    info.lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .count()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        kill_all(self.nodes.iter_mut().filter_map(|node| node.child.as_mut()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `nats-server` of a [`NatsCluster`].
struct NatsNode {
    name: String,
    port: u16,
    cluster_port: u16,
    monitor_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A NATS cluster with JetStream of the test's own: servers named `n0`, `n1`, … with their
/// client, route and monitoring ports on the loopback interface, each its JetStream store and
/// `nats.log` in a directory of its own. Servers can be killed and started again.
pub struct NatsCluster {
    dir: PathBuf,
    cluster_name: String,
    nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// `n` `nats-server`s with JetStream, routed to one another (a single one runs standalone);
    /// waits until every one answers and JetStream is ready on all of them (see
    /// [`NatsCluster::start_again`]).
    pub async fn start(n: usize) -> Self {
        assert!(n >= 1, "a NATS cluster needs a server");
        let dir = temp_dir("nats-cluster");
        let ports = free_ports(3 * n);
        let nodes = ports
            .chunks(3)
            .enumerate()
            .map(|(index, ports)| {
                let node_dir = dir.join(format!("n{index}"));
                std::fs::create_dir_all(&node_dir).expect("creating a server's directory");
                NatsNode {
                    name: format!("n{index}"),
                    port: ports[0],
                    cluster_port: ports[1],
                    monitor_port: ports[2],
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            dir,
            cluster_name: unique_name("cluster"),
            nodes,
        };
        for index in 0..n {
            cluster.launch(index);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Every server's `nats://127.0.0.1:<port>`, comma-separated (what `NATS_URL` takes).
    pub fn url_list(&self) -> String {
        (0..self.nodes.len())
            .map(|index| self.url(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `index`'s `nats://127.0.0.1:<port>`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// The index of the server named `name` (as JetStream names a stream's or consumer's leader).
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .unwrap_or_else(|| panic!("no server named {name} in the cluster"))
    }

    /// Server `index`'s HTTP monitoring port (`/varz`, `/jsz`, `/healthz`, …).
    pub fn monitor_port(&self, index: usize) -> u16 {
        self.nodes[index].monitor_port
    }

    /// SIGKILL server `index`: it dies at once; its store stays for
    /// [`NatsCluster::start_again`].
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts server `index` again on the same ports, name and store, and waits (up to 30 s)
    /// until JetStream is ready again: every live server answers `/healthz` with 200 (which
    /// needs JetStream current with a meta leader) and reports the same meta leader, a live
    /// one, which sees every other live server as a current peer.
    pub async fn start_again(&mut self, index: usize) {
        self.kill(index).await;
        self.launch(index);
        self.wait_ready().await;
    }

    fn launch(&mut self, index: usize) {
        let node = &self.nodes[index];
        let routes = self
            .nodes
            .iter()
            .filter(|other| other.name != node.name)
            .map(|other| format!("nats://127.0.0.1:{}", other.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-sd"])
            .arg(node.dir.join("store"))
            .args(["-n", &node.name])
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-m", &node.monitor_port.to_string()]);
        // A lone server runs JetStream standalone: clustered JetStream refuses to start without
        // routes.
        if !routes.is_empty() {
            command
                .args(["--cluster_name", &self.cluster_name])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.cluster_port),
                ])
                .args(["--routes", &routes]);
        }
        let child = spawn(command, &node.dir.join("nats.log"));
        self.nodes[index].child = Some(child);
    }

    async fn wait_ready(&self) {
        let logs: Vec<PathBuf> = self
            .nodes
            .iter()
            .map(|node| node.dir.join("nats.log"))
            .collect();
        poll(
            Duration::from_secs(30),
            "every live NATS server to answer with JetStream ready",
            &logs,
            || self.ready(),
        )
        .await;
    }

    /// See [`NatsCluster::start_again`].
    async fn ready(&self) -> bool {
        let live: Vec<&NatsNode> = self
            .nodes
            .iter()
            .filter(|node| node.child.is_some())
            .collect();
        let mut leader: Option<String> = None;
        for node in &live {
            match super::get(node.monitor_port, "/healthz").await {
                Ok(answer) if answer.status == http::StatusCode::OK => {}
                _ => return false,
            }
            if self.nodes.len() == 1 {
                continue;
            }
            let Ok(jsz) = super::get(node.monitor_port, "/jsz").await else {
                return false;
            };
            let seen = jsz.json()["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if seen.is_empty() || leader.as_ref().is_some_and(|leader| *leader != seen) {
                return false;
            }
            leader = Some(seen);
        }
        let Some(leader) = leader else {
            return self.nodes.len() == 1;
        };
        let Some(leader_node) = live.iter().find(|node| node.name == leader) else {
            return false;
        };
        let Ok(jsz) = super::get(leader_node.monitor_port, "/jsz").await else {
            return false;
        };
        let json = jsz.json();
        let peers = json["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        live.iter().filter(|node| node.name != leader).all(|node| {
            peers.iter().any(|peer| {
                peer["name"] == node.name.as_str()
                    && peer["current"] == true
                    && peer["offline"] != true
            })
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        kill_all(self.nodes.iter_mut().filter_map(|node| node.child.as_mut()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_redis_cluster_ones() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("somekey"), 11058);
        assert_eq!(key_slot("foo{hash_tag}"), 2515);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot(&probe_key(7)), 7);
    }
}
