//! HTTP for tests: one request on a fresh connection, and reading Prometheus metrics.

/// An HTTP answer, for tests.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: Option<String>,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The messages of an error body (docs/contract.md §4.3); panics if the body is not one.
    pub fn messages(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("not an error body: {:?} {}", self.status, self.body))
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Sends one HTTP/1.1 request on a fresh connection to `host:port`.
pub async fn send(
    (host, port): (&str, u16),
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<bytes::Bytes>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(http_body_util::Full::new(body.unwrap_or_default()))?)
        .await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        content_type,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path` on `127.0.0.1:port`.
pub async fn get(
    port: u16,
    path: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    send(("127.0.0.1", port), http::Method::GET, path, &[], None).await
}

/// The value of the metric line `name` (e.g. `jobs_fired_total` or
/// `events_handled_total{subject="order:created",outcome="ack"}`) in a `/metrics` text; 0 when
/// absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The value of the metric line `name` served on `127.0.0.1:port/metrics`; 0 when absent.
pub async fn metric(port: u16, name: &str) -> f64 {
    let answer = get(port, "/metrics").await.expect("/metrics answers");
    metric_value(&answer.body, name)
}

/// `n` connections to `127.0.0.1:port` that never send anything, held open until dropped.
pub async fn idle_sockets(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connecting an idle socket");
        sockets.push(socket);
    }
    sockets
}

/// How a series of probes went: how many were answered 200 within the limit, of how many, and
/// the slowest (a probe not answered in time counts as the limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probes {
    pub answered: usize,
    pub asked: usize,
    pub slowest: std::time::Duration,
}

/// `rounds` rounds of `GET path` for each of `paths` on `127.0.0.1:port`, one after the other
/// on fresh connections as the kubelet probes, each given `within` to answer 200; how they went,
/// path by path.
pub async fn probe(
    port: u16,
    paths: &[&str],
    rounds: usize,
    within: std::time::Duration,
) -> Vec<Probes> {
    let mut probes = vec![
        Probes {
            answered: 0,
            asked: 0,
            slowest: std::time::Duration::ZERO,
        };
        paths.len()
    ];
    for _ in 0..rounds {
        for (path, probes) in paths.iter().zip(probes.iter_mut()) {
            let asked = std::time::Instant::now();
            let answer = tokio::time::timeout(within, get(port, path)).await;
            probes.asked += 1;
            probes.slowest = probes.slowest.max(asked.elapsed().min(within));
            if let Ok(Ok(answer)) = answer
                && answer.status == http::StatusCode::OK
            {
                probes.answered += 1;
            }
        }
    }
    probes
}
