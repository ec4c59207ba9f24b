//! Serving HTTP/1.1 with limits, for the orders API and the worker's ops port alike: a client
//! cannot hold a connection by sending its headers slowly or by idling, nor take memory with a
//! huge request head, nor keep the probes out by opening more connections than the cap.
//!
//! - Header timeout: from the moment a connection is opened, or has answered a request and waits
//!   for the next one (keep-alive), the client has [`ServerLimits::header_timeout`] to send a
//!   complete request head; otherwise the connection is closed. One timer serves as both the
//!   header read timeout and the idle keep-alive timeout, because an idle kept-alive connection is
//!   one waiting for a request head (hyper's `header_read_timeout`).
//! - Head size: a request head (request line and header fields) larger than
//!   [`ServerLimits::max_header_bytes`], or with more than [`MAX_HEADERS`] fields, is answered
//!   431 and the connection closed. The cap is that of hyper's read buffer (`max_buf_size`), so a
//!   connection never buffers more than about that much of a head, and the worst case of all
//!   connections is `max_connections` × `max_header_bytes` (16 MiB for the API's defaults, 1 MiB
//!   for an ops port's).
//! - Connection cap: at most [`ServerLimits::max_connections`] connections are open. When a new
//!   one arrives at the cap, the server closes the connection that has been idle the longest (one
//!   waiting for its first request head, or kept alive between requests;
//!   `http_connections_shed_total` counts them) and admits the newcomer, so a server full of idle
//!   sockets still answers the kubelet's probes. A connection just opened, or that has begun
//!   sending a request head, is safe for [`HEAD_GRACE`] (after opening, or after the head's first
//!   byte); a request in flight is never cut. While every connection has a request in flight, the
//!   newcomer waits, and those after it wait in the kernel's backlog, until one closes.
//! - Request bodies are read only by the handlers that need one, within a deadline of their own
//!   (the orders API's JSON body, `HTTP_BODY_TIMEOUT_SECONDS`); an unread body is not drained.
//!
//! On shutdown the server stops accepting, closes idle connections and lets requests in flight
//! finish. Closing one connection, for shutdown or to shed it, is the same graceful close
//! (hyper's `graceful_shutdown` on that connection), except that a shed connection holding only
//! part of a request head is dropped at once rather than waited for.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::parse;

/// Most header fields in a request head; one more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// How long a connection just opened, or that has begun sending a request head, cannot be shed
/// (from its opening, or from the head's first byte): long enough for a client that sends its
/// head in one go, too short to hold a slot.
pub const HEAD_GRACE: Duration = Duration::from_millis(100);

/// Smallest `HTTP_MAX_HEADER_BYTES` (hyper's read buffer cannot be smaller than 8 KiB).
pub const MIN_HEADER_BYTES: usize = 8192;

/// Largest `HTTP_MAX_HEADER_BYTES`: 1 MiB.
pub const MAX_HEADER_BYTES: usize = 1_048_576;

/// After shedding a connection, how long the server waits for its slot before it sheds another
/// (a shed connection still flushing an answer to a slow reader is let finish).
const SHED_WAIT: Duration = Duration::from_millis(100);

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, on a new or an idle kept-alive connection.
    pub header_timeout: Duration,
    /// Longest a handler waits for a request body it reads.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Largest request head in bytes (request line and header fields); larger is 431.
    pub max_header_bytes: usize,
}

/// The HTTP settings of a binary's server, its default connection cap being `MAX_CONNECTIONS`
/// (1024 for the orders API, 64 for an ops port).
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct HttpArgs<const MAX_CONNECTIONS: usize> {
    /// A connection that has not sent a complete request head this many seconds after opening, or after its last answer (keep-alive), is closed
    #[arg(id = "http_header_timeout", value_name = "SECONDS", long = "http-header-timeout-seconds", env = "HTTP_HEADER_TIMEOUT_SECONDS", default_value = "10", value_parser = parse::fractional_seconds)]
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive, in seconds; 408 after
    #[arg(id = "http_body_timeout", value_name = "SECONDS", long = "http-body-timeout-seconds", env = "HTTP_BODY_TIMEOUT_SECONDS", default_value = "10", value_parser = parse::fractional_seconds)]
    pub body_timeout: Duration,
    /// Most open connections; past it, a newcomer takes the place of the connection idle the longest, or waits to be accepted while every one has a request in flight
    #[arg(id = "http_max_connections", value_name = "N", long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS, value_parser = parse::positive::<usize>)]
    pub max_connections: usize,
    /// Largest request head (request line and header fields) in bytes, 8192 to 1048576; a larger one, or one with more than 100 header fields, is answered 431. At most this much is buffered per connection
    #[arg(id = "http_max_header_bytes", value_name = "BYTES", long = "http-max-header-bytes", env = "HTTP_MAX_HEADER_BYTES", default_value = "16384", value_parser = parse::whole_number_in::<{ MIN_HEADER_BYTES }, { MAX_HEADER_BYTES }>)]
    pub max_header_bytes: usize,
}

