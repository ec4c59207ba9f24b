//! A small delayed-job queue on Redis: keyed jobs, batch claim with leases, retry with backoff,
//! dead letter, cancel. It knows nothing of NATS; the worker ([`crate::worker`]) gives it meaning.
//!
//! # Data layout
//!
//! Every key of one queue shares the hash tag `{<prefix>:<queue>}`, so each script touches one
//! Redis Cluster slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `{p:q}:due` | ZSET | job id → when it may be claimed (ms since the epoch): its due time, or its retry time |
//! | `{p:q}:leased` | ZSET | job id → lease expiry (ms) of a claimed job, which is also its claim's token |
//! | `{p:q}:jobs` | HASH | job id → `"<due_ms>:<attempts>:0"`: attempts counts the claims that ended (failed, or whose holder died) |
//! | `{p:q}:dead` | HASH | job id → JSON `{due, attempts, failed_at, reason}` |
//! | `{p:q}:cancelled` | ZSET | job id → when it was cancelled (ms); marks older than [`CANCELLED_TTL`] are pruned by every schedule and cancel, and the key expires [`CANCELLED_TTL`] after the last cancellation |
//! | `{p:q}:versions` | HASH | job id → version of the `order:created` that scheduled it, only when above 0 |
//! | `{p:q}:seq` | STRING | the last lease expiry given out; each claim's is greater |
//! | `{p:q}:wake` | channel | a message whenever the earliest due time moves earlier |
//!
//! A job is in exactly one of `due` or `leased` while it lives in `jobs`; the job id is the
//! whole job (the worker's id is the order id), so there is no payload to store.
//!
//! A claim writes only the lease: its expiry doubles as the claim's token, unique because each
//! claim's is greater than the last (`seq`). The record's third field, once a token, is always 0
//! now; records written by earlier versions parse the same.
//!
//! # Scripts
//!
//! Every operation is one Lua script, hence atomic: `EVALSHA`, or `EVAL` with the script's body
//! on a node that does not know it yet, which caches it there. Time is always Redis `TIME`, read
//! inside the script, so every replica agrees on "now".
//!
//! - `schedule.lua` (batch): a new id is added; a known id with the same due time is left alone
//!   (a redelivered event changes nothing, even mid-backoff); a known id with another due time is
//!   moved, and if it was leased the lease is dropped, so the old holder's `complete` no longer
//!   matches and cannot delete the moved job. A version older than the one that scheduled the
//!   job is ignored (`stale`): an older `order:created` handled after a newer one undoes nothing. Publishes on the wake channel when the earliest due
//!   time moved earlier. An id cancelled in the last [`CANCELLED_TTL`] is skipped: `order:created`
//!   and `order:cancelled` travel on separate consumers, so the cancellation may arrive first.
//! - `claim.lua` (batch): takes up to `limit` expired leases and due jobs and moves them to
//!   `leased` with expiry (and token) about `now + lease`; a reclaimed job's record counts its
//!   dead holder's claim. Returns them with their records, Redis' `now`, the next due time or
//!   lease expiry (the worker sleeps until then), and the number of jobs still pending.
//! - `complete.lua` (batch): deletes each job only if it is still leased under the given token.
//! - `retry.lua`: under the caller's token, reschedules at `now + delay`, counting the attempt
//!   unless the failure was a dependency's (see [`Queue::postpone`]), or at `max_attempts` moves
//!   the job to `dead`.
//! - `cancel.lua` (batch): removes jobs, waiting or leased, and records the ids in `cancelled`
//!   (pruning records older than [`CANCELLED_TTL`], and setting the key to expire that long
//!   after this cancellation). `schedule.lua` ignores marks past that age and prunes them after
//!   its writes. Both scripts write first what may grow memory, since at `maxmemory` Redis
//!   refuses only a script's first write: a schedule or cancel is then refused whole (and
//!   retried by the listener), never let through behind a prune.
//! - `requeue.lua`: dead jobs become due now with attempts reset.
//! - `stats.lua`: counts and the next due time, for inspection.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use common::telemetry::ErrorChain;

mod connection;

use connection::{Connection, Lua};
pub use connection::{RedisTarget, WAIT_TIMEOUT, WaitReplicas};

/// Most jobs one script call handles: Lua's `unpack` has a stack limit of a few thousand values.
pub const MAX_BATCH: usize = 1000;

/// Most bytes of a job id a log line shows (an order id has 24; intake refuses any other).
pub const ID_BYTES: usize = 64;

