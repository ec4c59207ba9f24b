//! MongoDB ObjectIds for the objects other services own (tickets, users, payments).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh 24-hex ObjectId: seconds since the epoch, 5 random bytes, a 3-byte counter.
pub fn object_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as u32;
    let random = RandomState::new().hash_one(std::process::id()) & 0xff_ffff_ffff;
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
    format!("{seconds:08x}{random:010x}{counter:06x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_ids_are_24_lowercase_hex_and_distinct() {
        let a = super::object_id();
        let b = super::object_id();
        assert_eq!(a.len(), 24);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
