//! What a hostile client cannot do: hold connections with slow headers or a trickling body, grow
//! the metrics with made-up methods, take memory with huge request heads, or keep the probes out
//! by holding more connections than the cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::testing::{TestStream, eventually, idle_sockets, probe, resident_memory};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::helpers::{TestApp, orders_process, signed_in};

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
    // As long as a request line can be within HTTP_MAX_HEADER_BYTES (16 KiB).
    methods.push("X".repeat(15_000));
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
    // Longer is a head over the cap: 431, and not counted at all.
    let huge = Method::from_bytes("X".repeat(60_000).as_bytes()).unwrap();
    let answer = app.send(huge, "/api/orders", &[], None).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
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

/// Bytes in mebibytes, for the figures printed.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_request_heads_on_every_connection_stay_far_under_the_memory_limit() {
    // The manifests limit orders to 256 MiB (k8s/base/orders-depl.yaml); this load took a debug
    // build to 256 MiB and more when the head was not capped.
    const LIMIT: u64 = 128 * 1024 * 1024;
    const CONNECTIONS: usize = 1024;
    let stream = TestStream::new().await;
    let orders = orders_process(&stream, &[]).await;
    let (port, pid) = (orders.port, orders.pid().unwrap());
    let start = orders.rss().unwrap();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(resident_memory(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        }
    });
    let head = Bytes::from(format!(
        "GET /api/orders HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(380 * 1024)
    ));
    // Every client sends its head, reads the start of the answer and keeps its socket until all
    // have done so: the heads are in the server at the same time.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let _ = socket.write_all(&head).await;
                let mut answer = [0u8; 12];
                let read =
                    tokio::time::timeout(Duration::from_secs(30), socket.read_exact(&mut answer))
                        .await;
                let status = match read {
                    Ok(Ok(_)) => String::from_utf8_lossy(&answer[9..12]).into_owned(),
                    Ok(Err(_)) => "reset".to_owned(),
                    Err(_) => "no answer".to_owned(),
                };
                (socket, status)
            })
        })
        .collect();
    let mut sockets = Vec::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for client in clients {
        let (socket, status) = client.await.unwrap();
        sockets.push(socket);
        *statuses.entry(status).or_default() += 1;
    }
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    drop(sockets);
    eventually(
        Duration::from_secs(30),
        "every connection closed",
        || async { orders.metric("http_connections_open").await <= 1.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = orders.rss().unwrap();
    println!(
        "RSS with {CONNECTIONS} heads of 380 KiB: {:.1} MiB at start, {:.1} MiB at the peak, \
         {:.1} MiB after they closed; answers: {statuses:?}",
        mib(start),
        mib(peak),
        mib(after)
    );
    assert!(
        peak < LIMIT,
        "peak {:.1} MiB, over {} MiB",
        mib(peak),
        LIMIT >> 20
    );
    // Back near the start (the allocator may keep some of what was freed; the uncapped server
    // kept about 170 MiB).
    assert!(
        after < start + 64 * 1024 * 1024,
        "{:.1} MiB after, {:.1} MiB at start",
        mib(after),
        mib(start)
    );
    assert_eq!(statuses.get("no answer"), None, "{statuses:?}");
    assert!(
        statuses
            .keys()
            .all(|status| status == "431" || status == "reset"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn probes_are_answered_within_a_second_while_idle_sockets_hold_more_than_the_cap() {
    let stream = TestStream::new().await;
    let orders = orders_process(&stream, &[("HTTP_MAX_CONNECTIONS", "32")]).await;
    let idle = idle_sockets(orders.port, 40).await;
    // Past the grace of a connection just opened: they are idle now.
    tokio::time::sleep(2 * common::server::HEAD_GRACE).await;
    let probes = probe(
        orders.port,
        &["/healthz", "/readyz"],
        10,
        Duration::from_secs(1),
    )
    .await;
    let (healthz, readyz) = (probes[0], probes[1]);
    println!("with 40 idle sockets and a cap of 32: /healthz {healthz:?}, /readyz {readyz:?}");
    assert_eq!(healthz.answered, 10, "/healthz: {healthz:?}");
    assert_eq!(readyz.answered, 10, "/readyz: {readyz:?}");
    // Eight idle sockets made way for the last eight, one more for the first probe (each probe
    // closes its connection, so the next one finds that place free).
    let shed = orders.metric("http_connections_shed_total").await;
    assert!(shed >= 9.0, "{shed} shed");
    drop(idle);
}