impl<const MAX_CONNECTIONS: usize> HttpArgs<MAX_CONNECTIONS> {
    /// The limits these settings give.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
        }
    }
}

/// The server's connection metrics: `http_connections_open` and `http_connections_shed_total`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open at this moment.
    pub open: Gauge,
    /// Idle connections closed to admit a newcomer at the connection cap.
    pub shed: Counter,
}

impl ConnectionMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ConnectionMetrics::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open on this process's server",
            metrics.open.clone(),
        );
        registry.register(
            "http_connections_shed",
            "Idle HTTP connections closed to admit a new one at the connection cap",
            metrics.shed.clone(),
        );
        metrics
    }
}

/// Serves `service` on `listener` within `limits` until `shutdown` is cancelled; `metrics`
/// counts the connections open and shed. Returns once every connection has closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: ServerLimits,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = Arc::new(Connections::default());
    // Cancelled on shutdown; each connection's own close token is a child of it.
    let closing = CancellationToken::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .max_headers(MAX_HEADERS);
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                slot = make_room(&slots, &connections, &metrics.shed) => slot,
            },
        };
        let (id, tracked) = connections.open(closing.child_token());
        let connection = builder.serve_connection(
            TokioIo::new(Watched {
                stream,
                tracked: tracked.clone(),
            }),
            Tracking {
                inner: service.clone(),
                tracked: tracked.clone(),
                connections: connections.clone(),
            },
        );
        let open = metrics.open.clone();
        let connections = connections.clone();
        open.inc();
        // Whatever way the task ends (a handler's panic unwinds it too), the connection leaves
        // the map and the gauge, and gives its slot back.
        let closed = OnDrop(Some(move || {
            connections.remove(id);
            open.dec();
            drop(slot);
        }));
        tokio::spawn(async move {
            let _closed = closed;
            tokio::pin!(connection);
            let result = tokio::select! {
                // The connection first: bytes of a request that already arrived are read, and
                // the request counted in flight, before a close is acted on.
                biased;
                result = connection.as_mut() => result,
                _ = tracked.close.cancelled() => {
                    if tracked.activity().holds_a_partial_head_to_drop() {
                        // Shed with only part of a head: hyper would wait for the rest.
                        Ok(())
                    } else {
                        // Closes it at once if idle, else after the request in flight.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a slot until it has closed.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// Waits for a free slot at the connection cap, shedding the connection idle the longest to
/// make one; waits without shedding while every connection has a request in flight or a head
/// within its grace.
async fn make_room(
    slots: &Arc<Semaphore>,
    connections: &Connections,
    shed: &Counter,
) -> OwnedSemaphorePermit {
    loop {
        let slot = slots.clone();
        match connections.shed_one(Instant::now()) {
            Ok(()) => {
                shed.inc();
                // Its slot comes back as soon as it has closed.
                tokio::select! {
                    slot = slot.acquire_owned() => return slot.expect("the semaphore is never closed"),
                    _ = tokio::time::sleep(SHED_WAIT) => {}
                }
            }
            Err(next) => {
                let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    slot = slot.acquire_owned() => return slot.expect("the semaphore is never closed"),
                    // A request was answered somewhere: that connection may be idle now.
                    _ = connections.went_idle.notified() => {}
                    _ = tokio::time::sleep_until(next.into()) => {}
                }
            }
        }
    }
}

/// What the server knows of one connection's activity, to choose which to shed.
#[derive(Debug, Clone, PartialEq)]
struct Activity {
    /// Requests handed to the service whose answer has not been sent in full.
    in_flight: usize,
    /// Since when it has had no request in flight: when it opened, or sent its last answer.
    idle_since: Instant,
    /// When the first byte of the next request head arrived, if it has.
    head_started: Option<Instant>,
    /// Whether it has answered a request: a connection that has not may hold a head its server
    /// has not read yet, so it is safe for [`HEAD_GRACE`] after opening.
    answered: bool,
    /// Chosen to be shed already.
    shed: bool,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            in_flight: 0,
            idle_since: now,
            head_started: None,
            answered: false,
            shed: false,
        }
    }

    /// When it can be shed: `None` while a request is in flight (never) or once shed already;
    /// else the end of the grace of a head that has begun to arrive or of a connection just
    /// opened, or since it went idle.
    fn sheddable_from(&self) -> Option<Instant> {
        if self.in_flight > 0 || self.shed {
            return None;
        }
        Some(match self.head_started {
            Some(started) => started + HEAD_GRACE,
            None if !self.answered => self.idle_since + HEAD_GRACE,
            None => self.idle_since,
        })
    }

    /// A shed connection that holds part of a request head and no request: drop it rather than
    /// let hyper wait for the rest of the head.
    fn holds_a_partial_head_to_drop(&self) -> bool {
        self.shed && self.in_flight == 0 && self.head_started.is_some()
    }
}

/// Which connection to shed at `now`, of `(id, activity)`: the one idle the longest among those
/// that can be shed, or else when the next one can (the end of a head's grace), if any.
fn choose_victim<'a>(
    connections: impl IntoIterator<Item = (u64, &'a Activity)>,
    now: Instant,
) -> Result<u64, Option<Instant>> {
    let mut victim: Option<(Instant, u64)> = None;
    let mut next: Option<Instant> = None;
    for (id, activity) in connections {
        let Some(from) = activity.sheddable_from() else {
            continue;
        };
        if from > now {
            next = Some(next.map_or(from, |next| next.min(from)));
        } else if victim.is_none_or(|(idle_since, _)| activity.idle_since < idle_since) {
            victim = Some((activity.idle_since, id));
        }
    }
    victim.map(|(_, id)| id).ok_or(next)
}

/// One open connection: its activity and the token that closes it.
#[derive(Debug)]
struct Tracked {
    activity: Mutex<Activity>,
    close: CancellationToken,
}

impl Tracked {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        // The lock is never held across a panic point that leaves it inconsistent.
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The open connections of one server.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Notified when a connection's last request in flight has been answered.
    went_idle: Notify,
}

impl Connections {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, close: CancellationToken) -> (u64, Arc<Tracked>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            activity: Mutex::new(Activity::new(Instant::now())),
            close,
        });
        self.map().insert(id, tracked.clone());
        (id, tracked)
    }

    fn remove(&self, id: u64) {
        self.map().remove(&id);
    }

    /// Sheds the connection idle the longest, if one can be shed at `now`; else says when the
    /// next one can (if any does before a request finishes).
    fn shed_one(&self, now: Instant) -> Result<(), Option<Instant>> {
        let open = self.map();
        let activities: Vec<(u64, Activity)> = open
            .iter()
            .map(|(id, tracked)| (*id, tracked.activity().clone()))
            .collect();
        let id = choose_victim(activities.iter().map(|(id, a)| (*id, a)), now)?;
        let tracked = &open[&id];
        let mut activity = tracked.activity();
        // It may have received a request since: then it is not shed after all, and the
        // choice is made again.
        if activity.sheddable_from().is_none_or(|from| from > now) {
            return Err(Some(now));
        }
        activity.shed = true;
        drop(activity);
        tracing::debug!(connection = id, "shedding the connection idle the longest");
        tracked.close.cancel();
        Ok(())
    }
}

