//! `/healthz`, `/readyz` and `/metrics` on the API's port.

use common::Subject;
use common::events::TicketCreated;
use http::StatusCode;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

use super::helpers::{TestApp, signed_in};

#[tokio::test]
async fn health_and_readiness_answer_on_the_api_port() {
    let app = TestApp::spawn().await;
    let health = app.get("/healthz", "").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.get("/readyz", "").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    // The transport, and why: no NATS Streaming server answers for the test's cluster id.
    let transport = format!(
        "jetstream (NATS_TRANSPORT=auto and no NATS Streaming server answers _STAN.discover.{})",
        app.stream.spec.name
    );
    assert_eq!(
        ready.json(),
        json!({"status": "ready", "checks": {"mongodb": "ok", "nats": "ok"}, "nats_transport": transport})
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_published_events() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    app.order_ticket(&cookie, &ticket.id).await;
    app.order_ticket(&signed_in().0, &ticket.id).await;
    app.get("/api/orders/nope", &cookie).await;
    app.get("/no/such/path", &cookie).await;

    let metrics = app.get("/metrics", "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body;
    for line in [
        r#"http_requests_total{method="POST",route="/api/orders",status="201"} 1"#,
        r#"http_requests_total{method="POST",route="/api/orders",status="400"} 1"#,
        r#"http_requests_total{method="GET",route="/api/orders/{order_id}",status="400"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"events_published_total{subject="order:created",outcome="ok"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let latency = r#"http_request_duration_seconds_count{method="POST",route="/api/orders"} 2"#;
    assert!(text.contains(latency), "missing {latency} in\n{text}");

    app.stream
        .publish(&TicketCreated {
            id: ObjectId::new().to_hex(),
            version: 0,
            title: "t".into(),
            price: 1.0,
            user_id: ObjectId::new().to_hex(),
        })
        .await;
    app.wait_until_acked(Subject::TicketCreated).await;
    let text = app.get("/metrics", "").await.body;
    let handled = r#"events_handled_total{subject="ticket:created",outcome="ack"} 1"#;
    assert!(text.contains(handled), "missing {handled} in\n{text}");
    app.stop().await;
}
