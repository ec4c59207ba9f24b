//! Golden bodies: what we write must be byte-for-byte what the Node stack writes, and what it
//! writes must decode to the same value.

use chrono::{TimeZone, Utc};

use super::*;

const ORDER: &str = "6745a1f0c2b1a4d5e6f70812";
const USER: &str = "6745a1e9c2b1a4d5e6f70811";
const TICKET: &str = "6745a1d2c2b1a4d5e6f70810";

fn assert_golden<E: Event + PartialEq>(event: E, golden: &str) {
    assert_eq!(
        serde_json::to_string(&event).unwrap(),
        golden,
        "encoding {}",
        E::SUBJECT
    );
    let decoded: E = serde_json::from_str(golden).unwrap();
    assert_eq!(decoded, event, "decoding {}", E::SUBJECT);
}

fn expires_at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 11, 52, 5).unwrap() + chrono::Duration::milliseconds(123)
}

#[test]
fn ticket_created_round_trips_with_whole_and_fractional_prices() {
    assert_golden(
        TicketCreated {
            id: TICKET.into(),
            version: 0,
            title: "concert".into(),
            price: 20.0,
            user_id: USER.into(),
        },
        r#"{"id":"6745a1d2c2b1a4d5e6f70810","version":0,"title":"concert","price":20,"userId":"6745a1e9c2b1a4d5e6f70811"}"#,
    );
    assert_golden(
        TicketCreated {
            id: TICKET.into(),
            version: 3,
            title: "opera".into(),
            price: 12.5,
            user_id: USER.into(),
        },
        r#"{"id":"6745a1d2c2b1a4d5e6f70810","version":3,"title":"opera","price":12.5,"userId":"6745a1e9c2b1a4d5e6f70811"}"#,
    );
}

#[test]
fn ticket_updated_omits_an_unset_order_id_and_accepts_null() {
    let free = TicketUpdated {
        id: TICKET.into(),
        version: 2,
        title: "concert".into(),
        price: 20.0,
        user_id: USER.into(),
        order_id: None,
    };
    assert_golden(
        free.clone(),
        r#"{"id":"6745a1d2c2b1a4d5e6f70810","version":2,"title":"concert","price":20,"userId":"6745a1e9c2b1a4d5e6f70811"}"#,
    );
    let with_null: TicketUpdated = serde_json::from_str(
        r#"{"id":"6745a1d2c2b1a4d5e6f70810","version":2,"title":"concert","price":20,"userId":"6745a1e9c2b1a4d5e6f70811","orderId":null}"#,
    )
    .unwrap();
    assert_eq!(with_null, free);
    assert_golden(
        TicketUpdated {
            order_id: Some(ORDER.into()),
            price: 99.99,
            ..free
        },
        r#"{"id":"6745a1d2c2b1a4d5e6f70810","version":2,"title":"concert","price":99.99,"userId":"6745a1e9c2b1a4d5e6f70811","orderId":"6745a1f0c2b1a4d5e6f70812"}"#,
    );
}

#[test]
fn order_created_matches_the_spec_example() {
    assert_golden(
        OrderCreated {
            id: ORDER.into(),
            version: 0,
            status: OrderStatus::Created,
            user_id: USER.into(),
            expires_at: expires_at(),
            ticket: OrderCreatedTicket {
                id: TICKET.into(),
                price: 20.0,
            },
        },
        r#"{"id":"6745a1f0c2b1a4d5e6f70812","version":0,"status":"created","userId":"6745a1e9c2b1a4d5e6f70811","expiresAt":"2026-11-26T11:52:05.123Z","ticket":{"id":"6745a1d2c2b1a4d5e6f70810","price":20}}"#,
    );
}

#[test]
fn order_created_writes_milliseconds_even_when_they_are_zero_and_accepts_any_rfc3339() {
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    assert_eq!(timestamp::format(&at), "2026-01-02T03:04:05.000Z");
    for input in [
        "2026-01-02T03:04:05Z",
        "2026-01-02T04:04:05+01:00",
        "2026-01-02T03:04:05.000000Z",
    ] {
        assert_eq!(timestamp::parse(input).unwrap(), at, "{input}");
    }
    assert!(timestamp::parse("2026-01-02 03:04:05").is_err());
}

