//! docs/contract.md §4, route by route.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use common::Subject;
use common::events::{OrderCancelled, OrderCreated, timestamp};
use common::http::{JwtKey, auth::session_cookie};
use http::{Method, StatusCode};
use mongodb::bson::{Bson, doc, oid::ObjectId};
use serde_json::json;

use super::helpers::{JWT_SECRET, TestApp, signed_in, user};

#[tokio::test]
async fn creating_an_order_reserves_the_ticket_and_publishes_order_created() {
    let app = TestApp::spawn().await;
    let (cookie, user_id) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let before = Utc::now();

    let answer = app.order_ticket(&cookie, &ticket.id).await;

    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let order = answer.json();
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["status"], "created");
    assert_eq!(order["userId"], user_id);
    assert_eq!(order["version"], 0);
    assert_eq!(
        order["ticket"],
        json!({ "id": ticket.id.to_hex(), "title": "concert", "price": 20, "version": 0 })
    );
    let expires_at = timestamp::parse(order["expiresAt"].as_str().unwrap()).unwrap();
    let window = (expires_at - before).num_seconds();
    assert!((899..=901).contains(&window), "expires in {window} s");
    let keys: Vec<_> = order.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["id", "status", "userId", "expiresAt", "ticket", "version"]
    );

    let bodies = app.stream.bodies(Subject::OrderCreated).await;
    let expected = format!(
        r#"{{"id":"{id}","version":0,"status":"created","userId":"{user_id}","expiresAt":"{}","ticket":{{"id":"{}","price":20}}}}"#,
        order["expiresAt"].as_str().unwrap(),
        ticket.id.to_hex()
    );
    assert_eq!(
        bodies,
        [expected],
        "published before the answer, exactly as docs/contract.md §1.6"
    );
    // Marked published after the answer, in the next batch of marks (milliseconds later).
    common::testing::eventually(
        Duration::from_secs(2),
        "the event marked published",
        || async { app.unpublished(&id).await == 0 },
    )
    .await;
    assert_eq!(
        app.order(&id).await.outbox.len(),
        1,
        "publishing never writes an open order (see models::published)"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_ticket_already_reserved_cannot_be_ordered_again() {
    let app = TestApp::spawn().await;
    let (alice, _) = signed_in();
    let (bob, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let first = app.order_ticket(&alice, &ticket.id).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let answer = app.order_ticket(&bob, &ticket.id).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json(),
        json!({"errors": [{"message": "Ticket is already reserved"}]})
    );
    // The buyer asking again (a retry after a 503 or a lost answer) gets the same order back.
    let again = app.order_ticket(&alice, &ticket.id).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), first.json());
    assert_eq!(app.stream.bodies(Subject::OrderCreated).await.len(), 1);

    // Once the buyer has paid, it is theirs and reserved: asking again is refused.
    app.orders()
        .complete(app.order(first.json()["id"].as_str().unwrap()).await)
        .await
        .unwrap();
    let paid = app.order_ticket(&alice, &ticket.id).await;
    assert_eq!(paid.status, StatusCode::BAD_REQUEST, "{}", paid.body);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_order_frees_its_ticket_but_a_complete_one_does_not() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let freed = app.ticket("freed", 10.0).await;
    let first = app.order_ticket(&cookie, &freed.id).await.json();
    let path = format!("/api/orders/{}", first["id"].as_str().unwrap());
    assert_eq!(
        app.delete(&path, &cookie).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.order_ticket(&cookie, &freed.id).await.status,
        StatusCode::CREATED
    );

    let sold = app.ticket("sold", 10.0).await;
    let paid = app.order_ticket(&cookie, &sold.id).await.json();
    let paid_id = ObjectId::parse_str(paid["id"].as_str().unwrap()).unwrap();
    let order = app.orders().get(paid_id).await.unwrap().unwrap();
    app.orders().complete(order).await.unwrap();
    let answer = app.order_ticket(&cookie, &sold.id).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.messages(), ["Ticket is already reserved"]);
    app.stop().await;
}

#[tokio::test]
async fn ordering_an_unknown_ticket_is_404() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let answer = app.order_ticket(&cookie, &ObjectId::new()).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json(), json!({"errors": [{"message": "Not Found"}]}));
    app.stop().await;
}

