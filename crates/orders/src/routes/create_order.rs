//! `POST /api/orders`: reserve a ticket.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use common::events::OrderStatus;
use common::http::{ApiError, FieldError, RequireAuth};
use http::StatusCode;
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;

use super::body::JsonBody;
use super::{AppState, OrderResponse};
use crate::models::order::Reservation;

/// The request body. `ticketId` is read as any JSON value so that a number or `null` is a
/// validation error, not a malformed body.
#[derive(Debug, Deserialize)]
pub struct CreateOrder {
    #[serde(rename = "ticketId", default)]
    ticket_id: Option<serde_json::Value>,
}

fn ticket_id(body: &CreateOrder) -> Result<ObjectId, ApiError> {
    body.ticket_id
        .as_ref()
        .and_then(|value| value.as_str())
        .map(str::trim)
        .filter(|id| id.len() == 24)
        .and_then(|id| ObjectId::parse_str(id).ok())
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                "ticketId",
                "TicketId must be provided",
            )])
        })
}

/// 201 with the new order; 400 when the ticket is already reserved; 404 for an unknown ticket.
///
/// A buyer whose earlier request for the ticket was answered 503 (or never answered) while its
/// order was stored after all gets that order back, 200, rather than "Ticket is already
/// reserved" by themselves: retrying a POST is safe.
pub async fn create_order(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<(StatusCode, Json<OrderResponse>), ApiError> {
    let ticket_id = ticket_id(&body)?;
    let ticket = state
        .tickets
        .get(ticket_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let expires_at = Utc::now() + state.expiration_window;
    let order = match state.orders.reserve(&user.id, &ticket, expires_at).await? {
        Reservation::Created(order) => order,
        Reservation::AlreadyReserved => {
            return match state.orders.reserving(ticket.id).await? {
                Some(order) if order.user_id == user.id && order.status == OrderStatus::Created => {
                    tracing::info!(order_id = %order.id, ticket_id = %ticket.id, "order requested again by its buyer");
                    state.outbox.publish_now(&order).await;
                    Ok((
                        StatusCode::OK,
                        Json(OrderResponse::new(&order, Some(&ticket))),
                    ))
                }
                _ => Err(ApiError::BadRequest("Ticket is already reserved".into())),
            };
        }
    };
    tracing::info!(order_id = %order.id, ticket_id = %ticket.id, "order created");
    state.outbox.publish_new(&order).await;
    Ok((
        StatusCode::CREATED,
        Json(OrderResponse::new(&order, Some(&ticket))),
    ))
}
