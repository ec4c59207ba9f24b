//! Load command for the orders API: drives `POST /api/orders` (each request for a fresh ticket,
//! inserted into MongoDB beforehand as replicas) and then `GET /api/orders/{id}` at a fixed
//! concurrency for a fixed time against a running service, and prints one JSON line per route
//! (then `GET /healthz` as a control without database or NATS work). With `--nats-url`, a last
//! phase mixes the traffic of a sale: POSTs, GETs of one order and of the list, DELETEs, while
//! expirations and payments arrive on the bus; one JSON line per route of that phase.
//! It also reports the CPU used meanwhile by the service, the database and NATS, to show which
//! one bounds the throughput, and the database commands the service sent per request (its
//! `mongodb_commands_total`).
//!
//! With `--paced-rate R` it runs instead one open-loop phase: R requests a second on a fixed
//! schedule, whatever the answers (as real clients arrive), a `--hostile-share` of them hostile
//! (one of [`HOSTILE_KINDS`] in turn) and the rest the sale's four routes in the mixed phase's
//! proportions; it prints the requests sent, the answers by status, the 503s and the legitimate
//! requests' latency.
//!
//! ```text
//! orders-bench --url http://127.0.0.1:3000 --mongo-uri mongodb://127.0.0.1:37017/orders \
//!     --jwt-key KEY [--concurrency 32] [--seconds 10] [--tickets 40000] [--pid PID] \
//!     [--nats-url nats://127.0.0.1:4222 --nats-cluster-id STREAM --nats-subject-prefix P] \
//!     [--paced-rate 4 --hostile-share 0.5]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use common::bus::{Publisher, StreamSpec};
use common::config::{Expected, Settings, parse};
use common::events::{ExpirationComplete, PaymentCreated};
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
    /// The JetStream stream the service uses, for the mixed phase.
    nats: Option<(String, StreamSpec)>,
    /// Open loop: requests a second, and the share of them that is hostile.
    paced: Option<(f64, f64)>,
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
    /// The service's NATS (JetStream): runs the mixed phase, with expirations and payments
    #[arg(long = "nats-url", value_parser = common::bus::normalize_url)]
    nats_url: Option<String>,
    /// The service's NATS_CLUSTER_ID (its stream)
    #[arg(long = "nats-cluster-id", default_value = "ticketing")]
    nats_cluster_id: String,
    /// The service's NATS_SUBJECT_PREFIX
    #[arg(long = "nats-subject-prefix", default_value = "")]
    nats_subject_prefix: String,
    /// Open loop instead of the phases above: this many requests a second for --seconds, sent on a fixed schedule whatever the answers
    #[arg(long = "paced-rate", value_name = "R", value_parser = rate)]
    paced_rate: Option<f64>,
    /// With --paced-rate: the fraction of the requests that are hostile (0 to 1)
    #[arg(long = "hostile-share", value_name = "S", default_value = "0", value_parser = share, requires = "paced_rate")]
    hostile_share: f64,
}

/// Requests a second: more than 0, at most 10000.
fn rate(value: &str) -> Result<f64, Expected> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 10_000.0)
        .ok_or_else(|| Expected("requests a second, more than 0 and at most 10000".into()))
}

/// A fraction from 0 to 1.
fn share(value: &str) -> Result<f64, Expected> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| Expected("a fraction from 0 to 1".into()))
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
            paced: cli.paced_rate.map(|rate| (rate, cli.hostile_share)),
            nats: cli.nats_url.map(|url| {
                (
                    url,
                    StreamSpec {
                        name: cli.nats_cluster_id,
                        subject_prefix: cli.nats_subject_prefix,
                        replicas: 1,
                    },
                )
            }),
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    address: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `address`, made at the first request.
    fn new(address: String) -> Self {
        Connection {
            address,
            sender: None,
        }
    }

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
    let commands_before = db_commands(&args.address).await;
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
            let mut connection = Connection::new(address);
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
    let commands = per_request(commands_before, db_commands(&args.address).await, {
        let outcome = results.lock().await;
        outcome.latencies_us.len()
    });
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
        "db_commands_per_request": commands,
    });
    println!("{line}");
    Ok(outcome)
}

/// The routes of the mixed phase, in the order its lines are printed.
const MIXED_ROUTES: [&str; 4] = [
    "POST /api/orders",
    "GET /api/orders/{id}",
    "GET /api/orders",
    "DELETE /api/orders/{id}",
];

