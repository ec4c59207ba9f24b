//! The expiration service (work in progress).
