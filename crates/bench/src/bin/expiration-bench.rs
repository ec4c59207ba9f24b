//! `expiration-bench`: how fast jobs go in and come out, and how late they fire.
//!
//! ```text
//! expiration-bench burst  [--jobs N]                  [--scope queue|worker] [options]
//! expiration-bench steady [--rate R] [--seconds S]    [--scope queue|worker] [options]
//! options: --redis-url URL  --nats-url URL  --concurrency C    (expiration-bench --help)
//! ```
//!
//! `burst`: N jobs all due at one moment a little ahead; `add_per_s` is how fast they went in,
//! `drain_per_s` how fast they came out once due. `steady`: R jobs a second for S seconds, each
//! due 1 s after it was added. Scope `queue` is the queue and the firing loop with a no-op
//! handler; scope `worker` is the whole worker, the `expiration` binary run as a process of its
//! own (`--worker-bin`), `order:created` in over NATS and `expiration:complete` out, timed by a
//! subscriber here. `rss_mb` is the worker's peak resident set (this process at scope queue, the
//! `expiration` process at scope worker), `bench_rss_mb` this process'. One JSON line per run on
//! stdout. Every run uses keys and a stream of its own and deletes them at the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use common::Subject;
use common::bus::{self, StreamSpec};
use common::config::{Settings, parse};
use common::events::{OrderCreated, OrderCreatedTicket, OrderStatus};
use common::testing::servers::{self, ServiceProcess};
use expiration::config::Config;
use expiration::metrics::Metrics;
use expiration::queue::{Job, MAX_BATCH, Queue, QueueName, RedisTarget, WaitReplicas};
use expiration::worker::{BoxError, JobHandler, Worker, WorkerOptions};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// How fast jobs go in and come out of the expiration queue, and how late they fire; one JSON
/// line per run on stdout.
#[derive(Debug, Parser)]
#[command(name = "expiration-bench", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    mode: ModeArgs,
}

impl Settings for Cli {}

#[derive(Debug, Subcommand)]
enum ModeArgs {
    /// N jobs all due at one moment a little ahead: how fast they go in, and come out once due
    Burst {
        /// How many jobs
        #[arg(long, default_value = "20000", value_parser = parse::positive::<usize>)]
        jobs: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// R jobs a second for S seconds, each due 1 s after it was added: how late they fire
    Steady {
        /// Jobs added per second
        #[arg(long, default_value = "1000", value_parser = parse::positive::<usize>)]
        rate: usize,
        /// How long to add jobs, in seconds
        #[arg(long, default_value = "10", value_parser = parse::positive::<u64>)]
        seconds: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Debug, clap::Args)]
struct CommonArgs {
    /// `queue`: the queue and firing loop with a no-op handler; `worker`: the whole worker, order:created in over NATS and expiration:complete out
    #[arg(long, value_enum, default_value = "queue")]
    scope: Scope,
    /// Redis to use
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:16379"
    )]
    redis_url: String,
    /// Replicas each batch of schedules waits for (REDIS_WAIT_REPLICAS): auto, or a number
    #[arg(long = "redis-wait-replicas", default_value = "auto")]
    redis_wait_replicas: WaitReplicas,
    /// NATS to use (scope worker)
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:14222"
    )]
    nats_url: String,
    /// Jobs fired at once
    #[arg(long, default_value = "50", value_parser = parse::positive::<usize>)]
    concurrency: usize,
    /// The expiration binary run at scope worker [default: `expiration` beside this program]
    #[arg(long = "worker-bin")]
    worker_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Burst,
    Steady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scope {
    Queue,
    Worker,
}

