//! HTTP pieces shared by services with an API (feature `http`).
//!
//! - [`ApiError`]: every failure a route can answer with, rendered as the contract's error body (docs/contract.md §4.3)
//!   `{"errors":[{"message","field"?}]}` with its status code.
//! - [`auth`]: the `session` / `express:sess` cookie and bearer token of docs/contract.md §5, and the
//!   [`CurrentUser`] and [`RequireAuth`] extractors.

pub mod auth;
mod error;

pub use auth::{CurrentUser, JwtKey, RequireAuth, UserPayload};
pub use error::{ApiError, FieldError};