/// The connection's socket, noting when a request head begins to arrive.
struct Watched {
    stream: TcpStream,
    tracked: Arc<Tracked>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut activity = self.tracked.activity();
            if activity.in_flight == 0 && activity.head_started.is_none() {
                activity.head_started = Some(Instant::now());
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The service, noting each request in flight from the moment hyper hands it over until its
/// answer's body has been sent (or dropped).
#[derive(Clone)]
struct Tracking<S> {
    inner: S,
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
}

impl<S, B> Service<http::Request<Incoming>> for Tracking<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.tracked.clone(), self.connections.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _in_flight: in_flight,
            }))
        })
    }
}

/// A request in flight on a connection, until dropped.
struct InFlight {
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
}

impl InFlight {
    fn begin(tracked: Arc<Tracked>, connections: Arc<Connections>) -> Self {
        {
            let mut activity = tracked.activity();
            activity.in_flight += 1;
            activity.head_started = None;
            activity.answered = true;
        }
        InFlight {
            tracked,
            connections,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = self.tracked.activity();
        activity.in_flight -= 1;
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
            drop(activity);
            self.connections.went_idle.notify_one();
        }
    }
}

/// An answer's body, keeping its request in flight until hyper has sent it (or dropped it).
struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs its closure when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering `ok` to everything (after 600 ms for `/slow`), with a 400 ms header
    /// timeout and 4 connections, or the limits `adjust` makes.
    async fn start_with(
        adjust: impl FnOnce(&mut ServerLimits),
    ) -> (std::net::SocketAddr, ConnectionMetrics, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut limits = ServerLimits {
            header_timeout: Duration::from_millis(400),
            body_timeout: Duration::from_secs(10),
            max_connections: 4,
            max_header_bytes: 16384,
        };
        adjust(&mut limits);
        let metrics = ConnectionMetrics::default();
        let shutdown = CancellationToken::new();
        let service = hyper::service::service_fn(|request: http::Request<Incoming>| async move {
            if request.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        tokio::spawn(serve(
            listener,
            service,
            limits,
            metrics.clone(),
            shutdown.clone(),
        ));
        (address, metrics, shutdown)
    }

    async fn start() -> (std::net::SocketAddr, ConnectionMetrics, CancellationToken) {
        start_with(|_| {}).await
    }

    /// Reads until the server closes the connection; how long that took.
    async fn closed_after(mut stream: TcpStream, started: Instant) -> Duration {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    }

    /// Sends `request` on `stream` and reads one answer whose body is `ok`.
    async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buffer = [0u8; 256];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Whether the server has closed `stream` (it stays quiet for 100 ms otherwise).
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Everything the server sends on `stream` after `request`, until it closes it.
    async fn answer_to(address: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buffer).await
            && n > 0
        {
            answer.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn clients_sending_partial_headers_are_cut_off_and_never_more_than_the_cap_are_open() {
        let (address, metrics, shutdown) = start().await;
        let started = Instant::now();
        let mut readers = Vec::new();
        for _ in 0..12 {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            readers.push(tokio::spawn(closed_after(stream, started)));
        }
        let mut most_open = 0;
        while !readers.iter().all(|reader| reader.is_finished()) {
            most_open = most_open.max(metrics.open.get());
            assert!(started.elapsed() < Duration::from_secs(10), "still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(most_open <= 4, "{most_open} connections open at once");
        // The first eight are shed for newcomers once their heads' grace has passed (two rounds
        // of four); the last four, with no newcomer after them, by the header timeout.
        let mut after: Vec<Duration> = Vec::new();
        for reader in readers {
            after.push(reader.await.unwrap());
        }
        for (n, after) in after.iter().enumerate() {
            assert!(*after >= HEAD_GRACE, "{n} closed after {after:?}");
        }
        for after in &after[8..] {
            assert!(
                *after >= Duration::from_millis(350),
                "closed after {after:?}"
            );
        }
        // At most those eight; fewer if a loaded machine's timers let a header timeout come
        // first (never none: the cap is full while newcomers wait).
        let shed = metrics.shed.get();
        assert!((1..=8).contains(&shed), "{shed} shed");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_and_new_requests_are_served() {
        let (address, metrics, shutdown) = start().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        let answer = exchange(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let idle = Instant::now();
        let after = closed_after(stream, idle).await;
        assert!(
            (Duration::from_millis(350)..Duration::from_secs(3)).contains(&after),
            "idle connection closed after {after:?}"
        );
        let answer = answer_to(
            address,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.open.get(), 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_the_longest_makes_way_for_a_newcomer() {
        let (address, metrics, shutdown) = start_with(|limits| {
            limits.header_timeout = Duration::from_secs(10);
        })
        .await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Four connections, by the time they went idle: two that never sent anything (idle
        // since they opened), then two kept alive after an answer.
        let mut silent_a = TcpStream::connect(address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut silent_b = TcpStream::connect(address).await.unwrap();
        let mut kept_c = TcpStream::connect(address).await.unwrap();
        let mut kept_d = TcpStream::connect(address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        exchange(&mut kept_c, request).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        exchange(&mut kept_d, request).await;
        tokio::time::sleep(HEAD_GRACE).await;
        // Each newcomer is answered at once, and stays kept alive: the newest idle one.
        let mut newcomers = Vec::new();
        let mut in_order = [&mut silent_a, &mut silent_b, &mut kept_c, &mut kept_d];
        for (n, oldest) in in_order.iter_mut().enumerate() {
            let asked = Instant::now();
            let mut newcomer = TcpStream::connect(address).await.unwrap();
            let answer = exchange(&mut newcomer, request).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            let took = asked.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "newcomer {n} answered after {took:?}"
            );
            assert!(
                is_closed(oldest).await,
                "newcomer {n} did not shed the oldest"
            );
            assert_eq!(metrics.shed.get(), n as u64 + 1);
            newcomers.push(newcomer);
        }
        for newcomer in &mut newcomers {
            assert!(!is_closed(newcomer).await, "a newcomer was shed too early");
        }
        assert_eq!(metrics.open.get(), 4);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_request_in_flight_is_never_cut_and_a_newcomer_waits_for_it() {
        let (address, metrics, shutdown) = start_with(|limits| limits.max_connections = 1).await;
        let slow = tokio::spawn(answer_to(
            address,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        let answer = answer_to(
            address,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "answered after {waited:?}"
        );
        let slow = slow.await.unwrap();
        assert!(
            slow.starts_with("HTTP/1.1 200") && slow.ends_with("ok"),
            "{slow}"
        );
        assert_eq!(metrics.shed.get(), 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_head_over_the_size_cap_or_with_too_many_fields_is_431() {
        let (address, _, shutdown) = start_with(|limits| limits.max_header_bytes = 8192).await;
        let head = |fields: usize, value: usize| {
            let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
            for n in 0..fields {
                head.push_str(&format!("X-{n}: {}\r\n", "v".repeat(value)));
            }
            head + "\r\n"
        };
        // 98 fields more: 100 in all, about 7 KB.
        let answer = answer_to(address, head(98, 60).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answer = answer_to(address, head(99, 1).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "101 fields: {answer}");
        let answer = answer_to(address, head(1, 9000).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "9 KB: {answer}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_lets_the_request_in_flight_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ServerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 4,
            max_header_bytes: 16384,
        };
        let shutdown = CancellationToken::new();
        let service = hyper::service::service_fn(|_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let server = tokio::spawn(serve(
            listener,
            service,
            limits,
            ConnectionMetrics::default(),
            shutdown.clone(),
        ));
        let mut idle = TcpStream::connect(address).await.unwrap();
        let busy = tokio::spawn(answer_to(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stopping = Instant::now();
        shutdown.cancel();
        assert!(is_closed(&mut idle).await, "the idle connection is closed");
        let answer = busy.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the server returns once its connections have closed")
            .unwrap();
        assert!(stopping.elapsed() >= Duration::from_millis(250));
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still accepting"
        );
    }

    fn activity(start: Instant, idle_since_ms: u64) -> Activity {
        let mut activity = Activity::new(start + Duration::from_millis(idle_since_ms));
        activity.answered = true;
        activity
    }

    #[test]
    fn the_connection_idle_the_longest_is_shed_never_one_with_a_request_in_flight() {
        let start = Instant::now();
        let now = start + Duration::from_secs(1);
        let mut busy = activity(start, 0);
        busy.in_flight = 1;
        let older = activity(start, 10);
        let newer = activity(start, 500);
        let mut shed = activity(start, 5);
        shed.shed = true;
        let all = [(1, &busy), (2, &newer), (3, &older), (4, &shed)];
        assert_eq!(choose_victim(all, now), Ok(3));
        assert_eq!(choose_victim([(1, &busy), (4, &shed)], now), Err(None));
        assert_eq!(choose_victim([], now), Err(None));
        // Just opened, nothing answered yet: safe for the grace, then the oldest.
        let fresh = Activity::new(start + Duration::from_millis(950));
        assert_eq!(
            choose_victim([(1, &busy), (5, &fresh)], now),
            Err(Some(start + Duration::from_millis(950) + HEAD_GRACE))
        );
        let opened = Activity::new(start + Duration::from_millis(2));
        assert_eq!(choose_victim([(3, &older), (6, &opened)], now), Ok(6));
    }

    #[test]
    fn a_head_that_has_begun_to_arrive_is_safe_for_its_grace_then_shed_by_its_idle_time() {
        let start = Instant::now();
        let now = start + Duration::from_secs(1);
        let mut arriving = activity(start, 0);
        arriving.head_started = Some(now - HEAD_GRACE / 2);
        let idle = activity(start, 900);
        assert_eq!(choose_victim([(1, &arriving), (2, &idle)], now), Ok(2));
        assert_eq!(
            choose_victim([(1, &arriving)], now),
            Err(Some(now + HEAD_GRACE / 2))
        );
        let later = now + HEAD_GRACE;
        assert_eq!(choose_victim([(1, &arriving), (2, &idle)], later), Ok(1));
        arriving.shed = true;
        assert!(arriving.holds_a_partial_head_to_drop());
        assert!(!idle.holds_a_partial_head_to_drop());
    }
}