/// How long a cancelled id stays remembered (its "mark", about 130 bytes), so that its late
/// creation schedules nothing. Far longer than any redelivery of `order:created` (ack wait and
/// backoff are seconds to minutes), and short enough that a peer publishing cancellations cannot
/// grow Redis without bound: marks older than this are pruned by every schedule and cancel, and
/// the whole set expires this long after the last cancellation.
pub const CANCELLED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from a queue script: {0}")]
    Reply(String),
    /// The schedule call this request was batched into failed (every request in it gets this).
    #[error("the batched schedule call failed")]
    Batched(#[source] Arc<QueueError>),
    /// Fewer replicas than required confirmed a batch of schedules in time: the master holds
    /// them, but a failover now could lose them, so they do not count as stored yet.
    #[error(
        "{confirmed} of the {required} Redis replicas required (REDIS_WAIT_REPLICAS) confirmed the schedules within {timeout:?}"
    )]
    NotReplicated {
        required: u32,
        confirmed: u32,
        timeout: Duration,
    },
}

impl QueueError {
    /// Whether Redis refused the write for want of memory (`maxmemory` reached under
    /// `noeviction`): an outage of the queue, not a fault of the job.
    pub fn is_oom(&self) -> bool {
        match self {
            QueueError::Redis(e) => {
                e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
            }
            QueueError::Batched(inner) => inner.is_oom(),
            _ => false,
        }
    }
}

/// How long a write Redis refused for want of memory keeps [`Queue::ready`] failing, unless a
/// later write succeeds first: the listeners retry a refused event every few seconds, so a
/// longer silence means nothing is waiting to be written any more.
pub const OOM_REMEMBERED: Duration = Duration::from_secs(30);

/// The outcome of the last writes of this process (schedule and cancel), for [`Queue::ready`].
#[derive(Default)]
struct Writes {
    /// When a write was last refused with OOM, unless one succeeded since.
    refused_oom: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Writes {
    fn record<T>(&self, result: &Result<T, QueueError>) {
        let mut refused = self.refused_oom.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => *refused = None,
            Err(e) if e.is_oom() => *refused = Some(std::time::Instant::now()),
            Err(_) => {}
        }
    }

    /// How long ago a write was refused with OOM, if no write succeeded since and it is recent.
    fn refused_oom_ago(&self) -> Option<Duration> {
        let refused = self.refused_oom.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .map(|at| at.elapsed())
            .filter(|ago| *ago < OOM_REMEMBERED)
    }
}

/// What in an `INFO memory` reply makes the queue unfit to take schedules: memory used up to
/// `maxmemory` (writes are refused), or an `allkeys-*` policy under a `maxmemory` (jobs could be
/// evicted without a word). `None` when neither; `maxmemory` 0 means no limit.
fn memory_problem(info: &str) -> Option<String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|value| value.parse::<u64>().ok());
    let max = number("maxmemory").unwrap_or(0);
    if max == 0 {
        return None;
    }
    let used = number("used_memory").unwrap_or(0);
    if used >= max {
        return Some(format!(
            "Redis is out of memory: used_memory {used} bytes reaches maxmemory {max}; schedules are refused"
        ));
    }
    match field("maxmemory_policy") {
        Some(policy) if policy.starts_with("allkeys-") => Some(format!(
            "Redis maxmemory-policy is {policy}: at maxmemory it would evict jobs silently; use noeviction"
        )),
        _ => None,
    }
}

/// Where a queue lives: all its keys start with `{<prefix>:<name>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueName {
    /// Key prefix (`REDIS_KEY_PREFIX`), shared by every queue of the deployment.
    pub prefix: String,
    /// The queue's own name (`EXPIRATION_QUEUE`).
    pub name: String,
}

impl QueueName {
    /// The queue `name` under `prefix`.
    pub fn new(prefix: impl Into<String>, name: impl Into<String>) -> Self {
        QueueName {
            prefix: prefix.into(),
            name: name.into(),
        }
    }

    /// The hash tag every key of this queue starts with.
    pub fn tag(&self) -> String {
        format!("{{{}:{}}}", self.prefix, self.name)
    }
}

struct Keys {
    due: String,
    leased: String,
    jobs: String,
    dead: String,
    cancelled: String,
    versions: String,
    seq: String,
    wake: String,
}

impl Keys {
    /// Every key of the queue (the wake channel is not a key).
    fn all(&self) -> [&str; 7] {
        [
            &self.due,
            &self.leased,
            &self.jobs,
            &self.dead,
            &self.cancelled,
            &self.versions,
            &self.seq,
        ]
    }
}

