//! Load command for the orders API: drives `POST /api/orders` (each request for a fresh ticket,
//! inserted into MongoDB beforehand as replicas) and then `GET /api/orders/{id}` at a fixed
//! concurrency for a fixed time against a running service, and prints one JSON line per route
//! (then `GET /healthz` as a control without database or NATS work).
//! It also reports the CPU used meanwhile by the service, the database and NATS, to show which
//! one bounds the throughput.
//!
//! ```text
//! orders-bench --url http://127.0.0.1:3000 --mongo-uri mongodb://127.0.0.1:37017/orders \
//!     --jwt-key KEY [--concurrency 32] [--seconds 10] [--tickets 40000] [--pid PID]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use common::config::{Settings, parse};
use common::http::{JwtKey, UserPayload, auth::session_cookie};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mongodb::bson::oid::ObjectId;
use orders::models::Ticket;
use tokio::sync::Mutex;

struct Args {
    address: String,
    mongo_uri: String,
    jwt_key: String,
    concurrency: usize,
    duration: Duration,
    tickets: usize,
    pid: Option<u32>,
}

/// Load on the orders API: `POST /api/orders` (each for a ticket of its own, inserted into
/// MongoDB first), then `GET /api/orders/{id}`, then `GET /healthz` as a control, each at a fixed
/// concurrency for a fixed time; one JSON line per phase on stdout.
#[derive(Debug, Parser)]
#[command(name = "orders-bench", version, long_about = None)]
struct Cli {
    /// The running service
    #[arg(long, env = "ORDERS_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The service's MongoDB (ticket replicas are inserted there)
    #[arg(long = "mongo-uri", env = "MONGO_URI", hide_env_values = true)]
    mongo_uri: String,
    /// The service's JWT_KEY, to sign the buyers' cookies
    #[arg(long = "jwt-key", env = "JWT_KEY", hide_env_values = true)]
    jwt_key: String,
    /// Requests in flight, one keep-alive connection each
    #[arg(long, default_value = "32", value_parser = parse::positive::<usize>)]
    concurrency: usize,
    /// Length of each phase, in seconds
    #[arg(long, default_value = "10", value_parser = parse::seconds)]
    seconds: Duration,
    /// Ticket replicas to insert (one per POST)
    #[arg(long, default_value = "40000", value_parser = parse::positive::<usize>)]
    tickets: usize,
    /// The service's process id (found by name when there is one `orders` process)
    #[arg(long)]
    pid: Option<u32>,
}

impl Settings for Cli {}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        Args {
            address: cli
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            mongo_uri: cli.mongo_uri,
            jwt_key: cli.jwt_key,
            concurrency: cli.concurrency,
            duration: cli.seconds,
            tickets: cli.tickets,
            pid: cli.pid,
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    address: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u64>,
    errors: usize,
    /// Orders created, with the cookie of their owner.
    created: Vec<(String, String)>,
}

/// CPU seconds (user + system) used so far by every process named `name`, or by `pid`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[index] as f64 / 10.0).round() / 100.0
}

/// Builds the `n`th request of a phase for a worker signed in with `cookie`; `None` ends it.
type MakeRequest = Arc<dyn Fn(usize, &str) -> Option<Request<Full<Bytes>>> + Send + Sync>;

struct Watched {
    service: u32,
    others: Vec<(&'static str, Vec<u32>)>,
}

impl Watched {
    fn snapshot(&self) -> Vec<f64> {
        std::iter::once(cpu_seconds(&[self.service]))
            .chain(self.others.iter().map(|(_, pids)| cpu_seconds(pids)))
            .chain(std::iter::once(cpu_seconds(&[std::process::id()])))
            .collect()
    }

