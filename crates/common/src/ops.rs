//! Operations endpoints: `/healthz` (the process answers), `/readyz` (its dependencies answer)
//! and `/metrics` (Prometheus text format). [`Ops`] computes the answers; the orders service
//! mounts them on its axum router, the expiration worker serves them with [`Ops::serve`] (the
//! limits of [`crate::server`], no web framework).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::{ConnectionMetrics, ServerLimits};

/// A readiness check: resolves to `Err(reason)` when the dependency does not answer.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Longest a single readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The metrics registry and the readiness checks of one process.
pub struct Ops {
    registry: Registry,
    checks: Vec<(&'static str, Check)>,
    details: serde_json::Map<String, serde_json::Value>,
    connections: ConnectionMetrics,
}

/// A response of an ops endpoint, independent of the HTTP library serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Ops {
    /// Ops over `registry` (adding the server's `http_connections_open` and
    /// `http_connections_shed_total`), with no checks yet.
    pub fn new(mut registry: Registry) -> Self {
        let connections = ConnectionMetrics::register(&mut registry);
        Ops {
            registry,
            checks: Vec::new(),
            details: serde_json::Map::new(),
            connections,
        }
    }

    /// The connection metrics, for the server that serves these endpoints.
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// Adds a readiness check named `name` (shown in the `/readyz` body).
    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()))));
        self
    }

    /// Adds a fact shown in every `/readyz` body under `name` (which transport runs, and why).
    pub fn with_detail(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.details
            .insert(name.to_owned(), serde_json::Value::String(value.into()));
        self
    }

    /// `/healthz`: the process is alive and serving.
    pub fn health(&self) -> OpsResponse {
        OpsResponse {
            status: StatusCode::OK,
            content_type: "application/json",
            body: r#"{"status":"ok"}"#.into(),
        }
    }

    /// `/readyz`: 200 when every check passes, 503 naming the failing ones otherwise.
    pub async fn readiness(&self) -> OpsResponse {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
                let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                (*name, result)
            }))
            .await;
        let ready = results.iter().all(|(_, result)| result.is_ok());
        let checks: serde_json::Map<String, serde_json::Value> = results
            .into_iter()
            .map(|(name, result)| {
                (
                    name.to_owned(),
                    result.err().unwrap_or_else(|| "ok".into()).into(),
                )
            })
            .collect();
        let mut body = serde_json::json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": checks });
        if let Some(body) = body.as_object_mut() {
            body.extend(self.details.clone());
        }
        if !ready {
            tracing::warn!(%body, "not ready");
        }
        OpsResponse {
            status: if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    /// `/metrics`: every registered metric in the Prometheus text format.
    pub fn metrics(&self) -> OpsResponse {
        let mut body = String::new();
        let status = match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
            Ok(()) => StatusCode::OK,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                body.clear();
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        OpsResponse {
            status,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        }
    }

    /// Answers `GET path` for one of the three endpoints; `None` for any other path.
    pub async fn answer(&self, method: &Method, path: &str) -> Option<OpsResponse> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            "/healthz" => Some(self.health()),
            "/readyz" => Some(self.readiness().await),
            "/metrics" => Some(self.metrics()),
            _ => None,
        }
    }

    /// Serves the three endpoints on `listener` within `limits` until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        limits: ServerLimits,
        shutdown: CancellationToken,
    ) {
        let connections = self.connections();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let ops = self.clone();
            async move { Ok::<_, Infallible>(ops.respond(request).await) }
        });
        crate::server::serve(listener, service, limits, connections, shutdown).await;
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = self
            .answer(request.method(), request.uri().path())
            .await
            .unwrap_or(OpsResponse {
                status: StatusCode::NOT_FOUND,
                content_type: "application/json",
                body: r#"{"errors":[{"message":"Not Found"}]}"#.into(),
            });
        let mut response = Response::new(Full::new(Bytes::from(answer.body)));
        *response.status_mut() = answer.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(answer.content_type),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn readiness_names_the_dependency_that_fails() {
        let ops = Ops::new(Registry::default())
            .with_check("redis", || async { Ok(()) })
            .with_check("nats", || async { Err("disconnected".to_string()) })
            .with_detail("nats_transport", "jetstream (given)");
        let answer = ops.readiness().await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        // Compared as JSON: key order depends on serde_json's features in the build.
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"checks": {"nats": "disconnected", "redis": "ok"}, "status": "unavailable", "nats_transport": "jetstream (given)"})
        );

        let ready = Ops::new(Registry::default()).with_check("redis", || async { Ok(()) });
        assert_eq!(ready.readiness().await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn serves_the_three_endpoints_over_http() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("jobs_fired", "Jobs fired", counter.clone());
        counter.inc();
        let ops = Arc::new(Ops::new(registry));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = ServerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_header_bytes: 16384,
        };
        let server = tokio::spawn(ops.serve(listener, limits, shutdown.clone()));

        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.contains("jobs_fired_total 1"), "{metrics}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        server.await.unwrap();
    }
}