struct Scripts {
    schedule: Lua,
    claim: Lua,
    complete: Lua,
    retry: Lua,
    cancel: Lua,
    requeue: Lua,
    stats: Lua,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            schedule: Lua::new(include_str!("schedule.lua")),
            claim: Lua::new(include_str!("claim.lua")),
            complete: Lua::new(include_str!("complete.lua")),
            retry: Lua::new(include_str!("retry.lua")),
            cancel: Lua::new(include_str!("cancel.lua")),
            requeue: Lua::new(include_str!("requeue.lua")),
            stats: Lua::new(include_str!("stats.lua")),
        }
    }
}

/// A handle on one queue. Cheap to clone; clones share the connection and the local wake-up.
#[derive(Clone)]
pub struct Queue {
    conn: Connection,
    /// The nodes to subscribe to wake-ups on: any node of a cluster hears every publish.
    nodes: Arc<Vec<String>>,
    replication: Replication,
    name: QueueName,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    wake: Arc<Notify>,
    batcher: mpsc::Sender<Request>,
    writes: Arc<Writes>,
}

/// How many replicas must confirm each batch of schedules, and the longest wait for them.
#[derive(Debug, Clone, Copy)]
struct Replication {
    required: u32,
    timeout: Duration,
}

impl Replication {
    /// Waits until `required` replicas of the master of `key` hold every write sent before.
    async fn confirm(&self, conn: &Connection, key: &str) -> Result<(), QueueError> {
        if self.required == 0 {
            return Ok(());
        }
        let confirmed = conn.clone().wait(key, self.required, self.timeout).await?;
        if confirmed < self.required {
            return Err(QueueError::NotReplicated {
                required: self.required,
                confirmed,
                timeout: self.timeout,
            });
        }
        Ok(())
    }
}

/// One job waiting to join the next batched schedule call (see [`Queue::schedule_versioned`]).
struct Request {
    id: String,
    due_ms: i64,
    version: u64,
    reply: oneshot::Sender<Result<Scheduled, QueueError>>,
}

impl NewJob for Request {
    fn id(&self) -> &str {
        &self.id
    }
    fn due_ms(&self) -> i64 {
        self.due_ms
    }
    fn version(&self) -> u64 {
        self.version
    }
}

/// What one schedule call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// Jobs that did not exist.
    pub added: u64,
    /// Jobs that existed with another due time and were moved.
    pub moved: u64,
    /// Jobs that existed with the same due time: nothing changed.
    pub unchanged: u64,
    /// The earliest due time moved earlier, and waiting workers were woken.
    pub woke: bool,
    /// Jobs cancelled before they were scheduled: not scheduled.
    pub skipped: u64,
    /// Jobs scheduled already by a newer version: left alone.
    pub stale: u64,
}

impl std::iter::Sum for Scheduled {
    fn sum<I: Iterator<Item = Scheduled>>(all: I) -> Scheduled {
        all.fold(Scheduled::default(), |total, one| Scheduled {
            added: total.added + one.added,
            moved: total.moved + one.moved,
            unchanged: total.unchanged + one.unchanged,
            woke: total.woke || one.woke,
            skipped: total.skipped + one.skipped,
            stale: total.stale + one.stale,
        })
    }
}

/// One job to schedule: `(id, due_ms)`, or `(id, due_ms, version)` where a job scheduled with
/// some version ignores any later schedule with a lower one. Without a version it is 0.
pub trait NewJob {
    /// The job's key.
    fn id(&self) -> &str;
    /// When it is due (ms since the epoch).
    fn due_ms(&self) -> i64;
    /// The version of the event that schedules it.
    fn version(&self) -> u64 {
        0
    }
}

impl<S: AsRef<str>> NewJob for (S, i64) {
    fn id(&self) -> &str {
        self.0.as_ref()
    }
    fn due_ms(&self) -> i64 {
        self.1
    }
}

impl<S: AsRef<str>> NewJob for (S, i64, u64) {
    fn id(&self) -> &str {
        self.0.as_ref()
    }
    fn due_ms(&self) -> i64 {
        self.1
    }
    fn version(&self) -> u64 {
        self.2
    }
}

/// A claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's key (the order id).
    pub id: String,
    /// When it was due (ms since the epoch).
    pub due_ms: i64,
    /// How many times it has been claimed, this claim included.
    pub attempts: u32,
    /// The lease token: `complete` and `retry` act only while the job is leased under it.
    pub token: u64,
}

/// The result of one claim.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The claimed jobs, expired leases first.
    pub jobs: Vec<Job>,
    /// How many of them were taken over from an expired lease.
    pub reclaimed: usize,
    /// Redis' clock at the claim, in microseconds since the epoch.
    pub now_us: i64,
    /// The next due time or lease expiry left in the queue (ms since the epoch).
    pub next_ms: Option<i64>,
    /// Jobs still waiting or leased after this claim (these included).
    pub pending: u64,
    /// When the reply arrived, to turn Redis' clock into local elapsed time.
    pub received: std::time::Instant,
}