#[derive(Debug, Clone)]
struct Args {
    mode: Mode,
    scope: Scope,
    jobs: usize,
    rate: usize,
    seconds: u64,
    redis_url: String,
    redis_wait_replicas: WaitReplicas,
    nats_url: String,
    concurrency: usize,
    worker_bin: PathBuf,
}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        let (mode, jobs, rate, seconds, common) = match cli.mode {
            ModeArgs::Burst { jobs, common } => (Mode::Burst, jobs, 0, 0, common),
            ModeArgs::Steady {
                rate,
                seconds,
                common,
            } => (Mode::Steady, 0, rate, seconds, common),
        };
        Args {
            mode,
            scope: common.scope,
            jobs,
            rate,
            seconds,
            redis_url: common.redis_url,
            redis_wait_replicas: common.redis_wait_replicas,
            nats_url: common.nats_url,
            concurrency: common.concurrency,
            worker_bin: common.worker_bin.unwrap_or_else(beside_this_program),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from(Cli::load());
    if args.scope == Scope::Worker && !args.worker_bin.is_file() {
        eprintln!(
            "--worker-bin: {} is missing: build it (cargo build --release -p expiration) or name another",
            args.worker_bin.display()
        );
        std::process::exit(2);
    }
    let run = Run::start(&args).await?;
    let result = match args.mode {
        Mode::Burst => burst(&args, &run).await,
        Mode::Steady => steady(&args, &run).await,
    };
    let rss_mb = run.worker_peak_rss_mb();
    let cleaned = run.clean().await;
    let report = result?;
    cleaned?;
    println!("{}", report.json(&args, rss_mb));
    Ok(())
}

