//! What no legitimate peer sends: the runner terminates such an event (and logs why) instead of
//! storing it or retrying it. Limits follow the Node stack: ids are MongoDB ObjectIds, numbers
//! are JavaScript numbers.

/// Largest integer a JavaScript number holds exactly: the ceiling of a version.
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// Highest price accepted: its amount in cents (as the payments service charges it) must still
/// be an exact JavaScript integer.
pub const MAX_PRICE: f64 = (MAX_SAFE_INTEGER / 100) as f64;

/// Longest ticket title accepted, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;

/// Longest free-form identifier accepted (a user id, a Stripe charge id), in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidEvent {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Result<(), InvalidEvent> {
    Err(InvalidEvent {
        field,
        reason: reason.into(),
    })
}

/// A 24-digit hexadecimal ObjectId.
pub fn object_id(field: &'static str, id: &str) -> Result<(), InvalidEvent> {
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        invalid(field, format!("not a 24-digit hex id ({} bytes)", id.len()))
    }
}

/// A version a JavaScript peer can hold.
pub fn version(version: u64) -> Result<(), InvalidEvent> {
    if version <= MAX_SAFE_INTEGER {
        Ok(())
    } else {
        invalid("version", format!("{version} is beyond 2^53 - 1"))
    }
}

/// A finite, non-negative price of at most [`MAX_PRICE`].
pub fn price(price: f64) -> Result<(), InvalidEvent> {
    if price.is_finite() && (0.0..=MAX_PRICE).contains(&price) {
        Ok(())
    } else {
        invalid("price", format!("{price} is not between 0 and {MAX_PRICE}"))
    }
}

/// A non-empty string of at most `max` bytes.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), InvalidEvent> {
    if value.trim().is_empty() {
        invalid(field, "empty")
    } else if value.len() > max {
        invalid(field, format!("{} bytes, more than {max}", value.len()))
    } else {
        Ok(())
    }
}

/// The fields `ticket:created` and `ticket:updated` share.
pub fn ticket(
    id: &str,
    version: u64,
    title: &str,
    price: f64,
    user_id: &str,
) -> Result<(), InvalidEvent> {
    object_id("id", id)?;
    self::version(version)?;
    text("title", title, MAX_TITLE_BYTES)?;
    self::price(price)?;
    text("userId", user_id, MAX_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_24_hex_digits() {
        assert!(object_id("id", "6745a1f0c2b1a4d5e6f70812").is_ok());
        assert!(object_id("id", "6745A1F0C2B1A4D5E6F70812").is_ok());
        for bad in [
            "",
            "not-an-object-id",
            "6745a1f0c2b1a4d5e6f7081",
            "6745a1f0c2b1a4d5e6f7081g",
        ] {
            assert!(object_id("id", bad).is_err(), "{bad}");
        }
        let huge = "a".repeat(500_000);
        let error = object_id("orderId", &huge).unwrap_err().to_string();
        assert!(error.len() < 100, "the reason is bounded: {error}");
    }

    #[test]
    fn prices_are_finite_non_negative_and_chargeable() {
        for good in [0.0, 12.5, 20.0, MAX_PRICE] {
            assert!(price(good).is_ok(), "{good}");
        }
        for bad in [-5.0, 1e308, f64::INFINITY, f64::NAN, MAX_PRICE * 2.0] {
            assert!(price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_and_texts_are_bounded() {
        assert!(version(MAX_SAFE_INTEGER).is_ok());
        assert!(version(i64::MAX as u64).is_err());
        assert!(text("title", "concert", MAX_TITLE_BYTES).is_ok());
        assert!(text("title", " ", MAX_TITLE_BYTES).is_err());
        assert!(text("title", &"x".repeat(600_000), MAX_TITLE_BYTES).is_err());
    }
}
