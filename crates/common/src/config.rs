//! Configuration and command line, declared once per setting.
//!
//! Each binary's settings are one `clap` struct: every field names its environment variable, its
//! default and its help text in one place (the shared ones, NATS, HTTP limits and logging, are
//! `clap::Args` structs of this crate, flattened in). From that one declaration come:
//!
//! - `--help`, which needs no server;
//! - `--env-vars`, the JSON list of variables the deployment checks compare with the manifests
//!   ([`env_vars`]);
//! - one-line errors: a bad or missing setting prints `NAME=<value> is invalid: expected …` or
//!   `NAME must be set: …` (secrets and URL credentials redacted) and exits with code 2, never a
//!   backtrace ([`Settings::load`]);
//! - [`Settings::from_lookup`], the same parse over a map instead of the process environment, for
//!   tests.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, Command, Parser};
use serde::Serialize;

/// A setting that is missing or invalid, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable} {problem}")]
pub struct ConfigError {
    /// The environment variable (or flag, for command-line-only settings).
    pub variable: String,
    /// What is wrong, with the value as given (redacted when secret) and what is expected.
    pub problem: String,
}

impl ConfigError {
    /// `variable` is wrong: `problem`.
    pub fn new(variable: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            variable: variable.into(),
            problem: problem.into(),
        }
    }
}

/// A binary's settings: a `clap` struct, plus the checks that span several fields.
pub trait Settings: Parser {
    /// Checks clap cannot express (one setting against another); runs after parsing.
    fn check(self) -> Result<Self, ConfigError> {
        Ok(self)
    }

    /// The settings from the process's command line and environment. `--help` prints the usage
    /// and `--env-vars` the variables as JSON, both exiting 0 without touching any server; a bad
    /// setting prints one line naming it and exits 2.
    fn load() -> Self {
        Self::load_from(std::env::args_os())
    }

    /// As [`Settings::load`], with `args` as the command line (its first item the program name).
    fn load_from(args: impl IntoIterator<Item = OsString>) -> Self {
        let args: Vec<OsString> = args.into_iter().collect();
        let command = with_build_info(with_env_vars_flag(Self::command()));
        if args.get(1).is_some_and(|arg| arg == "--env-vars") {
            println!("{}", to_json(&env_vars(&command)));
            std::process::exit(0);
        }
        let parsed = command
            .clone()
            .try_get_matches_from(&args)
            .and_then(|matches| Self::from_arg_matches(&matches));
        let checked = match parsed {
            Ok(settings) => settings.check(),
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                e.exit()
            }
            Err(e) => Err(from_clap(&e, &command)),
        };
        checked.unwrap_or_else(|e| {
            eprintln!("{}: {e}", command.get_name());
            std::process::exit(2)
        })
    }

    /// The settings from `pairs` of variable and value alone (tests, tools).
    fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            pairs
                .iter()
                .find(|(variable, _)| *variable == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    /// The settings read through `lookup` (a test's map) instead of the process environment;
    /// the command line is empty.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let declared = Self::command();
        let mut args = vec![declared.get_name().to_owned()];
        let command = declared.clone().mut_args(|arg| {
            if let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long())
                && let Some(value) = lookup(&variable.to_string_lossy())
            {
                args.push(format!("--{long}={value}"));
            }
            arg.env(None)
        });
        command
            .try_get_matches_from(&args)
            .and_then(|matches| Self::from_arg_matches(&matches))
            .map_err(|e| from_clap(&e, &declared))?
            .check()
    }
}

/// One environment variable a binary reads, as `--env-vars` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    /// The process refuses to start without it.
    pub required: bool,
    /// The value used when it is unset, if any.
    pub default: Option<String>,
    pub about: String,
}

