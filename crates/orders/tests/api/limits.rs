//! What a hostile client cannot do: hold connections with slow headers or a trickling body, or
//! grow the metrics with made-up methods.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::{TestApp, signed_in};

/// Everything the server sends until it closes the connection, and when it closed it.
async fn read_until_closed(mut stream: TcpStream, started: Instant) -> (String, Duration) {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408_and_slow_headers_are_cut_off() {
    let app = TestApp::spawn_with(|config| {
        config.http.header_timeout = Duration::from_millis(500);
        config.http.body_timeout = Duration::from_millis(500);
    })
    .await;
    let (cookie, _) = signed_in();
    let started = Instant::now();
    let mut trickling = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ticketId\""
    );
    trickling.write_all(head.as_bytes()).await.unwrap();
    let mut slow_head = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    slow_head
        .write_all(b"GET /api/orders HTTP/1.1\r\nHost: x\r\nCookie: ")
        .await
        .unwrap();
    let (answer, after) = read_until_closed(trickling, started).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.ends_with(r#"{"errors":[{"message":"Request body timed out"}]}"#),
        "{answer}"
    );
    assert!(after < Duration::from_secs(3), "answered after {after:?}");
    let (answer, after) = read_until_closed(slow_head, started).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(
        (Duration::from_millis(450)..Duration::from_secs(3)).contains(&after),
        "closed after {after:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let owned = TestApp::spawn().await;
    let app = &owned;
    let send = |method: String| async move {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = app.send(method, "/api/orders", &[], None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    };
    // One made-up method and one reading first, so that their series exist in both readings.
    send("FIRST".into()).await;
    app.get("/metrics", "").await;
    let before = app.get("/metrics", "").await.body;
    let mut methods: Vec<String> = (0..500).map(|n| format!("MADEUP{n}")).collect();
    methods.push("X".repeat(60_000));
    for method in &methods {
        send(method.clone()).await;
    }
    let after = app.get("/metrics", "").await.body;
    println!(
        "/metrics: {} bytes before, {} after {} made-up methods",
        before.len(),
        after.len(),
        methods.len()
    );
    assert!(!after.contains("MADEUP"), "a made-up method became a label");
    let counted = r#"http_requests_total{method="other",route="/api/orders",status="404"} 502"#;
    assert!(after.contains(counted), "missing {counted} in\n{after}");
    // Only the values of the HTTP series change, never which series there are. (Comparing sizes
    // was flaky: a duration sum's float can gain a dozen digits.)
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|line| line.starts_with("http_"))
            .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    };
    let (before, after) = (series(&before), series(&after));
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "made-up methods added HTTP series"
    );
    assert_eq!(before.len(), after.len());
    owned.stop().await;
}