/// What the bus side of the mixed phase publishes for the `n`th order it created.
fn mixed_fate(n: usize) -> (bool, bool) {
    let paid = n.is_multiple_of(5);
    let expires = !paid && n.is_multiple_of(3);
    (paid, expires)
}

/// The bus side of a sale: for the `n`th order created (sent on the channel), publishes what
/// [`mixed_fate`] says; the task ends with how many were published once the channel closes.
fn spawn_bus(
    publisher: Publisher,
) -> (
    tokio::sync::mpsc::UnboundedSender<(usize, String)>,
    tokio::task::JoinHandle<usize>,
) {
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let bus = tokio::spawn(async move {
        let mut published = 0usize;
        let mut pending = tokio::task::JoinSet::new();
        while let Some((n, id)) = events_rx.recv().await {
            let (paid, expires) = mixed_fate(n);
            if !paid && !expires {
                continue;
            }
            let publisher = publisher.clone();
            pending.spawn(async move {
                let result = if paid {
                    publisher
                        .publish(&PaymentCreated {
                            id: ObjectId::new().to_hex(),
                            order_id: id,
                            stripe_id: format!("ch_bench_{n}"),
                        })
                        .await
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    publisher
                        .publish(&ExpirationComplete { order_id: id })
                        .await
                };
                result.is_ok()
            });
        }
        while let Some(done) = pending.join_next().await {
            published += usize::from(done.unwrap_or(false));
        }
        published
    });
    (events_tx, bus)
}

