//! Logging set-up shared by both services.

use std::fmt;

use tracing_subscriber::{EnvFilter, fmt as layer_fmt, prelude::*};

/// How the log looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The logging settings every binary reads.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `json` for one JSON object per line, `pretty` for people
    #[arg(
        id = "log_format",
        value_name = "FORMAT",
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value = "pretty"
    )]
    pub format: LogFormat,
    /// Log filter, e.g. `info,orders=debug`
    #[arg(id = "log_filter", value_name = "FILTER", long = "log", env = "RUST_LOG", default_value = "info", value_parser = log_filter)]
    pub filter: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

fn log_filter(value: &str) -> Result<String, crate::config::Expected> {
    EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|_| crate::config::Expected("a log filter such as `info,orders=debug`".into()))
}

/// Installs the global subscriber with `args`. Calling it twice is harmless.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if args.format == LogFormat::Json {
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
        registry
            .with(layer_fmt::layer().with_ansi(colour()))
            .try_init()
    };
}

/// Colours only for a person at a terminal: a log file, a pipe or `kubectl logs` gets plain
/// text, and so does anyone who sets `NO_COLOR` (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    wants_colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string.
fn wants_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Logging as the process environment says (`LOG_FORMAT`, `RUST_LOG`), for tests and tools
/// that have no settings of their own.
pub fn init_from_env() {
    let format = match std::env::var("LOG_FORMAT") {
        Ok(format) if format.eq_ignore_ascii_case("json") => LogFormat::Json,
        _ => LogFormat::Pretty,
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    init(&LogArgs { format, filter });
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

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color_set() {
        use std::ffi::OsStr;
        assert!(wants_colour(true, None));
        assert!(wants_colour(true, Some(OsStr::new(""))));
        assert!(!wants_colour(true, Some(OsStr::new("1"))));
        assert!(!wants_colour(false, None));
        assert!(!wants_colour(false, Some(OsStr::new(""))));
    }

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
