//! `/healthz`, `/readyz` and `/metrics`, answered by `common`'s [`Ops`](common::ops::Ops).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use common::ops::OpsResponse;
use http::header;

use super::AppState;

fn render(answer: OpsResponse) -> Response {
    (
        answer.status,
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response()
}

/// The process is alive.
pub async fn healthz(State(state): State<AppState>) -> Response {
    render(state.ops.health())
}

/// MongoDB and NATS answer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    render(state.ops.readiness().await)
}

/// Prometheus metrics.
pub async fn metrics(State(state): State<AppState>) -> Response {
    render(state.ops.metrics())
}