/// `expiration` in the directory of this program (both are built into the same target dir).
fn beside_this_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("expiration")))
        .unwrap_or_else(|| PathBuf::from("expiration"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// When each fired job arrived and how late it was.
#[derive(Default)]
struct Record {
    fired: AtomicUsize,
    late_ms: Mutex<Vec<f64>>,
    last_fire: Mutex<Option<Instant>>,
}

impl Record {
    fn fire(&self, due_ms: i64) {
        let late = (now_us() - due_ms * 1000) as f64 / 1000.0;
        self.late_ms.lock().unwrap().push(late);
        *self.last_fire.lock().unwrap() = Some(Instant::now());
        self.fired.fetch_add(1, Ordering::Relaxed);
    }

    async fn wait_for(&self, count: usize, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.fired.load(Ordering::Relaxed) < count {
            if start.elapsed() > deadline {
                bail!(
                    "only {} of {count} jobs fired within {deadline:?}",
                    self.fired.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// The queue-scope handler: fires nothing, records lateness.
struct NoOp(Arc<Record>);

impl JobHandler for NoOp {
    async fn fire(&self, job: &Job) -> Result<(), BoxError> {
        self.0.fire(job.due_ms);
        Ok(())
    }
}

/// Everything one run set up, to feed jobs in and clean up after.
struct Run {
    queue: Queue,
    record: Arc<Record>,
    shutdown: CancellationToken,
    /// Scope queue: the firing loop in this process.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Scope worker: the `expiration` binary, a process of its own.
    worker: Option<ServiceProcess>,
    /// Worker scope: the stream the jobs come in on.
    nats: Option<(async_nats::jetstream::Context, StreamSpec)>,
    /// Worker scope: due time of each order, by the order id's number.
    dues: Arc<Mutex<HashMap<u64, i64>>>,
}

impl Run {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let name = QueueName::new("bench", format!("run-{}-{}", std::process::id(), now_ms()));
        let record = Arc::new(Record::default());
        let shutdown = CancellationToken::new();
        let dues = Arc::new(Mutex::new(HashMap::new()));
        // The queue's handle: the firing loop's at scope queue, else for counting and clean-up.
        let target = RedisTarget {
            replicas: args.redis_wait_replicas,
            ..RedisTarget::parse(&args.redis_url)
        };
        let queue = Queue::open(&target, name.clone())
            .await
            .context("cannot reach Redis")?;
        match args.scope {
            Scope::Queue => {
                let options = WorkerOptions {
                    concurrency: args.concurrency,
                    ..WorkerOptions::default()
                };
                let worker = Worker::new(
                    queue.clone(),
                    NoOp(record.clone()),
                    options,
                    Metrics::default(),
                );
                let task = tokio::spawn({
                    let queue = queue.clone();
                    let shutdown = shutdown.clone();
                    async move {
                        let wakes = tokio::spawn(queue.watch_wakes(shutdown.clone()));
                        worker.run(shutdown).await;
                        let _ = wakes.await;
                    }
                });
                Ok(Run {
                    queue,
                    record,
                    shutdown,
                    task: Some(task),
                    worker: None,
                    nats: None,
                    dues,
                })
            }
            Scope::Worker => {
                let stream = name.name.clone();
                let ops_port = servers::free_port();
                let env: Vec<(String, String)> = [
                    ("NATS_URL", args.nats_url.clone()),
                    ("NATS_TRANSPORT", "jetstream".into()),
                    // As the manifests run it.
                    ("LOG_FORMAT", "json".into()),
                    ("NATS_CLUSTER_ID", stream.clone()),
                    ("NATS_SUBJECT_PREFIX", format!("{stream}.")),
                    ("REDIS_URL", args.redis_url.clone()),
                    ("REDIS_KEY_PREFIX", name.prefix.clone()),
                    ("EXPIRATION_QUEUE", name.name.clone()),
                    ("OPS_PORT", ops_port.to_string()),
                    ("EXPIRATION_CONCURRENCY", args.concurrency.to_string()),
                    (
                        "REDIS_WAIT_REPLICAS",
                        match args.redis_wait_replicas {
                            WaitReplicas::Auto => "auto".into(),
                            WaitReplicas::Count(count) => count.to_string(),
                        },
                    ),
                ]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect();
                let spec = {
                    let lookup: HashMap<_, _> = env.iter().cloned().collect();
                    Config::from_lookup(|key| lookup.get(key).cloned())?
                        .nats
                        .stream()
                };
                // The service binary itself, logging as it would in a pod (to a file here).
                let logs = common::testing::temp_dir("expiration-bench");
                let worker =
                    ServiceProcess::start("expiration", &args.worker_bin, env, ops_port, &logs)
                        .await
                        .map_err(|e| anyhow::anyhow!("the worker did not start: {e}"))?;
                let client = async_nats::connect(args.nats_url.as_str()).await?;
                let js = async_nats::jetstream::new(client.clone());
                bus::ensure_stream(&js, &spec).await?;
                // Time each expiration:complete as it arrives, as a peer service would see it.
                let mut arrivals = client
                    .subscribe(spec.subject(Subject::ExpirationComplete))
                    .await?;
                let (listen_record, listen_dues) = (record.clone(), dues.clone());
                tokio::spawn(async move {
                    while let Some(message) = arrivals.next().await {
                        let Ok(event) = serde_json::from_slice::<common::events::ExpirationComplete>(
                            &message.payload,
                        ) else {
                            continue;
                        };
                        let n = u64::from_str_radix(&event.order_id, 16).unwrap_or(u64::MAX);
                        let due = listen_dues.lock().unwrap().get(&n).copied();
                        if let Some(due) = due {
                            listen_record.fire(due);
                        }
                    }
                });
                Ok(Run {
                    queue,
                    record,
                    shutdown,
                    task: None,
                    worker: Some(worker),
                    nats: Some((js, spec)),
                    dues,
                })
            }
        }
    }

    /// Adds jobs `first..first + count`, all due at `due_ms`.
    async fn add(
        &self,
        args: &Args,
        first: u64,
        count: usize,
        due_ms: impl Fn(u64) -> i64,
    ) -> anyhow::Result<()> {
        let ids = first..first + count as u64;
        match &self.nats {
            None => {
                // Chunks built as they are sent, a few in flight: pipelined without holding
                // every job in memory at once.
                futures::stream::iter(ids.collect::<Vec<u64>>().chunks(MAX_BATCH))
                    .map(|chunk| {
                        let jobs: Vec<(String, i64)> = chunk
                            .iter()
                            .map(|n| (format!("{n:024x}"), due_ms(*n)))
                            .collect();
                        async move { self.queue.schedule_many(&jobs).await }
                    })
                    .buffer_unordered(8)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
            }
            Some((js, spec)) => {
                let jobs: Vec<(String, i64)> =
                    ids.map(|n| (format!("{n:024x}"), due_ms(n))).collect();
                {
                    let mut dues = self.dues.lock().unwrap();
                    for (n, (_, due)) in (first..).zip(&jobs) {
                        dues.insert(n, *due);
                    }
                }
                // Up to `concurrency` publishes awaiting their ack at once.
                let publisher = bus::Publisher::new(js.clone(), spec.clone(), None);
                futures::stream::iter(jobs)
                    .map(|(id, due)| {
                        let publisher = publisher.clone();
                        async move { publisher.publish(&order(id, due)).await }
                    })
                    .buffer_unordered(args.concurrency)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
            }
        }
        Ok(())
    }

    /// The worker's peak resident set in MB: this process at scope queue, the `expiration`
    /// process at scope worker.
    fn worker_peak_rss_mb(&self) -> f64 {
        match &self.worker {
            Some(worker) => worker.pid().map(peak_rss_mb).unwrap_or(0.0),
            None => peak_rss_mb(std::process::id()),
        }
    }

    /// Stops the worker (it must exit 0 on SIGTERM) and deletes what the run made.
    async fn clean(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let stopped = match self.worker.as_mut() {
            Some(worker) => match worker.terminate().await {
                Ok(Some(0)) => Ok(()),
                Ok(code) => Err(anyhow::anyhow!(
                    "the worker exited with {code:?} on SIGTERM; log:\n{}",
                    worker.log_tail(20)
                )),
                Err(e) => Err(anyhow::anyhow!("the worker did not stop: {e}")),
            },
            None => Ok(()),
        };
        if let Some(worker) = self.worker.take() {
            let logs = worker.log_path().parent().map(PathBuf::from);
            drop(worker);
            if let Some(logs) = logs {
                let _ = std::fs::remove_dir(logs);
            }
        }
        let _ = self.queue.delete().await;
        if let Some((js, spec)) = &self.nats {
            let _ = js.delete_stream(&spec.name).await;
        }
        stopped
    }
}

fn order(id: String, due_ms: i64) -> OrderCreated {
    OrderCreated {
        id,
        version: 0,
        status: OrderStatus::Created,
        user_id: format!("{:024x}", 1),
        expires_at: chrono::DateTime::from_timestamp_millis(due_ms).unwrap_or_default(),
        ticket: OrderCreatedTicket {
            id: format!("{:024x}", 2),
            price: 20.0,
        },
    }
}

struct Report {
    jobs: usize,
    add_per_s: f64,
    drain_per_s: f64,
    late_ms: Vec<f64>,
    adds_overran_due: bool,
}

impl Report {
    /// One JSON line; `rss_mb` is the worker's peak resident set.
    fn json(&self, args: &Args, rss_mb: f64) -> String {
        let mut late = self.late_ms.clone();
        late.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if late.is_empty() {
                return 0.0;
            }
            let index = ((late.len() as f64 * q).ceil() as usize).clamp(1, late.len()) - 1;
            round(late[index])
        };
        let mut line = serde_json::json!({
            "mode": match args.mode { Mode::Burst => "burst", Mode::Steady => "steady" },
            "scope": match args.scope { Scope::Queue => "queue", Scope::Worker => "worker" },
            "redis_wait_replicas": format!("{:?}", args.redis_wait_replicas),
            "jobs": self.jobs,
            "concurrency": args.concurrency,
            "add_per_s": self.add_per_s.round(),
            "drain_per_s": self.drain_per_s.round(),
            "late_p50_ms": pick(0.50),
            "late_p99_ms": pick(0.99),
            "late_max_ms": pick(1.0),
            "rss_mb": round(rss_mb),
            "bench_rss_mb": round(peak_rss_mb(std::process::id())),
        });
        if args.mode == Mode::Steady {
            line["rate"] = args.rate.into();
            line["seconds"] = args.seconds.into();
        }
        if self.adds_overran_due {
            line["adds_overran_due"] = true.into();
        }
        line.to_string()
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Process `pid`'s peak resident set (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn burst(args: &Args, run: &Run) -> anyhow::Result<Report> {
    let jobs = args.jobs;
    // Far enough ahead for every add to land before the moment they are all due.
    let lead_ms = match args.scope {
        Scope::Queue => 1_000 + jobs as i64 / 50,
        Scope::Worker => 2_000 + jobs as i64 / 2,
    };
    let due = now_ms() + lead_ms;
    let start = Instant::now();
    run.add(args, 0, jobs, |_| due).await?;
    // The jobs are in once the queue holds them all (the worker scope goes through NATS).
    while run.queue.stats().await?.pending() < jobs as u64 && now_ms() < due {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let add_secs = start.elapsed().as_secs_f64();
    let adds_overran_due = now_ms() >= due;
    let deadline = Duration::from_millis(lead_ms as u64) + Duration::from_secs(120);
    run.record.wait_for(jobs, deadline).await?;
    while run.queue.stats().await?.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let drained = now_us();
    let drain_secs = ((drained - due * 1000) as f64 / 1e6).max(1e-6);
    let late_ms = std::mem::take(&mut *run.record.late_ms.lock().unwrap());
    Ok(Report {
        jobs,
        add_per_s: jobs as f64 / add_secs,
        drain_per_s: jobs as f64 / drain_secs,
        late_ms,
        adds_overran_due,
    })
}

async fn steady(args: &Args, run: &Run) -> anyhow::Result<Report> {
    let total = args.rate * args.seconds as usize;
    let start = Instant::now();
    let mut added = 0usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while added < total {
        ticks.tick().await;
        let should = ((start.elapsed().as_secs_f64() * args.rate as f64) as usize).min(total);
        if should > added {
            let due = now_ms() + 1_000;
            run.add(args, added as u64, should - added, |_| due).await?;
            added = should;
        }
    }
    let add_secs = start.elapsed().as_secs_f64();
    run.record.wait_for(total, Duration::from_secs(60)).await?;
    let drain_secs = run
        .record
        .last_fire
        .lock()
        .unwrap()
        .map(|last| (last - start).as_secs_f64() - 1.0)
        .unwrap_or(add_secs);
    let late_ms = std::mem::take(&mut *run.record.late_ms.lock().unwrap());
    Ok(Report {
        jobs: total,
        add_per_s: total as f64 / add_secs,
        drain_per_s: total as f64 / drain_secs.max(1e-6),
        late_ms,
        adds_overran_due: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        let words = std::iter::once("expiration-bench").chain(line.split_whitespace());
        Cli::try_parse_from(words)
            .map(Args::from)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_command_lines_parse() {
        let burst = args("burst --jobs 500 --scope worker --concurrency 8").unwrap();
        assert_eq!(
            (burst.mode, burst.scope, burst.jobs, burst.concurrency),
            (Mode::Burst, Scope::Worker, 500, 8)
        );
        let steady = args("steady --rate 200 --seconds 3 --redis-url redis://r:1").unwrap();
        assert_eq!(
            (steady.mode, steady.scope, steady.rate, steady.seconds),
            (Mode::Steady, Scope::Queue, 200, 3)
        );
        assert_eq!(steady.redis_url, "redis://r:1");
        assert!(args("burst --jobs 0").is_err());
        assert!(args("burst --jobs").is_err());
        assert!(args("burst --scope cluster").is_err());
        assert!(args("drain").is_err());
        assert_eq!(args("burst").unwrap().jobs, 20_000);
    }
}
