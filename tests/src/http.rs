//! A small HTTP/1.1 client: one connection per request, JSON in and out.

use bytes::Bytes;
pub use http::Method;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub body: String,
}

impl Response {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `method url` with an optional cookie and JSON body.
pub async fn request(
    method: Method,
    url: &str,
    cookie: Option<&str>,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<Response> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(header::HOST, format!("{host}:{port}"));
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    let body = match json {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(builder.body(Full::new(body))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET url` with a cookie.
pub async fn get(url: &str, cookie: Option<&str>) -> anyhow::Result<Response> {
    request(Method::GET, url, cookie, None).await
}
