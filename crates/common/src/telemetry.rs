//! Logging set-up shared by both services.

use std::fmt;

use tracing_subscriber::{EnvFilter, fmt as layer_fmt, prelude::*};

/// Installs the global subscriber: JSON lines when `LOG_FORMAT=json`, human-readable otherwise;
/// the level comes from `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                layer_fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(layer_fmt::layer()).try_init()
    };
}

/// Displays an error with its whole `source()` chain: `outer: middle: root`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how long it was.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn truncation_bounds_logged_text_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate(&"x".repeat(500_000), 4), "xxxx… (500000 bytes)");
        assert_eq!(truncate("ééé", 3), "é… (6 bytes)");
    }

    #[test]
    fn error_chain_shows_every_cause() {
        let error = Outer(std::io::Error::other("root cause"));
        assert_eq!(ErrorChain(&error).to_string(), "outer: root cause");
    }
}
