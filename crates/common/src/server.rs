//! Serving HTTP/1.1 with limits, for the orders API and the worker's ops port alike: a client
//! cannot hold a connection by sending its headers slowly or by idling, nor open more than the
//! cap.
//!
//! - Header timeout: from the moment a connection is opened, or has answered a request and waits
//!   for the next one (keep-alive), the client has [`ServerLimits::header_timeout`] to send a
//!   complete request head; otherwise the connection is closed. One timer serves as both the
//!   header read timeout and the idle keep-alive timeout, because an idle kept-alive connection is
//!   one waiting for a request head (hyper's `header_read_timeout`).
//! - Connection cap: at most [`ServerLimits::max_connections`] connections are open; past it the
//!   server stops accepting until one closes (new clients wait in the kernel's backlog).
//! - Request bodies are read only by the handlers that need one, within a deadline of their own
//!   (the orders API's JSON body, `HTTP_BODY_TIMEOUT_SECONDS`); an unread body is not drained.
//!
//! On shutdown the server stops accepting, closes idle connections and lets requests in flight
//! finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::parse;

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, on a new or an idle kept-alive connection.
    pub header_timeout: Duration,
    /// Longest a handler waits for a request body it reads.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
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
    /// Most open connections; past it, new ones wait to be accepted
    #[arg(id = "http_max_connections", value_name = "N", long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", default_value_t = MAX_CONNECTIONS, value_parser = parse::positive::<usize>)]
    pub max_connections: usize,
}

impl<const MAX_CONNECTIONS: usize> HttpArgs<MAX_CONNECTIONS> {
    /// The limits these settings give.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// Serves `service` on `listener` within `limits` until `shutdown` is cancelled; `open` counts
/// the connections open at any moment. Returns once every connection has closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: ServerLimits,
    open: Gauge,
    shutdown: CancellationToken,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
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
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A server answering `ok` to everything, with a 400 ms header timeout and 4 connections.
    async fn start() -> (std::net::SocketAddr, Gauge, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ServerLimits {
            header_timeout: Duration::from_millis(400),
            body_timeout: Duration::from_secs(10),
            max_connections: 4,
        };
        let open = Gauge::default();
        let shutdown = CancellationToken::new();
        let service = hyper::service::service_fn(|_| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        tokio::spawn(serve(
            listener,
            service,
            limits,
            open.clone(),
            shutdown.clone(),
        ));
        (address, open, shutdown)
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

    #[tokio::test]
    async fn clients_sending_partial_headers_are_cut_off_and_never_more_than_the_cap_are_open() {
        let (address, open, shutdown) = start().await;
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
            most_open = most_open.max(open.get());
            assert!(started.elapsed() < Duration::from_secs(10), "still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(most_open <= 4, "{most_open} connections open at once");
        // Three rounds of four, 400 ms each.
        for reader in readers {
            let after = reader.await.unwrap();
            assert!(
                after >= Duration::from_millis(350),
                "closed after {after:?}"
            );
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_and_new_requests_are_served() {
        let (address, open, shutdown) = start().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buffer = [0u8; 256];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        let idle = Instant::now();
        let after = closed_after(stream, idle).await;
        assert!(
            (Duration::from_millis(350)..Duration::from_secs(3)).contains(&after),
            "idle connection closed after {after:?}"
        );
        let mut fresh = TcpStream::connect(address).await.unwrap();
        fresh
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        fresh.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(open.get(), 0);
        shutdown.cancel();
    }
}