/// The traffic of a sale, at `--concurrency` for `--seconds`: of every 20 requests 10 POSTs
/// (a fresh ticket each), 5 GETs of one of the worker's orders, 3 GETs of its list and 2 DELETEs
/// of one of its unpaid orders; meanwhile every 5th order created is paid at once
/// (`payment:created`) and every 3rd of the others expires 1 s after its creation
/// (`expiration:complete`). One JSON line per route, then one for the phase.
async fn mixed(
    args: &Args,
    watched: &Watched,
    cookies: &[String],
    tickets: Arc<Vec<String>>,
    publisher: Publisher,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let next_ticket = Arc::new(AtomicUsize::new(0));
    let created_count = Arc::new(AtomicUsize::new(0));
    let (events_tx, bus) = spawn_bus(publisher);

    let before = watched.snapshot();
    let commands_before = db_commands(&args.address).await;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (next, next_ticket, created_count, events) = (
            next.clone(),
            next_ticket.clone(),
            created_count.clone(),
            events_tx.clone(),
        );
        let tickets = tickets.clone();
        let cookie = cookies[worker % cookies.len()].clone();
        let address = args.address.clone();
        workers.push(tokio::spawn(async move {
            let mut connection = Connection::new(address);
            let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); MIXED_ROUTES.len()];
            let mut errors = vec![0usize; MIXED_ROUTES.len()];
            // This worker's orders that may be cancelled (not paid), and all of them.
            let mut deletable: Vec<String> = Vec::new();
            let mut mine: Vec<String> = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let mut route = match n % 20 {
                    0..=9 => 0,
                    10..=14 => 1,
                    15..=17 => 2,
                    _ => 3,
                };
                if (route == 1 && mine.is_empty()) || (route == 3 && deletable.is_empty()) {
                    route = 0;
                }
                let (method, uri, body, expected) = match route {
                    0 => {
                        let Some(ticket) = tickets.get(next_ticket.fetch_add(1, Ordering::Relaxed))
                        else {
                            break;
                        };
                        let body = format!(r#"{{"ticketId":"{ticket}"}}"#);
                        (
                            Method::POST,
                            "/api/orders".to_owned(),
                            body,
                            StatusCode::CREATED,
                        )
                    }
                    1 => {
                        let id = &mine[n % mine.len()];
                        (
                            Method::GET,
                            format!("/api/orders/{id}"),
                            String::new(),
                            StatusCode::OK,
                        )
                    }
                    2 => (
                        Method::GET,
                        "/api/orders".to_owned(),
                        String::new(),
                        StatusCode::OK,
                    ),
                    _ => {
                        let id = deletable.swap_remove(n % deletable.len());
                        (
                            Method::DELETE,
                            format!("/api/orders/{id}"),
                            String::new(),
                            StatusCode::NO_CONTENT,
                        )
                    }
                };
                let mut request = Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(header::HOST, "orders")
                    .header(header::COOKIE, cookie.as_str());
                if route == 0 {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                }
                let request = request
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid request");
                let sent = Instant::now();
                let result = connection.send(request).await;
                latencies[route].push(sent.elapsed().as_micros() as u64);
                match result {
                    Ok((status, body)) if status == expected => {
                        if route == 0
                            && let Ok(order) = serde_json::from_slice::<serde_json::Value>(&body)
                            && let Some(id) = order["id"].as_str()
                        {
                            let index = created_count.fetch_add(1, Ordering::Relaxed);
                            mine.push(id.to_owned());
                            if !mixed_fate(index).0 {
                                deletable.push(id.to_owned());
                            }
                            let _ = events.send((index, id.to_owned()));
                        }
                    }
                    _ => {
                        errors[route] += 1;
                        connection.sender = None;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    drop(events_tx);
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); MIXED_ROUTES.len()];
    let mut errors = vec![0usize; MIXED_ROUTES.len()];
    for worker in workers {
        let (mine, failed) = worker.await?;
        for (route, values) in mine.into_iter().enumerate() {
            latencies[route].extend(values);
            errors[route] += failed[route];
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = watched.snapshot();
    let requests: usize = latencies.iter().map(Vec::len).sum();
    let commands = per_request(commands_before, db_commands(&args.address).await, requests);
    for (route, mut values) in latencies.into_iter().enumerate() {
        values.sort_unstable();
        println!(
            "{}",
            serde_json::json!({
                "phase": "mixed",
                "route": MIXED_ROUTES[route],
                "requests": values.len(),
                "req_per_s": ((values.len() as f64 / elapsed) * 10.0).round() / 10.0,
                "p50_ms": percentile(&values, 0.50),
                "p99_ms": percentile(&values, 0.99),
                "errors": errors[route],
            })
        );
    }
    let events = bus.await?;
    println!(
        "{}",
        serde_json::json!({
            "phase": "mixed",
            "route": "all",
            "requests": requests,
            "req_per_s": ((requests as f64 / elapsed) * 10.0).round() / 10.0,
            "events_published": events,
            "rss_mb": rss_mb(watched.service, "VmRSS:"),
            "rss_peak_mb": rss_mb(watched.service, "VmHWM:"),
            "concurrency": args.concurrency,
            "seconds": (elapsed * 10.0).round() / 10.0,
            "cpu_percent": watched.cpu_json(&before, &after, elapsed),
            "db_commands_per_request": commands,
        })
    );
    Ok(())
}

/// The hostile requests of the paced mode, sent in this order, one kind after the other.
const HOSTILE_KINDS: [&str; 8] = [
    "bad JSON",
    "no or forged cookie",
    "huge body",
    "unknown route",
    "wrong content type",
    "slow partial body",
    "invalid id",
    "oversized headers",
];

/// The buyers' orders so far in the paced mode: `(order id, buyer)`; the unpaid ones may be
/// cancelled.
#[derive(Default)]
struct Sale {
    mine: Vec<(String, usize)>,
    deletable: Vec<(String, usize)>,
}

/// What one request of the paced mode is, and how it is sent.
enum Paced {
    /// Through the HTTP client.
    Http(Box<Request<Full<Bytes>>>),
    /// Raw bytes on a fresh connection (what the HTTP client would not send), then the answer's
    /// status line is read.
    Raw(Vec<u8>),
}

/// One answer of the paced mode.
struct PacedAnswer {
    /// `Ok(route)` for a legitimate request, `Err(kind)` for a hostile one.
    what: Result<usize, usize>,
    /// The status, or `error` when no answer came (connection refused, reset or closed).
    status: String,
    latency_us: u64,
}

/// Sends raw `bytes` on a new connection to `address` and reads the status of the answer (a write
/// the server cuts short is not an error as long as an answer comes).
async fn raw_exchange(address: &str, bytes: &[u8]) -> anyhow::Result<StatusCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let _ = stream.write_all(bytes).await;
    let mut reply = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut reply)).await??;
    let line = String::from_utf8_lossy(&reply[..n]);
    let code = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {n} bytes"))?;
    Ok(StatusCode::from_u16(code)?)
}

/// The `k`th hostile request: kind `k % 8` of [`HOSTILE_KINDS`].
fn hostile_request(k: usize, cookie: &str, forged: &str, ticket: &str) -> Paced {
    let post = |content_type: &str, cookie: Option<&str>, body: Vec<u8>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/orders")
            .header(header::HOST, "orders")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        Paced::Http(Box::new(
            request
                .body(Full::new(Bytes::from(body)))
                .expect("a valid request"),
        ))
    };
    let get = |uri: &str| {
        Paced::Http(Box::new(
            Request::builder()
                .uri(uri)
                .header(header::HOST, "orders")
                .header(header::COOKIE, cookie)
                .body(Full::new(Bytes::new()))
                .expect("a valid request"),
        ))
    };
    let order = format!(r#"{{"ticketId":"{ticket}"}}"#).into_bytes();
    match k % HOSTILE_KINDS.len() {
        0 => post("application/json", Some(cookie), br#"{"ticketId": "#.to_vec()),
        // Every other one without a cookie, the others with a token signed by another key.
        1 => post(
            "application/json",
            (k / HOSTILE_KINDS.len()).is_multiple_of(2).then_some(forged),
            order,
        ),
        2 => {
            let mut body = br#"{"ticketId":""#.to_vec();
            body.resize(2 * 1024 * 1024, b'a');
            post("application/json", Some(cookie), body)
        }
        3 => get("/api/no/such/route"),
        4 => post("text/plain", Some(cookie), order),
        // A body announced at 64 bytes, of which 12 arrive: the answer is the body timeout's.
        5 => Paced::Raw(
            format!(
                "POST /api/orders HTTP/1.1\r\nHost: orders\r\nCookie: {cookie}\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{{\"ticketId\":"
            )
            .into_bytes(),
        ),
        6 => get("/api/orders/not-an-object-id"),
        _ => Paced::Raw(
            format!(
                "GET /api/orders HTTP/1.1\r\nHost: orders\r\nCookie: {cookie}\r\nX-Padding: {}\r\n\r\n",
                "a".repeat(1024 * 1024)
            )
            .into_bytes(),
        ),
    }
}

/// Open loop: `rate` requests a second for `--seconds`, each sent at its time on a connection of
/// its own whatever became of the earlier ones; a `share` of them hostile (the kinds of
/// [`HOSTILE_KINDS`] in turn), the others the mixed phase's routes in its proportions (of every
/// 20: 10 POSTs, 5 GETs of one order, 3 of the list, 2 DELETEs), with its bus side when
/// `--nats-url` is given. Prints one JSON line.
async fn paced(
    args: &Args,
    watched: &Watched,
    cookies: &[String],
    forged: String,
    tickets: Vec<String>,
    publisher: Option<Publisher>,
) -> anyhow::Result<()> {
    let (rate, share) = args.paced.expect("the paced mode has a rate");
    let total = (args.duration.as_secs_f64() * rate).round().max(1.0) as usize;
    let sale = Arc::new(std::sync::Mutex::new(Sale::default()));
    let created = Arc::new(AtomicUsize::new(0));
    let (events, bus) = match publisher {
        Some(publisher) => {
            let (events, bus) = spawn_bus(publisher);
            (Some(events), Some(bus))
        }
        None => (None, None),
    };
    let mut tickets = tickets.into_iter();
    let (mut legit, mut hostile) = (0usize, 0usize);
    let mut lag_max = Duration::ZERO;
    let mut answers = tokio::task::JoinSet::new();
    let before = watched.snapshot();
    let started = Instant::now();
    for n in 0..total {
        let at = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        lag_max = lag_max.max(at.elapsed());
        // Spread evenly: request n is hostile when it carries the share past a whole number.
        let is_hostile = ((n + 1) as f64 * share).floor() > (n as f64 * share).floor();
        let (what, request, owner) = if is_hostile {
            let k = hostile;
            hostile += 1;
            let ticket = ObjectId::new().to_hex();
            (
                Err(k % HOSTILE_KINDS.len()),
                hostile_request(k, &cookies[k % cookies.len()], &forged, &ticket),
                0,
            )
        } else {
            let l = legit;
            legit += 1;
            let buyer = l % cookies.len();
            let (route, method, uri, body) = {
                let mut sale = sale.lock().unwrap_or_else(|e| e.into_inner());
                let mut route = match l % 20 {
                    0..=9 => 0,
                    10..=14 => 1,
                    15..=17 => 2,
                    _ => 3,
                };
                if (route == 1 && sale.mine.is_empty()) || (route == 3 && sale.deletable.is_empty())
                {
                    route = 0;
                }
                match route {
                    0 => {
                        let Some(ticket) = tickets.next() else {
                            eprintln!("warning: ran out of tickets; raise --tickets");
                            break;
                        };
                        let body = format!(r#"{{"ticketId":"{ticket}"}}"#);
                        (0, Method::POST, "/api/orders".to_owned(), body)
                    }
                    1 => {
                        let (id, _) = &sale.mine[l % sale.mine.len()];
                        (1, Method::GET, format!("/api/orders/{id}"), String::new())
                    }
                    2 => (2, Method::GET, "/api/orders".to_owned(), String::new()),
                    _ => {
                        let index = l % sale.deletable.len();
                        let (id, _) = sale.deletable.swap_remove(index);
                        (
                            3,
                            Method::DELETE,
                            format!("/api/orders/{id}"),
                            String::new(),
                        )
                    }
                }
            };
            // An order is read and cancelled by its owner, as the routes require.
            let owner = match (route, uri.rsplit_once('/')) {
                (1 | 3, Some((_, id))) => {
                    let sale = sale.lock().unwrap_or_else(|e| e.into_inner());
                    sale.mine
                        .iter()
                        .find(|(mine, _)| mine == id)
                        .map_or(buyer, |(_, owner)| *owner)
                }
                _ => buyer,
            };
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::HOST, "orders")
                .header(header::COOKIE, cookies[owner].as_str());
            if route == 0 {
                request = request.header(header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(body)))
                .expect("a valid request");
            (Ok(route), Paced::Http(Box::new(request)), owner)
        };
        let address = args.address.clone();
        let (sale, created, events) = (sale.clone(), created.clone(), events.clone());
        answers.spawn(async move {
            let sent = Instant::now();
            let answer = match request {
                Paced::Http(request) => Connection::new(address.clone())
                    .send(*request)
                    .await
                    .map(|(status, body)| (status, Some(body))),
                Paced::Raw(bytes) => raw_exchange(&address, &bytes)
                    .await
                    .map(|status| (status, None)),
            };
            let latency_us = sent.elapsed().as_micros() as u64;
            let status = match &answer {
                Ok((status, _)) => status.as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            if let (Ok(0), Ok((StatusCode::CREATED, Some(body)))) = (what, &answer)
                && let Ok(order) = serde_json::from_slice::<serde_json::Value>(body)
                && let Some(id) = order["id"].as_str()
            {
                let index = created.fetch_add(1, Ordering::Relaxed);
                let mut sale = sale.lock().unwrap_or_else(|e| e.into_inner());
                sale.mine.push((id.to_owned(), owner));
                if !mixed_fate(index).0 {
                    sale.deletable.push((id.to_owned(), owner));
                }
                if let Some(events) = &events {
                    let _ = events.send((index, id.to_owned()));
                }
            }
            PacedAnswer {
                what,
                status,
                latency_us,
            }
        });
    }
    let sent = legit + hostile;
    let sending = started.elapsed().as_secs_f64();
    drop(events);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_route: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); MIXED_ROUTES.len()];
    let mut by_kind: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); HOSTILE_KINDS.len()];
    let (mut legit_us, mut hostile_us) = (Vec::new(), Vec::new());
    while let Some(answer) = answers.join_next().await {
        let answer = answer?;
        *statuses.entry(answer.status.clone()).or_default() += 1;
        match answer.what {
            Ok(route) => {
                *by_route[route].entry(answer.status).or_default() += 1;
                legit_us.push(answer.latency_us);
            }
            Err(kind) => {
                *by_kind[kind].entry(answer.status).or_default() += 1;
                hostile_us.push(answer.latency_us);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = watched.snapshot();
    let published = match bus {
        Some(bus) => Some(bus.await?),
        None => None,
    };
    legit_us.sort_unstable();
    hostile_us.sort_unstable();
    let legit_503 = by_route
        .iter()
        .map(|statuses| statuses.get("503").copied().unwrap_or(0))
        .sum::<usize>();
    let named = |names: &[&str], counts: Vec<BTreeMap<String, usize>>| -> serde_json::Value {
        names
            .iter()
            .zip(counts)
            .map(|(name, counts)| ((*name).to_owned(), serde_json::json!(counts)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    println!(
        "{}",
        serde_json::json!({
            "phase": "paced",
            "rate": rate,
            "hostile_share": share,
            "seconds": (sending * 10.0).round() / 10.0,
            "requests_sent": sent,
            "legitimate": legit,
            "hostile": hostile,
            "answers": statuses,
            "status_503": statuses.get("503").copied().unwrap_or(0),
            "legitimate_503": legit_503,
            "legitimate_p50_ms": percentile(&legit_us, 0.50),
            "legitimate_p99_ms": percentile(&legit_us, 0.99),
            "legitimate_max_ms": percentile(&legit_us, 1.0),
            "hostile_p50_ms": percentile(&hostile_us, 0.50),
            "legitimate_by_route": named(&MIXED_ROUTES, by_route),
            "hostile_by_kind": named(&HOSTILE_KINDS, by_kind),
            "send_lag_max_ms": (lag_max.as_secs_f64() * 10_000.0).round() / 10.0,
            "events_published": published,
            "rss_mb": rss_mb(watched.service, "VmRSS:"),
            "cpu_percent": watched.cpu_json(&before, &after, elapsed),
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        })
    );
    Ok(())
}

/// Inserts `count` fresh ticket replicas (titled `bench ticket <tag><n>`), as `ticket:created`
/// would, a thousand per command.
async fn insert_tickets(
    collection: &mongodb::Collection<Ticket>,
    count: usize,
    tag: &str,
) -> anyhow::Result<Vec<Ticket>> {
    let tickets: Vec<Ticket> = (0..count)
        .map(|n| Ticket {
            id: ObjectId::new(),
            title: format!("bench ticket {tag}{n}"),
            price: 10.0 + (n % 50) as f64,
            version: 0,
        })
        .collect();
    for chunk in tickets.chunks(1000) {
        collection.insert_many(chunk).await?;
    }
    Ok(tickets)
}

/// The service's `mongodb_commands_total`, summed over commands and collections; `None` if it
/// does not expose it.
async fn db_commands(address: &str) -> Option<f64> {
    let mut connection = Connection::new(address.to_owned());
    let request = Request::builder()
        .uri("/metrics")
        .header(header::HOST, "orders")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let (_, body) = connection.send(request).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("mongodb_commands_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!lines.is_empty()).then(|| lines.iter().sum())
}

/// Database commands per request between two readings, to two decimals.
fn per_request(before: Option<f64>, after: Option<f64>, requests: usize) -> Option<f64> {
    let sent = after? - before?;
    (requests > 0).then(|| (sent / requests as f64 * 100.0).round() / 100.0)
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
    let collection = database.collection::<Ticket>("tickets");
    let inserting = Instant::now();
    // The paced mode needs at most one ticket per request.
    let wanted = match args.paced {
        Some((rate, _)) => args
            .tickets
            .min((rate * args.duration.as_secs_f64()).ceil() as usize + 1),
        None => args.tickets,
    };
    let tickets = insert_tickets(&collection, wanted, "").await?;
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

    if args.paced.is_some() {
        let forged = JwtKey::new(b"not the service's key");
        let id = ObjectId::new().to_hex();
        let forged = session_cookie(&forged.sign(&UserPayload {
            id: id.clone(),
            email: format!("{id}@forged.test"),
            iat: None,
        }));
        let publisher = match &args.nats {
            Some((url, spec)) => {
                let client = async_nats::connect(url.as_str()).await?;
                Some(Publisher::new(
                    async_nats::jetstream::new(client),
                    spec.clone(),
                    None,
                ))
            }
            None => None,
        };
        let ids = tickets.iter().map(|t| t.id.to_hex()).collect();
        return paced(&args, &watched, &cookies, forged, ids, publisher).await;
    }

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
    if let Some((url, spec)) = &args.nats {
        let client = async_nats::connect(url.as_str()).await?;
        let publisher = Publisher::new(async_nats::jetstream::new(client), spec.clone(), None);
        let fresh = insert_tickets(&collection, args.tickets, "m").await?;
        let ids = Arc::new(fresh.iter().map(|t| t.id.to_hex()).collect());
        mixed(&args, &watched, &cookies, ids, publisher).await?;
    }
    Ok(())
}
