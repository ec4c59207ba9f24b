//! The HTTP API of docs/contract.md §4, one file per route, and the ops endpoints on the same port.

mod body;
mod budget;
mod cancel_order;
mod create_order;
mod list_orders;
mod observe;
mod ops;
mod owned_order;
mod response;
mod show_order;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::routing::get;
use axum::{Router, middleware};
use common::http::{ApiError, JwtKey};
use common::ops::Ops;
use mongodb::bson::oid::ObjectId;

use crate::metrics::Metrics;
use crate::models::{Orders, StoreError, Tickets};
use crate::outbox::Outbox;

pub use budget::{Budget, OverBudget};
pub use owned_order::OwnedOrder;
pub use response::{OrderResponse, TicketResponse};

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub orders: Orders,
    pub tickets: Tickets,
    pub outbox: Arc<Outbox>,
    pub jwt_key: JwtKey,
    pub metrics: Arc<Metrics>,
    pub ops: Arc<Ops>,
    /// How long a new order holds its ticket.
    pub expiration_window: Duration,
    /// How long and how large a request may be.
    pub budget: Budget,
}

impl FromRef<AppState> for JwtKey {
    fn from_ref(state: &AppState) -> Self {
        state.jwt_key.clone()
    }
}

/// The service's router: the API under `/api/orders`, `/healthz`, `/readyz`, `/metrics`, and
/// 404 `Not Found` for anything else; every request within its [`Budget`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/orders",
            get(list_orders::list_orders).post(create_order::create_order),
        )
        // Express routes ignore a trailing slash; the web client may send one.
        .route(
            "/api/orders/",
            get(list_orders::list_orders).post(create_order::create_order),
        )
        .route(
            "/api/orders/{order_id}",
            get(show_order::show_order).delete(cancel_order::cancel_order),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        // The Node service answered an unknown method like an unknown path.
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            budget::within_budget,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The order id in a path; anything but a 24-digit hex id is the client's mistake.
fn parse_order_id(id: &str) -> Result<ObjectId, ApiError> {
    if id.len() != 24 {
        return Err(ApiError::BadRequest("OrderId must be a valid id".into()));
    }
    ObjectId::parse_str(id).map_err(|_| ApiError::BadRequest("OrderId must be a valid id".into()))
}

/// A lost database connection is worth a retry (503); anything else is a bug (500).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        use mongodb::error::ErrorKind;
        match &*error.0.kind {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. } => ApiError::unavailable(error),
            _ => ApiError::internal(error),
        }
    }
}