#[test]
fn order_cancelled_round_trips() {
    assert_golden(
        OrderCancelled {
            id: ORDER.into(),
            version: 1,
            ticket: OrderCancelledTicket { id: TICKET.into() },
        },
        r#"{"id":"6745a1f0c2b1a4d5e6f70812","version":1,"ticket":{"id":"6745a1d2c2b1a4d5e6f70810"}}"#,
    );
}

#[test]
fn expiration_complete_round_trips() {
    assert_golden(
        ExpirationComplete {
            order_id: ORDER.into(),
        },
        r#"{"orderId":"6745a1f0c2b1a4d5e6f70812"}"#,
    );
}

#[test]
fn payment_created_round_trips() {
    assert_golden(
        PaymentCreated {
            id: "6745a2a0c2b1a4d5e6f70899".into(),
            order_id: ORDER.into(),
            stripe_id: "ch_3Q1abc".into(),
        },
        r#"{"id":"6745a2a0c2b1a4d5e6f70899","orderId":"6745a1f0c2b1a4d5e6f70812","stripeId":"ch_3Q1abc"}"#,
    );
}

#[test]
fn order_status_strings_are_the_node_stack_ones() {
    for (status, wire) in [
        (OrderStatus::Created, "created"),
        (OrderStatus::Cancelled, "cancelled"),
        (OrderStatus::AwaitingPayment, "awaiting:payment"),
        (OrderStatus::Complete, "complete"),
    ] {
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            format!("\"{wire}\"")
        );
        assert_eq!(status.as_str(), wire);
        assert_eq!(
            serde_json::from_str::<OrderStatus>(&format!("\"{wire}\"")).unwrap(),
            status
        );
    }
    assert!(serde_json::from_str::<OrderStatus>("\"expired\"").is_err());
}

/// Bodies shaped the way the Node services build them: `JSON.stringify` of the data object, with
/// key order of their own, extra fields (Mongoose documents leak `__v`), prices as integers, and
/// `orderId: undefined` dropped.
#[test]
fn decodes_bodies_in_the_node_serializer_shape() {
    let ticket: TicketUpdated = serde_json::from_str(
        r#"{"userId":"6745a1e9c2b1a4d5e6f70811","title":"concert","price":15,"id":"6745a1d2c2b1a4d5e6f70810","version":4,"__v":0}"#,
    )
    .unwrap();
    assert_eq!(ticket.version, 4);
    assert_eq!(ticket.price, 15.0);
    assert_eq!(ticket.order_id, None);

    let order: OrderCreated = serde_json::from_str(
        r#"{"id":"6745a1f0c2b1a4d5e6f70812","status":"created","userId":"6745a1e9c2b1a4d5e6f70811","expiresAt":"2026-11-26T11:52:05.123Z","version":0,"ticket":{"id":"6745a1d2c2b1a4d5e6f70810","price":12.5,"title":"ignored"}}"#,
    )
    .unwrap();
    assert_eq!(order.expires_at, expires_at());
    assert_eq!(order.ticket.price, 12.5);

    let payment: PaymentCreated = serde_json::from_str(
        r#"{"orderId":"6745a1f0c2b1a4d5e6f70812","id":"6745a2a0c2b1a4d5e6f70899","stripeId":"ch_1"}"#,
    )
    .unwrap();
    assert_eq!(payment.order_id, ORDER);

    assert!(
        serde_json::from_str::<OrderCancelled>(r#"{"id":"x","version":-1,"ticket":{"id":"y"}}"#)
            .is_err()
    );
}

#[test]
fn message_ids_identify_the_change_not_the_publish() {
    let cancelled = |version| OrderCancelled {
        id: ORDER.into(),
        version,
        ticket: OrderCancelledTicket { id: TICKET.into() },
    };
    assert_eq!(cancelled(1).message_id(), cancelled(1).message_id());
    assert_ne!(cancelled(1).message_id(), cancelled(2).message_id());
    assert_eq!(
        ExpirationComplete {
            order_id: ORDER.into()
        }
        .message_id(),
        "expiration:complete:6745a1f0c2b1a4d5e6f70812"
    );
}