impl Claim {
    /// How long from the claim until the next job is due (zero if it is due already).
    pub fn next_in(&self) -> Option<Duration> {
        self.next_ms.map(|next| {
            let micros = (next * 1000 - self.now_us).max(0) as u64;
            Duration::from_micros(micros).saturating_sub(self.received.elapsed())
        })
    }

    /// How late `job` is now, by Redis' clock at the claim plus the time elapsed since.
    pub fn lateness(&self, job: &Job) -> Duration {
        let at_claim = (self.now_us - job.due_ms * 1000).max(0) as u64;
        Duration::from_micros(at_claim) + self.received.elapsed()
    }
}

/// What `retry` did with a job that failed to fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Due again after the delay.
    Rescheduled,
    /// Out of attempts: moved to the dead-letter set.
    DeadLettered,
    /// The job was no longer leased under our token (moved, cancelled or taken over): untouched.
    LeaseLost,
}

/// A job in the dead-letter set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct DeadJob {
    /// The job's key (the order id).
    #[serde(skip)]
    pub id: String,
    /// When it was due (ms).
    pub due: i64,
    /// How many times it was claimed.
    pub attempts: u32,
    /// When it was moved here (ms).
    pub failed_at: i64,
    /// The last failure.
    pub reason: String,
}

/// Counts of a queue at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting for their due time (or retry time).
    pub waiting: u64,
    /// Jobs claimed by a worker and not yet completed.
    pub leased: u64,
    /// Jobs in the dead-letter set.
    pub dead: u64,
    /// The earliest waiting job's due time (ms).
    pub next_due_ms: Option<i64>,
    /// Redis' clock (ms).
    pub now_ms: i64,
}

impl Stats {
    /// Jobs not yet fired: waiting plus leased.
    pub fn pending(&self) -> u64 {
        self.waiting + self.leased
    }
}

/// Converts a due time to the queue's unit, milliseconds since the epoch (never negative).
pub fn to_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().max(0)
}

