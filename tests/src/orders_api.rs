//! The orders HTTP API as the web client calls it.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::{self, Method, Response};

/// The API of one orders process.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    base: String,
}

impl OrdersApi {
    /// The API under `service_url` (`http://127.0.0.1:<port>`).
    pub fn new(service_url: &str) -> Self {
        OrdersApi {
            base: format!("{service_url}/api/orders"),
        }
    }

    /// `POST /api/orders {"ticketId"}`.
    pub async fn reserve(&self, cookie: &str, ticket_id: &str) -> anyhow::Result<Response> {
        http::request(
            Method::POST,
            &self.base,
            Some(cookie),
            Some(&json!({ "ticketId": ticket_id })),
        )
        .await
    }

    /// `POST` as soon as the ticket is known: a ticket announced on the stream a moment ago may
    /// not have reached the orders service yet, which answers 404 (and creates nothing) until it
    /// has. Retries 404 for up to 10 s.
    pub async fn reserve_announced(
        &self,
        cookie: &str,
        ticket_id: &str,
    ) -> anyhow::Result<Response> {
        let start = Instant::now();
        loop {
            let response = self.reserve(cookie, ticket_id).await?;
            if response.status != 404 || start.elapsed() > Duration::from_secs(10) {
                return Ok(response);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /api/orders/:id`.
    pub async fn show(&self, cookie: &str, order_id: &str) -> anyhow::Result<Response> {
        http::get(&format!("{}/{order_id}", self.base), Some(cookie)).await
    }

    /// `GET /api/orders`.
    pub async fn list(&self, cookie: &str) -> anyhow::Result<Response> {
        http::get(&self.base, Some(cookie)).await
    }

    /// `DELETE /api/orders/:id`.
    pub async fn cancel(&self, cookie: &str, order_id: &str) -> anyhow::Result<Response> {
        http::request(
            Method::DELETE,
            &format!("{}/{order_id}", self.base),
            Some(cookie),
            None,
        )
        .await
    }

    /// Polls `GET /api/orders/:id` until its status is `status`.
    pub async fn wait_status(
        &self,
        cookie: &str,
        order_id: &str,
        status: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let response = self.show(cookie, order_id).await?;
            if response.json()["status"] == status {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < deadline,
                "order {order_id} never became {status}: {}",
                response.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