/// Every environment variable `command` reads, in declaration order.
pub fn env_vars(command: &Command) -> Vec<EnvVar> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?.to_string_lossy().into_owned();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            Some(EnvVar {
                name,
                required: arg.is_required_set(),
                default: (!defaults.is_empty()).then(|| defaults.join(",")),
                about: arg
                    .get_help()
                    .map(|help| help.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The JSON array `--env-vars` prints.
pub fn to_json(vars: &[EnvVar]) -> String {
    serde_json::to_string_pretty(vars).expect("plain structs serialise")
}

fn with_env_vars_flag(command: Command) -> Command {
    command.arg(
        Arg::new("env-vars")
            .long("env-vars")
            .action(clap::ArgAction::SetTrue)
            .help("Print the environment variables this binary reads, as JSON, and exit"),
    )
}

/// `--version` says the commit too: `orders 0.1.0 (commit 4e358fc)`.
fn with_build_info(command: Command) -> Command {
    match command.get_version() {
        Some(version) => {
            let long = crate::build_info::long_version(version);
            command.version(long)
        }
        None => command,
    }
}

/// One line for a clap error, naming the environment variable rather than the flag.
fn from_clap(error: &clap::Error, command: &Command) -> ConfigError {
    let shown = |arg: &Arg| {
        arg.get_env()
            .map(|env| env.to_string_lossy().into_owned())
            .unwrap_or_else(|| {
                format!(
                    "--{}",
                    arg.get_long().unwrap_or_else(|| arg.get_id().as_str())
                )
            })
    };
    // The argument may belong to a subcommand.
    fn all_args(command: &Command) -> Vec<&Arg> {
        command
            .get_arguments()
            .chain(command.get_subcommands().flat_map(all_args))
            .collect()
    }
    let args = all_args(command);
    let arg_of = |display: &str| {
        args.iter().copied().find(|arg| {
            arg.get_long().is_some_and(|long| {
                display == format!("--{long}") || display.starts_with(&format!("--{long} "))
            })
        })
    };
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(vec![s.clone()]),
        Some(ContextValue::Strings(s)) => Some(s.clone()),
        Some(ContextValue::StyledStr(s)) => Some(vec![s.to_string()]),
        Some(ContextValue::StyledStrs(s)) => Some(s.iter().map(ToString::to_string).collect()),
        _ => None,
    };
    let invalid = context(ContextKind::InvalidArg).unwrap_or_default();
    match error.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing: Vec<&Arg> = invalid.iter().filter_map(|a| arg_of(a)).collect();
            match missing.as_slice() {
                [arg] => ConfigError::new(
                    shown(arg),
                    format!(
                        "must be set: {}",
                        arg.get_help().map(|h| h.to_string()).unwrap_or_default()
                    ),
                ),
                [first, rest @ ..] => ConfigError::new(
                    shown(first),
                    format!(
                        "must be set, and so must {}",
                        rest.iter().map(|a| shown(a)).collect::<Vec<_>>().join(", ")
                    ),
                ),
                [] => ConfigError::new("settings", first_line(error)),
            }
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let Some(arg) = invalid.first().and_then(|a| arg_of(a)) else {
                return ConfigError::new("settings", first_line(error));
            };
            let value = context(ContextKind::InvalidValue)
                .and_then(|v| v.first().cloned())
                .unwrap_or_default();
            // URLs lose only their credentials; other hidden values (keys) are not shown at all.
            let is_url = arg
                .get_long()
                .is_some_and(|long| long.ends_with("-url") || long.ends_with("-uri"));
            let value = if arg.is_hide_env_values_set() && !is_url {
                "<redacted>".to_owned()
            } else {
                redact_url(&value)
            };
            let expected = match (error.kind(), context(ContextKind::ValidValue)) {
                (ErrorKind::InvalidValue, Some(valid)) => format!("one of {}", valid.join(", ")),
                _ => std::error::Error::source(error)
                    .map(|source| source.to_string())
                    .unwrap_or_else(|| "a valid value".into()),
            };
            ConfigError::new(
                format!("{}=`{value}`", shown(arg)),
                format!("is invalid: expected {expected}"),
            )
        }
        _ => ConfigError::new(
            "command line:",
            format!("{} (see --help)", first_line(error)),
        ),
    }
}

fn first_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// The URL (or each URL of a comma-separated list) with any `user:password@` replaced, for logs
/// and error messages; anything else as is. A `,` left unencoded in credentials
/// (`nats://u:pa,ss@host`) does not split them: what comes before the `@` is hidden whole.
pub fn redact_url(url: &str) -> String {
    let parts: Vec<&str> = url.split(',').collect();
    let mut servers = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let mut end = i;
        if parts[i].contains("://") && !parts[i].contains('@') {
            // The parts up to one with an `@` (and no scheme of its own) are one server.
            if let Some(at) = parts[i + 1..]
                .iter()
                .take_while(|part| !part.contains("://"))
                .position(|part| part.contains('@'))
            {
                end = i + 1 + at;
            }
        }
        let server = parts[i..=end].join(",");
        servers.push(match (server.find("://"), server.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}<redacted>{}", &server[..scheme_end + 3], &server[at..])
            }
            _ => server,
        });
        i = end + 1;
    }
    servers.join(",")
}

/// Why a value did not parse: the text after "expected".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected(pub String);

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Expected {}

/// Value parsers with messages that say what is expected.
pub mod parse {
    use super::*;