/// Converts the queue's milliseconds back to a time.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Queue {
    /// Connects to Redis at `url` (one `redis://` URL, or a comma-separated list of a cluster's
    /// nodes) and returns the queue `name` there.
    pub async fn connect(url: &str, name: QueueName) -> Result<Self, QueueError> {
        Self::open(&RedisTarget::parse(url), name).await
    }

    /// Connects to Redis as `target` says and returns the queue `name` there.
    pub async fn open(target: &RedisTarget, name: QueueName) -> Result<Self, QueueError> {
        let conn = Connection::open(target).await?;
        let tag = name.tag();
        let keys = Keys {
            due: format!("{tag}:due"),
            leased: format!("{tag}:leased"),
            jobs: format!("{tag}:jobs"),
            dead: format!("{tag}:dead"),
            cancelled: format!("{tag}:cancelled"),
            versions: format!("{tag}:versions"),
            seq: format!("{tag}:seq"),
            wake: format!("{tag}:wake"),
        };
        let (keys, scripts, wake) = (
            Arc::new(keys),
            Arc::new(Scripts::load()),
            Arc::new(Notify::new()),
        );
        let required = match target.replicas {
            WaitReplicas::Count(count) => count,
            WaitReplicas::Auto => match conn.clone().replicas_of(&keys.due).await {
                Ok(replicas) => replicas.min(1),
                // A managed Redis may refuse INFO: say what that means rather than not start.
                Err(e) if e.kind() != redis::ErrorKind::Io => {
                    tracing::warn!(
                        error = %ErrorChain(&e),
                        "cannot read INFO replication, so REDIS_WAIT_REPLICAS=auto waits for no replica; set REDIS_WAIT_REPLICAS to the number to wait for"
                    );
                    0
                }
                Err(e) => return Err(e.into()),
            },
        };
        let replication = Replication {
            required,
            timeout: target.wait_timeout,
        };
        let (batcher, requests) = mpsc::channel(4 * MAX_BATCH);
        let writes = Arc::new(Writes::default());
        // Ends when the last clone of the queue (the last sender) is dropped.
        tokio::spawn(batch_schedules(
            conn.clone(),
            replication,
            keys.clone(),
            scripts.clone(),
            wake.clone(),
            writes.clone(),
            requests,
        ));
        Ok(Queue {
            conn,
            nodes: Arc::new(target.nodes.clone()),
            replication,
            name,
            keys,
            scripts,
            wake,
            batcher,
            writes,
        })
    }

    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// Replicas that must confirm each batch of schedules before it counts as stored.
    pub fn replicas_required(&self) -> u32 {
        self.replication.required
    }

    /// Whether the queue lives on a Redis Cluster.
    pub fn on_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Resolves when a job may have become due earlier than the last claim said: this process
    /// scheduled an earlier job, or another replica did (through the wake channel, see
    /// [`Queue::watch_wakes`]). A wake-up sent while nobody waits is kept for the next waiter.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Wakes this process' waiter in [`Queue::woken`].
    pub fn wake_local(&self) {
        self.wake.notify_one();
    }

    /// Answers whether Redis answers.
    /// On a cluster, the master holding the queue: the other nodes may be down without harm.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.conn.clone().ping(&self.keys.due).await?;
        Ok(())
    }

    /// Whether the queue can take schedules now (the worker's `/readyz`): Redis answers, its
    /// memory is below `maxmemory`, its eviction policy cannot drop jobs, and no schedule or
    /// cancel of this process was refused for want of memory since the last one that succeeded
    /// (within [`OOM_REMEMBERED`]). The reason otherwise. On a cluster, the master holding the
    /// queue is asked.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some(ago) = self.writes.refused_oom_ago() {
            return Err(format!(
                "Redis refused a write for want of memory (maxmemory) {:.1} s ago; the events are held and retried",
                ago.as_secs_f64()
            ));
        }
        match self.conn.clone().info(&self.keys.due, "memory").await {
            Ok(info) => match memory_problem(&info) {
                Some(problem) => Err(problem),
                None => Ok(()),
            },
            // A managed Redis may refuse INFO: it answered, which is all a ping would prove.
            Err(e) if matches!(e.code(), Some("ERR" | "NOPERM")) => Ok(()),
            Err(e) => Err(ErrorChain(&e).to_string()),
        }
    }

    /// Schedules (or moves) job `id` to be due at `due_ms`, as version 0.
    pub async fn schedule(&self, id: &str, due_ms: i64) -> Result<Scheduled, QueueError> {
        self.schedule_versioned(id, due_ms, 0).await
    }

    /// Schedules (or moves) job `id` to be due at `due_ms`, unless a higher `version` scheduled
    /// it. Concurrent calls share script calls: whatever arrives while one call runs goes in the
    /// next, so a burst of `order:created` costs a round trip per batch, not per event.
    pub async fn schedule_versioned(
        &self,
        id: &str,
        due_ms: i64,
        version: u64,
    ) -> Result<Scheduled, QueueError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            id: id.to_owned(),
            due_ms,
            version,
            reply,
        };
        let lost = || QueueError::Reply("the schedule batcher stopped".into());
        self.batcher.send(request).await.map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }

    /// Schedules many jobs, [`MAX_BATCH`] per script call, the calls pipelined on one connection;
    /// returns once the replicas required hold them all.
    pub async fn schedule_many<J: NewJob>(&self, jobs: &[J]) -> Result<Scheduled, QueueError> {
        let calls = jobs
            .chunks(MAX_BATCH)
            .map(|chunk| schedule_call(&self.conn, &self.keys, &self.scripts, chunk));
        let total: Scheduled = futures::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .sum();
        self.replication.confirm(&self.conn, &self.keys.due).await?;
        if total.woke {
            self.wake_local();
        }
        Ok(total)
    }

    /// Claims up to `limit` (at most [`MAX_BATCH`]) due jobs or expired leases, leasing them
    /// for `lease`.
    pub async fn claim(&self, limit: usize, lease: Duration) -> Result<Claim, QueueError> {
        let reply: Vec<Value> = self
            .scripts
            .claim
            .call()
            .key(&self.keys.due)
            .key(&self.keys.leased)
            .key(&self.keys.jobs)
            .key(&self.keys.seq)
            .arg(limit.clamp(1, MAX_BATCH))
            .arg(lease.as_millis().max(1) as u64)
            .invoke(&self.conn)
            .await?;
        let received = std::time::Instant::now();
        parse_claim(reply, received)
    }

    /// Deletes fired jobs still leased under their token; returns how many were deleted (the
    /// others were moved, cancelled or taken over meanwhile).
    pub async fn complete(&self, done: &[(String, u64)]) -> Result<u64, QueueError> {
        let mut deleted = 0;
        for chunk in done.chunks(MAX_BATCH) {
            let mut invocation = self.scripts.complete.call();
            invocation
                .key(&self.keys.leased)
                .key(&self.keys.jobs)
                .key(&self.keys.versions);
            for (id, token) in chunk {
                invocation.arg(id).arg(*token);
            }
            deleted += invocation.invoke::<u64>(&self.conn).await?;
        }
        Ok(deleted)
    }

    /// A leased job failed to fire: due again in `delay`, or dead-lettered with `reason` once it
    /// has been claimed `max_attempts` times.
    pub async fn retry(
        &self,
        job: &Job,
        delay: Duration,
        max_attempts: u32,
        reason: &str,
    ) -> Result<RetryOutcome, QueueError> {
        self.reschedule(job, delay, max_attempts, reason, false)
            .await
    }

    /// A leased job could not fire through no fault of its own (a dependency is down): due
    /// again in `delay`, its claim not counted as an attempt, never dead-lettered.
    pub async fn postpone(&self, job: &Job, delay: Duration) -> Result<RetryOutcome, QueueError> {
        self.reschedule(job, delay, u32::MAX, "", true).await
    }

    async fn reschedule(
        &self,
        job: &Job,
        delay: Duration,
        max_attempts: u32,
        reason: &str,
        postpone: bool,
    ) -> Result<RetryOutcome, QueueError> {
        let outcome: u8 = self
            .scripts
            .retry
            .call()
            .key(&self.keys.due)
            .key(&self.keys.leased)
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .key(&self.keys.versions)
            .arg(&job.id)
            .arg(job.token)
            .arg(delay.as_millis() as u64)
            .arg(max_attempts.max(1))
            .arg(reason)
            .arg(&self.keys.wake)
            .arg(if postpone { "1" } else { "0" })
            .invoke(&self.conn)
            .await?;
        match outcome {
            0 => Ok(RetryOutcome::LeaseLost),
            1 => {
                // Our own loop may be asleep past the retry time.
                self.wake_local();
                Ok(RetryOutcome::Rescheduled)
            }
            2 => Ok(RetryOutcome::DeadLettered),
            other => Err(QueueError::Reply(format!("retry returned {other}"))),
        }
    }

    /// Removes jobs whether waiting or leased, and keeps them from being scheduled again for
    /// [`CANCELLED_TTL`]; returns how many existed.
    pub async fn cancel(&self, ids: &[&str]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        for chunk in ids.chunks(MAX_BATCH) {
            let called = self
                .scripts
                .cancel
                .call()
                .key(&self.keys.due)
                .key(&self.keys.leased)
                .key(&self.keys.jobs)
                .key(&self.keys.cancelled)
                .key(&self.keys.versions)
                .arg(CANCELLED_TTL.as_millis() as u64)
                .arg(chunk)
                .invoke::<u64>(&self.conn)
                .await
                .map_err(QueueError::from);
            self.writes.record(&called);
            removed += called?;
        }
        Ok(removed)
    }

    /// Makes dead-lettered jobs due now (all of them when `ids` is empty); returns how many.
    pub async fn requeue_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let count = self
            .scripts
            .requeue
            .call()
            .key(&self.keys.due)
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .arg(&self.keys.wake)
            .arg(ids)
            .invoke::<u64>(&self.conn)
            .await?;
        if count > 0 {
            self.wake_local();
        }
        Ok(count)
    }

    /// Counts and the next due time.
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let (waiting, leased, dead, next_due, now_ms): (u64, u64, u64, i64, i64) = self
            .scripts
            .stats
            .call()
            .key(&self.keys.due)
            .key(&self.keys.leased)
            .key(&self.keys.dead)
            .invoke(&self.conn)
            .await?;
        Ok(Stats {
            waiting,
            leased,
            dead,
            next_due_ms: (next_due >= 0).then_some(next_due),
            now_ms,
        })
    }

    /// The dead-lettered jobs, oldest failure first.
    pub async fn dead(&self) -> Result<Vec<DeadJob>, QueueError> {
        let mut conn = self.conn.clone();
        let records: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.keys.dead)
            .query_async(&mut conn)
            .await?;
        let mut dead = records
            .into_iter()
            .map(|(id, record)| {
                let mut job: DeadJob = serde_json::from_str(&record).map_err(|e| {
                    QueueError::Reply(format!("dead-letter record of {id} is `{record}`: {e}"))
                })?;
                job.id = id;
                Ok(job)
            })
            .collect::<Result<Vec<_>, QueueError>>()?;
        dead.sort_by(|a, b| (a.failed_at, &a.id).cmp(&(b.failed_at, &b.id)));
        Ok(dead)
    }

    /// Deletes every key of the queue (tests and benchmarks clean up with it).
    pub async fn delete(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let keys = &self.keys;
        redis::cmd("DEL")
            .arg(&keys.all()[..])
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Listens on the wake channel until `shutdown`, waking this process' waiter on each
    /// message. Reconnects by itself (on a cluster, to the next node given: every node hears
    /// every publish); after each (re)subscription it wakes the waiter too, since messages sent
    /// while disconnected are lost.
    pub async fn watch_wakes(self, shutdown: CancellationToken) {
        use futures::StreamExt;
        let mut pause = Duration::from_millis(50);
        let mut turn = 0;
        while !shutdown.is_cancelled() {
            let node = &self.nodes[turn % self.nodes.len()];
            turn += 1;
            let subscribed = async {
                let mut pubsub = redis::Client::open(node.as_str())?
                    .get_async_pubsub()
                    .await?;
                pubsub.subscribe(&self.keys.wake).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                subscribed = subscribed => subscribed,
            };
            match pubsub {
                Ok(pubsub) => {
                    pause = Duration::from_millis(50);
                    tracing::debug!(channel = %self.keys.wake, "subscribed to wake-ups");
                    self.wake_local();
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(_) => self.wake_local(),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!(channel = %self.keys.wake, "wake-up subscription lost; resubscribing");
                }
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), ?pause, "cannot subscribe to wake-ups; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// One schedule script call for at most [`MAX_BATCH`] jobs: each job's outcome as a [`Scheduled`]
/// of its own (with the call's `woke`). Their sum is the call's.
async fn schedule_call<J: NewJob>(
    conn: &Connection,
    keys: &Keys,
    scripts: &Scripts,
    chunk: &[J],
) -> Result<Vec<Scheduled>, QueueError> {
    let mut invocation = scripts.schedule.call();
    invocation
        .key(&keys.due)
        .key(&keys.leased)
        .key(&keys.jobs)
        .key(&keys.dead)
        .key(&keys.cancelled)
        .key(&keys.versions)
        .arg(&keys.wake)
        .arg(CANCELLED_TTL.as_millis() as u64);
    for job in chunk {
        invocation
            .arg(job.id())
            .arg(job.due_ms().max(0))
            .arg(job.version());
    }
    let (woke, outcomes) = invocation.invoke::<(u8, String)>(conn).await?;
    let woke = woke == 1;
    let each = outcomes
        .chars()
        .map(|outcome| {
            let mut one = Scheduled {
                woke,
                ..Scheduled::default()
            };
            match outcome {
                'a' => one.added = 1,
                'm' => one.moved = 1,
                'u' => one.unchanged = 1,
                's' => one.skipped = 1,
                'o' => one.stale = 1,
                other => {
                    return Err(QueueError::Reply(format!(
                        "schedule: unknown outcome `{other}`"
                    )));
                }
            }
            Ok(one)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if each.len() != chunk.len() {
        return Err(QueueError::Reply(format!(
            "schedule: {} outcomes for {} jobs",
            each.len(),
            chunk.len()
        )));
    }
    Ok(each)
}

/// Serves [`Queue::schedule_versioned`]: one script call at a time, each taking every request
/// that arrived meanwhile (up to [`MAX_BATCH`]), answered once the replicas required hold it.
async fn batch_schedules(
    conn: Connection,
    replication: Replication,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    wake: Arc<Notify>,
    writes: Arc<Writes>,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let called = schedule_call(&conn, &keys, &scripts, &batch).await;
        writes.record(&called);
        if let Ok(each) = &called
            && each.first().is_some_and(|one| one.woke)
        {
            wake.notify_one();
        }
        let confirmed = match called {
            Ok(each) => replication.confirm(&conn, &keys.due).await.map(|()| each),
            Err(e) => Err(e),
        };
        match confirmed {
            Ok(each) => {
                for (request, scheduled) in batch.drain(..).zip(each) {
                    let _ = request.reply.send(Ok(scheduled));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(QueueError::Batched(e.clone())));
                }
            }
        }
    }
}

/// A job record `due_ms:attempts:token` as `(due_ms, attempts)`.
fn parse_record(record: &[u8]) -> Option<(i64, u32)> {
    let record = std::str::from_utf8(record).ok()?;
    let mut fields = record.split(':');
    let due = fields.next()?.parse().ok()?;
    let attempts = fields.next()?.parse().ok()?;
    Some((due, attempts))
}

fn parse_claim(reply: Vec<Value>, received: std::time::Instant) -> Result<Claim, QueueError> {
    let bad = |what: &str| QueueError::Reply(format!("claim: {what}"));
    let int = |value: &Value| -> Result<i64, QueueError> {
        match value {
            Value::Int(n) => Ok(*n),
            Value::BulkString(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a number was expected")),
            _ => Err(bad("a number was expected")),
        }
    };
    if reply.len() < 6 || !(reply.len() - 6).is_multiple_of(2) {
        return Err(bad(&format!("{} values", reply.len())));
    }
    let now_us = int(&reply[0])? * 1_000_000 + int(&reply[1])?;
    let token = int(&reply[2])? as u64;
    let next_ms = int(&reply[3])?;
    let pending = int(&reply[4])? as u64;
    let reclaimed = int(&reply[5])? as usize;
    let jobs = reply[6..]
        .chunks(2)
        .map(|job| {
            let id = match &job[0] {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => return Err(bad("a job id was expected")),
            };
            // A job in a set without its record can only come from a hand edit: it fires now,
            // never dropped.
            let (due_ms, ended) = match &job[1] {
                Value::BulkString(record) => parse_record(record)
                    .ok_or_else(|| bad(&format!("the record of {id} is not due:attempts:token")))?,
                Value::Nil => (now_us / 1000, 0),
                _ => return Err(bad("a job record was expected")),
            };
            Ok(Job {
                id,
                due_ms,
                attempts: ended.saturating_add(1),
                token,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Claim {
        jobs,
        reclaimed,
        now_us,
        next_ms: (next_ms >= 0).then_some(next_ms),
        pending,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        assert_eq!(
            QueueName::new("ticketing", "expiration").tag(),
            "{ticketing:expiration}"
        );
    }

    #[test]
    fn memory_at_maxmemory_or_an_allkeys_policy_makes_the_queue_unready() {
        let info = |used: u64, max: u64, policy: &str| {
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\nmaxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        assert_eq!(memory_problem(&info(5_000_000, 0, "allkeys-lru")), None);
        assert_eq!(
            memory_problem(&info(5_000_000, 6_000_000, "noeviction")),
            None
        );
        assert_eq!(
            memory_problem(&info(5_000_000, 6_000_000, "volatile-lru")),
            None
        );
        let full = memory_problem(&info(6_000_000, 6_000_000, "noeviction")).unwrap();
        assert!(full.contains("maxmemory 6000000"), "{full}");
        let evicting = memory_problem(&info(1, 6_000_000, "allkeys-lfu")).unwrap();
        assert!(evicting.contains("allkeys-lfu"), "{evicting}");
    }

    #[test]
    fn a_claim_reply_becomes_jobs_with_the_batch_token() {
        let reply = vec![
            Value::BulkString(b"1700000000".to_vec()),
            Value::BulkString(b"250000".to_vec()),
            Value::Int(7),
            Value::Int(1_700_000_001_000),
            Value::Int(3),
            Value::Int(0),
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"1700000000000:0:0".to_vec()),
        ];
        let claim = parse_claim(reply, std::time::Instant::now()).unwrap();
        assert_eq!(claim.now_us, 1_700_000_000_250_000);
        assert_eq!(
            claim.jobs,
            [Job {
                id: "a".into(),
                due_ms: 1_700_000_000_000,
                attempts: 1,
                token: 7
            }]
        );
        assert_eq!(claim.next_ms, Some(1_700_000_001_000));
        assert!(claim.lateness(&claim.jobs[0]) >= Duration::from_millis(250));
        assert!(claim.next_in().unwrap() <= Duration::from_millis(750));
        assert!(parse_claim(vec![Value::Int(1)], std::time::Instant::now()).is_err());
    }

    #[test]
    fn a_record_counts_the_ended_claims_and_the_worker_adds_this_one() {
        let reply = vec![
            Value::BulkString(b"1700000000".to_vec()),
            Value::BulkString(b"0".to_vec()),
            Value::BulkString(b"1700000030000".to_vec()),
            Value::Int(-1),
            Value::Int(2),
            Value::Int(0),
            // Written by an earlier version, whose claims stamped their token in the record.
            Value::BulkString(b"old".to_vec()),
            Value::BulkString(b"1600000000000:2:41".to_vec()),
            // No record (a hand edit): fired now, never dropped.
            Value::BulkString(b"bare".to_vec()),
            Value::Nil,
        ];
        let claim = parse_claim(reply, std::time::Instant::now()).unwrap();
        let got: Vec<_> = claim
            .jobs
            .iter()
            .map(|job| (job.id.as_str(), job.due_ms, job.attempts, job.token))
            .collect();
        assert_eq!(
            got,
            [
                ("old", 1_600_000_000_000, 3, 1_700_000_030_000),
                ("bare", 1_700_000_000_000, 1, 1_700_000_030_000)
            ]
        );
        assert_eq!(claim.next_ms, None);
        assert_eq!(parse_record(b"12:x:0"), None);
    }
}