    fn cpu_json(&self, before: &[f64], after: &[f64], elapsed: f64) -> serde_json::Value {
        let names = std::iter::once("orders")
            .chain(self.others.iter().map(|(name, _)| *name))
            .chain(std::iter::once("bench"));
        let map: serde_json::Map<_, _> = names
            .zip(before.iter().zip(after))
            .map(|(name, (b, a))| {
                let percent = ((a - b) / elapsed * 1000.0).round() / 10.0;
                (name.to_owned(), serde_json::json!(percent))
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

async fn phase(
    route: &str,
    args: &Args,
    watched: &Watched,
    cookies: &[String],
    make: MakeRequest,
    expected: StatusCode,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Outcome::default()));
    let before = watched.snapshot();
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let make = make.clone();
        let next = next.clone();
        let results = results.clone();
        let cookie = cookies[worker % cookies.len()].clone();
        let address = args.address.clone();
        workers.push(tokio::spawn(async move {
            let mut connection = Connection {
                address,
                sender: None,
            };
            let mut local = Outcome::default();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = make(n, &cookie) else {
                    break;
                };
                let sent = Instant::now();
                match connection.send(request).await {
                    Ok((status, body)) if status == expected => {
                        local.latencies_us.push(sent.elapsed().as_micros() as u64);
                        if status == StatusCode::CREATED
                            && let Ok(order) = serde_json::from_slice::<serde_json::Value>(&body)
                            && let Some(id) = order["id"].as_str()
                        {
                            local.created.push((id.to_owned(), cookie.clone()));
                        }
                    }
                    _ => {
                        local.latencies_us.push(sent.elapsed().as_micros() as u64);
                        local.errors += 1;
                        connection.sender = None;
                    }
                }
            }
            let mut all = results.lock().await;
            all.latencies_us.extend(local.latencies_us);
            all.errors += local.errors;
            all.created.extend(local.created);
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = watched.snapshot();
    let mut outcome = std::mem::take(&mut *results.lock().await);
    outcome.latencies_us.sort_unstable();
    let requests = outcome.latencies_us.len();
    let line = serde_json::json!({
        "route": route,
        "requests": requests,
        "req_per_s": ((requests as f64 / elapsed) * 10.0).round() / 10.0,
        "p50_ms": percentile(&outcome.latencies_us, 0.50),
        "p99_ms": percentile(&outcome.latencies_us, 0.99),
        "errors": outcome.errors,
        "rss_mb": rss_mb(watched.service, "VmRSS:"),
        "rss_peak_mb": rss_mb(watched.service, "VmHWM:"),
        "concurrency": args.concurrency,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "cpu_percent": watched.cpu_json(&before, &after, elapsed),
    });
    println!("{line}");
    Ok(outcome)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::from(Cli::load());
    let pid = match args.pid {
        Some(pid) => pid,
        None => match pids_named("orders").as_slice() {
            [pid] => *pid,
            found => bail!("found {} `orders` processes; pass --pid", found.len()),
        },
    };
    let watched = Watched {
        service: pid,
        others: vec![
            ("ferretdb", pids_named("ferretdb")),
            ("mongod", pids_named("mongod")),
            ("nats-server", pids_named("nats-server")),
        ],
    };

    let client = mongodb::Client::with_uri_str(&args.mongo_uri).await?;
    let database = client
        .default_database()
        .unwrap_or_else(|| client.database(orders::config::DEFAULT_DATABASE));
    let tickets: Vec<Ticket> = (0..args.tickets)
        .map(|n| Ticket {
            id: ObjectId::new(),
            title: format!("bench ticket {n}"),
            price: 10.0 + (n % 50) as f64,
            version: 0,
        })
        .collect();
    let collection = database.collection::<Ticket>("tickets");
    let inserting = Instant::now();
    for chunk in tickets.chunks(1000) {
        collection.insert_many(chunk).await?;
    }
    eprintln!(
        "inserted {} ticket replicas in {:.1} s",
        tickets.len(),
        inserting.elapsed().as_secs_f64()
    );

    let key = JwtKey::new(args.jwt_key.as_bytes());
    let cookies: Vec<String> = (0..args.concurrency.max(1))
        .map(|_| {
            let id = ObjectId::new().to_hex();
            session_cookie(&key.sign(&UserPayload {
                id: id.clone(),
                email: format!("{id}@bench.test"),
                iat: None,
            }))
        })
        .collect();

    let ids: Arc<Vec<String>> = Arc::new(tickets.iter().map(|t| t.id.to_hex()).collect());
    let post = {
        let ids = ids.clone();
        Arc::new(move |n: usize, cookie: &str| {
            let ticket = ids.get(n)?;
            Some(
                Request::builder()
                    .method(Method::POST)
                    .uri("/api/orders")
                    .header(header::HOST, "orders")
                    .header(header::COOKIE, cookie)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"ticketId":"{ticket}"}}"#
                    ))))
                    .expect("a valid request"),
            )
        })
    };
    let created = phase(
        "POST /api/orders",
        &args,
        &watched,
        &cookies,
        post,
        StatusCode::CREATED,
    )
    .await?;
    if created.latencies_us.len() >= tickets.len() {
        eprintln!("warning: ran out of tickets; raise --tickets");
    }
    if created.created.is_empty() {
        bail!(
            "no order was created; is the service at {} up?",
            args.address
        );
    }
    // Every GET reads an order as its owner, as the route requires.
    let orders_by_owner = Arc::new(created.created);
    let get = {
        let list = orders_by_owner.clone();
        Arc::new(move |n: usize, _: &str| {
            let (id, cookie) = &list[n % list.len()];
            Some(
                Request::builder()
                    .method(Method::GET)
                    .uri(format!("/api/orders/{id}"))
                    .header(header::HOST, "orders")
                    .header(header::COOKIE, cookie.as_str())
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request"),
            )
        })
    };
    phase(
        "GET /api/orders/{id}",
        &args,
        &watched,
        &cookies,
        get,
        StatusCode::OK,
    )
    .await?;
    // A control without database or NATS work: the ceiling of HTTP, routing, logging and
    // metrics in the service on this machine.
    let health = Arc::new(|_: usize, _: &str| {
        Some(
            Request::builder()
                .method(Method::GET)
                .uri("/healthz")
                .header(header::HOST, "orders")
                .body(Full::new(Bytes::new()))
                .expect("a valid request"),
        )
    });
    phase(
        "GET /healthz",
        &args,
        &watched,
        &cookies,
        health,
        StatusCode::OK,
    )
    .await?;
    Ok(())
}
