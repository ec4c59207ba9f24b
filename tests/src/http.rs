//! HTTP for the harness: [`common::testing::send`] with a cookie and a JSON body.

pub use common::testing::Answer as Response;
pub use http::Method;

/// Sends `method url` with an optional cookie and JSON body.
pub async fn request(
    method: Method,
    url: &str,
    cookie: Option<&str>,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<Response> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().unwrap_or("127.0.0.1");
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut headers = Vec::new();
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    let body = json.map(|json| {
        headers.push(("content-type", "application/json"));
        bytes::Bytes::from(json.to_string())
    });
    common::testing::send((host, port), method, path, &headers, body)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

/// `GET url` with a cookie.
pub async fn get(url: &str, cookie: Option<&str>) -> anyhow::Result<Response> {
    request(Method::GET, url, cookie, None).await
}