#[tokio::test]
async fn a_missing_or_malformed_ticket_id_is_a_validation_error_on_the_field() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    for body in [
        json!({}),
        json!({ "ticketId": "" }),
        json!({ "ticketId": "   " }),
        json!({ "ticketId": null }),
        json!({ "ticketId": 42 }),
        json!({ "ticketId": "not-an-id" }),
        json!({ "ticketId": "6745a1d2c2b1a4d5e6f7081" }),
    ] {
        let answer = app.post_json("/api/orders", &cookie, &body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            answer.json(),
            json!({"errors": [{"message": "TicketId must be provided", "field": "ticketId"}]}),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn every_route_answers_401_without_a_valid_signed_in_user() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let order = app.order_ticket(&cookie, &ticket.id).await.json();
    let path = format!("/api/orders/{}", order["id"].as_str().unwrap());
    let forged = session_cookie(&JwtKey::new(b"another-key").sign(&user("x")));
    for credentials in [vec![], vec![("cookie", forged.as_str())]] {
        for (method, path) in [
            (Method::GET, "/api/orders"),
            (Method::POST, "/api/orders"),
            (Method::GET, path.as_str()),
            (Method::DELETE, path.as_str()),
        ] {
            let mut headers = credentials.clone();
            headers.push(("content-type", "application/json"));
            let body = json!({ "ticketId": ticket.id.to_hex() }).to_string();
            let answer = app
                .send(method.clone(), path, &headers, Some(Bytes::from(body)))
                .await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(answer.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                answer.json(),
                json!({"errors": [{"message": "Not authorized"}]})
            );
        }
    }
    assert_eq!(app.order(order["id"].as_str().unwrap()).await.version, 0);
    app.stop().await;
}

#[tokio::test]
async fn both_cookie_names_and_a_bearer_token_sign_the_user_in() {
    let app = TestApp::spawn().await;
    let (cookie, user_id) = signed_in();
    let token = JwtKey::new(JWT_SECRET.as_bytes()).sign(&user(&user_id));
    let legacy = cookie.replacen("session=", "express:sess=", 1);
    let bearer = format!("Bearer {token}");
    for header in [
        ("cookie", cookie.as_str()),
        ("cookie", legacy.as_str()),
        ("authorization", bearer.as_str()),
    ] {
        let answer = app.send(Method::GET, "/api/orders", &[header], None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", header.0);
        assert_eq!(answer.json(), json!([]));
    }
    app.stop().await;
}

#[tokio::test]
async fn listing_shows_only_the_users_orders_oldest_first_with_their_tickets() {
    let app = TestApp::spawn().await;
    let (alice, alice_id) = signed_in();
    let (bob, _) = signed_in();
    let mut expected = Vec::new();
    for (n, price) in [(1, 10.0), (2, 12.5), (3, 30.0)] {
        let ticket = app.ticket(&format!("show {n}"), price).await;
        let order = app.order_ticket(&alice, &ticket.id).await.json();
        expected.push(order);
        let other = app.ticket("bob's", 5.0).await;
        app.order_ticket(&bob, &other.id).await;
    }
    // A cancelled order is still the user's order.
    let cancelled = expected[1]["id"].as_str().unwrap();
    app.delete(&format!("/api/orders/{cancelled}"), &alice)
        .await;
    expected[1]["status"] = json!("cancelled");
    expected[1]["version"] = json!(1);

    let answer = app.get("/api/orders", &alice).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!(expected));
    let trailing_slash = app.get("/api/orders/", &alice).await;
    assert_eq!(
        trailing_slash.json(),
        json!(expected),
        "as Express routes do"
    );
    assert!(
        answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["userId"] == alice_id)
    );
    assert_eq!(expected[1]["ticket"]["price"], json!(12.5));
    app.stop().await;
}