    /// A whole number of seconds, at least 1.
    pub fn seconds(value: &str) -> Result<Duration, Expected> {
        value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s >= 1)
            .map(Duration::from_secs)
            .ok_or_else(|| Expected("a whole number of seconds, at least 1".into()))
    }

    /// A number of seconds (fractions allowed), more than 0 and at most an hour.
    pub fn fractional_seconds(value: &str) -> Result<Duration, Expected> {
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Expected("a number of seconds, more than 0 and at most 3600".into()))
    }

    /// A whole number of milliseconds, at least 1.
    pub fn millis(value: &str) -> Result<Duration, Expected> {
        value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms >= 1)
            .map(Duration::from_millis)
            .ok_or_else(|| Expected("a whole number of milliseconds, at least 1".into()))
    }

    /// A TCP port; 0 lets the system pick one.
    pub fn port(value: &str) -> Result<u16, Expected> {
        value
            .trim()
            .parse::<u16>()
            .map_err(|_| Expected("a port number from 0 to 65535".into()))
    }

    /// A whole number, at least 1.
    pub fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(
        value: &str,
    ) -> Result<T, Expected> {
        value
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= T::from(1))
            .ok_or_else(|| Expected("a whole number, at least 1".into()))
    }

    /// A whole number from `MIN` to `MAX`.
    pub fn whole_number_in<const MIN: usize, const MAX: usize>(
        value: &str,
    ) -> Result<usize, Expected> {
        value
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (MIN..=MAX).contains(n))
            .ok_or_else(|| Expected(format!("a whole number from {MIN} to {MAX}")))
    }

    /// `true` or `false`.
    pub fn boolean(value: &str) -> Result<bool, Expected> {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(Expected("`true` or `false`".into())),
        }
    }

    /// A value that is not empty.
    pub fn non_empty(value: &str) -> Result<String, Expected> {
        if value.trim().is_empty() {
            Err(Expected("a value that is not empty".into()))
        } else {
            Ok(value.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, CommandFactory};

    use super::*;

    #[derive(Args, Debug, Clone)]
    struct Shared {
        /// Where the server is
        #[arg(long = "server-url", env = "SERVER_URL")]
        url: String,
    }

    /// A test binary.
    #[derive(Parser, Debug, Clone)]
    #[command(name = "thing")]
    struct Thing {
        /// The secret key
        #[arg(long, env = "SECRET_KEY", hide_env_values = true, value_parser = parse::non_empty)]
        secret_key: String,
        /// Port of the API
        #[arg(long, env = "PORT", default_value = "3000", value_parser = parse::port)]
        port: u16,
        /// How long to wait
        #[arg(long, env = "WAIT_SECONDS", default_value = "5", value_parser = parse::seconds)]
        wait: Duration,
        #[command(flatten)]
        shared: Shared,
    }

    impl Settings for Thing {
        fn check(self) -> Result<Self, ConfigError> {
            if self.port == 1 {
                return Err(ConfigError::new("PORT", "must not be 1"));
            }
            Ok(self)
        }
    }

    const BASE: [(&str, &str); 2] = [("SECRET_KEY", "hunter2"), ("SERVER_URL", "nats://u:pw@h:1")];

    #[test]
    fn reads_declared_variables_with_their_defaults() {
        let thing = Thing::from_pairs(&BASE).unwrap();
        assert_eq!((thing.port, thing.wait), (3000, Duration::from_secs(5)));
        assert_eq!(thing.shared.url, "nats://u:pw@h:1");
        let mut pairs = BASE.to_vec();
        pairs.push(("PORT", "8080"));
        assert_eq!(Thing::from_pairs(&pairs).unwrap().port, 8080);
    }

    #[test]
    fn a_bad_or_missing_setting_is_one_line_naming_the_variable() {
        let error = |extra: (&'static str, &'static str)| {
            let mut pairs = BASE.to_vec();
            pairs.retain(|(k, _)| *k != extra.0);
            pairs.push(extra);
            Thing::from_pairs(&pairs).unwrap_err().to_string()
        };
        assert_eq!(
            error(("PORT", "70000")),
            "PORT=`70000` is invalid: expected a port number from 0 to 65535"
        );
        assert_eq!(
            error(("WAIT_SECONDS", "soon")),
            "WAIT_SECONDS=`soon` is invalid: expected a whole number of seconds, at least 1"
        );
        assert_eq!(
            error(("SECRET_KEY", " ")),
            "SECRET_KEY=`<redacted>` is invalid: expected a value that is not empty"
        );
        assert_eq!(error(("PORT", "1")), "PORT must not be 1");
        let missing = Thing::from_pairs(&[("SERVER_URL", "x")])
            .unwrap_err()
            .to_string();
        assert_eq!(missing, "SECRET_KEY must be set: The secret key");
        let both = Thing::from_pairs(&[]).unwrap_err().to_string();
        assert!(
            both.starts_with("SECRET_KEY must be set, and so must SERVER_URL"),
            "{both}"
        );
        for message in [error(("PORT", "x")), missing, both] {
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn env_vars_lists_every_variable_with_its_default_and_help() {
        let vars = env_vars(&Thing::command());
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["SECRET_KEY", "PORT", "WAIT_SECONDS", "SERVER_URL"]);
        assert_eq!(
            vars[1],
            EnvVar {
                name: "PORT".into(),
                required: false,
                default: Some("3000".into()),
                about: "Port of the API".into(),
            }
        );
        assert!(vars[0].required && vars[3].required);
        let json: serde_json::Value = serde_json::from_str(&to_json(&vars)).unwrap();
        assert_eq!(json[1]["default"], "3000");
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:pw@a:1,redis://:pw@b:2"),
            "redis://<redacted>@a:1,redis://<redacted>@b:2"
        );
        assert_eq!(
            redact_url("mongodb://admin:hunter2@h:1/orders"),
            "mongodb://<redacted>@h:1/orders"
        );
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
    }
}
