//! How the queue reaches Redis: one server (or a managed primary endpoint), or a Redis Cluster
//! whose redirects the client follows; and how many replicas must hold a schedule before the
//! worker counts it as stored.
//!
//! Every key of a queue shares one hash tag, so on a cluster every script runs on the one master
//! owning that slot, and `WAIT` goes to that master on the connection that carried the writes.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisFuture, RedisResult, ServerErrorKind,
    ToRedisArgs, Value,
};

/// Where Redis is and how writes must be replicated: what [`crate::queue::Queue::open`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://` URLs: one server, or any nodes of a cluster (the client discovers the rest).
    pub nodes: Vec<String>,
    /// Talk the cluster protocol (follow `MOVED`/`ASK`, route by slot).
    pub cluster: bool,
    /// Replicas that must confirm a schedule before it counts.
    pub replicas: WaitReplicas,
    /// Longest wait for them, per batch of schedules.
    pub wait_timeout: Duration,
}

/// Default longest wait for replicas to confirm a batch of schedules.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisTarget {
    /// A comma-separated list of URLs: more than one node means a cluster.
    pub fn parse(urls: &str) -> Self {
        let nodes: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        RedisTarget {
            cluster: nodes.len() > 1,
            nodes,
            replicas: WaitReplicas::Auto,
            wait_timeout: WAIT_TIMEOUT,
        }
    }
}

/// How many replicas must confirm each batch of schedules (`REDIS_WAIT_REPLICAS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReplicas {
    /// One, if the master holding the queue has a replica when the worker starts; else none.
    Auto,
    /// Exactly this many (0: acknowledge as soon as the master has it).
    Count(u32),
}

impl std::str::FromStr for WaitReplicas {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim() {
            "auto" => Ok(WaitReplicas::Auto),
            count => count
                .parse()
                .map(WaitReplicas::Count)
                .map_err(|_| "`auto` or a whole number of replicas".to_owned()),
        }
    }
}

/// A connection to one server or to a cluster; clones share it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects; the connection reconnects by itself afterwards.
    pub(crate) async fn open(target: &RedisTarget) -> RedisResult<Self> {
        // The default 500 ms is too tight for a 1,000-job script on a busy server.
        let response_timeout = Duration::from_secs(5);
        let connection_timeout = Duration::from_secs(2);
        if target.cluster {
            let client = ClusterClientBuilder::new(target.nodes.clone())
                .connection_timeout(connection_timeout)
                .response_timeout(response_timeout)
                // A failover takes the cluster's node timeout and an election: redirects and
                // reconnections are retried for a while, then the caller retries the operation.
                .overall_response_timeout(Some(2 * response_timeout))
                .retries(8)
                .min_retry_wait(100)
                .max_retry_wait(2000)
                .build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        } else {
            let url = target.nodes.first().map(String::as_str).unwrap_or_default();
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(connection_timeout))
                .set_max_delay(Duration::from_secs(2));
            Ok(Connection::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// Sends `command` to the master of `key`'s slot (on one server: to the server).
    async fn send_to_master_of(&mut self, key: &str, command: Cmd) -> RedisResult<Value> {
        match self {
            Connection::Single(conn) => command.query_async(conn).await,
            Connection::Cluster(conn) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                conn.route_command(
                    command,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }

    /// `WAIT replicas timeout` on the master of `key`: how many replicas hold every write this
    /// connection sent there before it.
    pub(crate) async fn wait(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut command = redis::cmd("WAIT");
        command.arg(replicas).arg(timeout.as_millis() as u64);
        let reply = self.send_to_master_of(key, command).await?;
        Ok(redis::from_redis_value(reply)?)
    }

    /// `PING` to the master of `key`.
    pub(crate) async fn ping(&mut self, key: &str) -> RedisResult<()> {
        self.send_to_master_of(key, redis::cmd("PING"))
            .await
            .map(drop)
    }

    /// Replicas attached to the master of `key` (`connected_slaves` of `INFO replication`).
    pub(crate) async fn replicas_of(&mut self, key: &str) -> RedisResult<u32> {
        Ok(connected_replicas(&self.info(key, "replication").await?))
    }

    /// `INFO <section>` of the master of `key`.
    pub(crate) async fn info(&mut self, key: &str, section: &str) -> RedisResult<String> {
        let mut command = redis::cmd("INFO");
        command.arg(section);
        Ok(redis::from_redis_value(
            self.send_to_master_of(key, command).await?,
        )?)
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

/// A Lua script of the queue, run with `EVALSHA`; where the node that runs it does not know it
/// yet (a new or restarted server, a replica just promoted), with `EVAL` and its body, which
/// leaves it cached there.
pub(crate) struct Lua {
    hash: String,
    body: &'static str,
}

impl Lua {
    pub(crate) fn new(body: &'static str) -> Self {
        Lua {
            hash: redis::Script::new(body).get_hash().to_owned(),
            body,
        }
    }

    /// A call of the script, to be given its keys (the first one routes it) and arguments.
    pub(crate) fn call(&self) -> LuaCall<'_> {
        LuaCall {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a [`Lua`] script.
pub(crate) struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// Runs the script on `conn` (on a cluster, on the master of its first key).
    pub(crate) async fn invoke<T: FromRedisValue>(&self, conn: &Connection) -> RedisResult<T> {
        let mut conn = conn.clone();
        match self
            .command("EVALSHA", &self.lua.hash)
            .query_async(&mut conn)
            .await
        {
            // The body goes exactly where the hash went, following the same redirects. Loading
            // it first with SCRIPT LOAD could put it on another node: SCRIPT LOAD names no key,
            // and right after a failover the client's map of the cluster may still be stale.
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.lua.body)
                    .query_async(&mut conn)
                    .await
            }
            result => result,
        }
    }

    /// `<verb> <script> <number of keys> <keys> <args>`.
    fn command(&self, verb: &str, script: &str) -> Cmd {
        let bytes = self
            .keys
            .iter()
            .chain(&self.args)
            .map(Vec::len)
            .sum::<usize>();
        let mut command = Cmd::with_capacity(
            3 + self.keys.len() + self.args.len(),
            bytes + script.len() + 16,
        );
        command
            .arg(verb)
            .arg(script)
            .arg(self.keys.len())
            .arg(&self.keys[..])
            .arg(&self.args[..]);
        command
    }
}

/// `connected_slaves:N` of an `INFO replication` reply (0 when absent).
fn connected_replicas(info: &str) -> u32 {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("connected_slaves:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_one_url_is_a_cluster() {
        let one = RedisTarget::parse("redis://r:6379");
        assert_eq!(one.nodes, ["redis://r:6379"]);
        assert!(!one.cluster);
        let many = RedisTarget::parse("redis://a:7000, redis://b:7001,");
        assert_eq!(many.nodes, ["redis://a:7000", "redis://b:7001"]);
        assert!(many.cluster);
    }

    #[test]
    fn replicas_are_read_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=…\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(connected_replicas("role:master\r\n"), 0);
        assert_eq!("auto".parse(), Ok(WaitReplicas::Auto));
        assert_eq!("0".parse(), Ok(WaitReplicas::Count(0)));
        assert!("one".parse::<WaitReplicas>().is_err());
    }
}