#[tokio::test]
async fn showing_an_order_is_for_its_owner_only() {
    let app = TestApp::spawn().await;
    let (alice, _) = signed_in();
    let (bob, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let created = app.order_ticket(&alice, &ticket.id).await.json();
    let path = format!("/api/orders/{}", created["id"].as_str().unwrap());

    let answer = app.get(&path, &alice).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), created);

    let answer = app.get(&path, &bob).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.messages(), ["Not authorized"]);

    let answer = app
        .get(&format!("/api/orders/{}", ObjectId::new()), &alice)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.messages(), ["Not Found"]);

    for malformed in [
        "not-an-id",
        "6745a1d2c2b1a4d5e6f7081z",
        "6745a1d2c2b1a4d5e6f708100",
        "%ff%fe",
    ] {
        let answer = app.get(&format!("/api/orders/{malformed}"), &alice).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{malformed}");
        assert!(answer.json()["errors"][0]["message"].is_string());
    }
    app.stop().await;
}

#[tokio::test]
async fn cancelling_bumps_the_version_once_releases_the_ticket_and_publishes_order_cancelled() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let created = app.order_ticket(&cookie, &ticket.id).await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/orders/{id}");

    let answer = app.delete(&path, &cookie).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.body, "");
    let shown = app.get(&path, &cookie).await.json();
    assert_eq!(
        (shown["status"].clone(), shown["version"].clone()),
        (json!("cancelled"), json!(1))
    );
    let stored = app.order(&id).await;
    assert_eq!(stored.reservation.to_hex(), id, "the ticket is released");
    assert!(
        stored.outbox.is_empty(),
        "a cancelled order's outbox is emptied once its events are published"
    );
    assert_eq!(
        app.stream.bodies(Subject::OrderCancelled).await,
        [format!(
            r#"{{"id":"{id}","version":1,"ticket":{{"id":"{}"}}}}"#,
            ticket.id.to_hex()
        )]
    );

    // Already cancelled: 204 again, but no new version and no new event.
    let answer = app.delete(&path, &cookie).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(app.order(&id).await.version, 1);
    assert_eq!(app.stream.events::<OrderCancelled>().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_complete_order_cannot_be_cancelled() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let created = app.order_ticket(&cookie, &ticket.id).await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let order = app.order(&id).await;
    app.orders().complete(order).await.unwrap();

    let answer = app.delete(&format!("/api/orders/{id}"), &cookie).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.messages()[0].contains("cannot be cancelled"),
        "{}",
        answer.body
    );
    let stored = app.order(&id).await;
    assert_eq!((stored.status.as_str(), stored.version), ("complete", 1));
    assert!(app.stream.bodies(Subject::OrderCancelled).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn cancelling_answers_like_showing_for_unknown_malformed_and_foreign_orders() {
    let app = TestApp::spawn().await;
    let (alice, _) = signed_in();
    let (bob, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let created = app.order_ticket(&alice, &ticket.id).await.json();
    let id = created["id"].as_str().unwrap().to_owned();

    let answer = app.delete(&format!("/api/orders/{id}"), &bob).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.order(&id).await.status.as_str(), "created");
    let answer = app
        .delete(&format!("/api/orders/{}", ObjectId::new()), &alice)
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = app.delete("/api/orders/12345", &alice).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.messages(), ["OrderId must be a valid id"]);
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404_not_found() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/api/tickets"),
        (Method::GET, "/api/orders/a/b"),
        (Method::PUT, "/api/orders"),
        (Method::PATCH, "/api/orders/6745a1d2c2b1a4d5e6f70810"),
    ] {
        let answer = app
            .send(method.clone(), path, &[("cookie", &cookie)], None)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(answer.json(), json!({"errors": [{"message": "Not Found"}]}));
    }
    app.stop().await;
}

#[tokio::test]
async fn bodies_that_are_not_json_are_400_in_the_error_shape() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let ticket = app.ticket("concert", 20.0).await;
    let valid = json!({ "ticketId": ticket.id.to_hex() }).to_string();
    for (content_type, body) in [
        ("application/json", "{\"ticketId\": "),
        ("application/json", "not json"),
        ("application/json", "[1, 2]"),
        ("application/json", ""),
        ("text/plain", valid.as_str()),
        ("application/x-www-form-urlencoded", "ticketId=abc"),
    ] {
        let answer = app
            .send(
                Method::POST,
                "/api/orders",
                &[("cookie", &cookie), ("content-type", content_type)],
                Some(Bytes::from(body.to_owned())),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{content_type} {body}"
        );
        assert_eq!(answer.messages().len(), 1, "{}", answer.body);
    }
    let answer = app
        .send(
            Method::POST,
            "/api/orders",
            &[("cookie", &cookie)],
            Some(Bytes::from(valid)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "no content type");
    let stored = app
        .db
        .collection::<mongodb::bson::Document>("orders")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 0, "no order from a rejected body");
    app.stop().await;
}

#[tokio::test]
async fn a_rejected_body_gets_a_short_neutral_message_not_the_parsers_words() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    for (body, expected) in [
        ("{\"ticketId\": ", "Malformed JSON body"),
        (r#""just a string""#, "Invalid JSON body"),
        (
            r#"{"ticketId": "6745a1d2c2b1a4d5e6f70810", "ticketId": "6745a1d2c2b1a4d5e6f70811"}"#,
            "Invalid JSON body",
        ),
    ] {
        let answer = app
            .send(
                Method::POST,
                "/api/orders",
                &[("cookie", &cookie), ("content-type", "application/json")],
                Some(Bytes::from(body.to_owned())),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.messages(), [expected], "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_rejected_with_413_in_the_error_shape() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let huge = json!({ "ticketId": "6745a1d2c2b1a4d5e6f70810", "padding": "x".repeat(100_000) });
    let answer = app.post_json("/api/orders", &cookie, &huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        answer.json(),
        json!({"errors": [{"message": "Request body too large"}]})
    );
    app.stop().await;
}

#[tokio::test]
async fn of_fifty_concurrent_orders_for_one_ticket_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let ticket = app.ticket("the last seat", 99.0).await;
    let buyers: Vec<String> = (0..50).map(|_| signed_in().0).collect();
    let answers = futures::future::join_all(
        buyers
            .iter()
            .map(|cookie| app.order_ticket(cookie, &ticket.id)),
    )
    .await;
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let refused = answers
        .iter()
        .filter(|a| {
            a.status == StatusCode::BAD_REQUEST && a.messages() == ["Ticket is already reserved"]
        })
        .count();
    assert_eq!((created, refused), (1, 49));
    let stored = app
        .db
        .collection::<mongodb::bson::Document>("orders")
        .count_documents(doc! { "ticket": ticket.id })
        .await
        .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(app.stream.events::<OrderCreated>().await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn prices_stored_as_int32_int64_or_double_are_read_as_numbers() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    let tickets = app.db.collection::<mongodb::bson::Document>("tickets");
    for (price, shown) in [
        (Bson::Int32(20), json!(20)),
        (Bson::Int64(35), json!(35)),
        (Bson::Double(12.5), json!(12.5)),
    ] {
        let id = ObjectId::new();
        tickets
            .insert_one(doc! { "_id": id, "title": "t", "price": price, "version": 0 })
            .await
            .unwrap();
        let answer = app.order_ticket(&cookie, &id).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(answer.json()["ticket"]["price"], shown);
        let event = app.stream.events::<OrderCreated>().await.pop().unwrap();
        assert_eq!(json!(event.ticket.price), json!(shown.as_f64().unwrap()));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cancel_racing_an_expiry_cancels_once_with_one_event() {
    let app = TestApp::spawn().await;
    let (cookie, _) = signed_in();
    for _ in 0..5 {
        let ticket = app.ticket("race", 20.0).await;
        let created = app.order_ticket(&cookie, &ticket.id).await.json();
        let id = created["id"].as_str().unwrap().to_owned();
        let expiry = common::events::ExpirationComplete {
            order_id: id.clone(),
        };
        let path = format!("/api/orders/{id}");
        let (answer, ()) = tokio::join!(app.delete(&path, &cookie), app.stream.publish(&expiry));
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        app.wait_until_acked(Subject::ExpirationComplete).await;
        assert_eq!(app.order(&id).await.version, 1);
        let cancels: Vec<_> = app
            .stream
            .events::<OrderCancelled>()
            .await
            .into_iter()
            .filter(|e| e.id == id)
            .collect();
        assert_eq!(cancels.len(), 1, "one order:cancelled for {id}");
        assert_eq!(cancels[0].version, 1);
    }
    app.stop().await;
}
