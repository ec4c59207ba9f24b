//! The environment variables a binary reads, as data: `<binary> --env-vars` prints them as JSON
//! so operators (and the deployment checks) can see exactly what a process understands.

use serde::Serialize;

/// One environment variable a binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: &'static str,
    /// The process refuses to start without it.
    pub required: bool,
    /// The value used when it is unset, if any.
    pub default: Option<&'static str>,
    pub about: &'static str,
}

/// Read by [`crate::bus::NatsConfig`].
pub const NATS: [EnvVar; 5] = [
    EnvVar {
        name: "NATS_URL",
        required: true,
        default: None,
        about: "NATS server(s); http:// is accepted and treated as nats://",
    },
    EnvVar {
        name: "NATS_CLIENT_ID",
        required: false,
        default: None,
        about: "connection name (the pod name); defaults to the service name",
    },
    EnvVar {
        name: "NATS_CLUSTER_ID",
        required: false,
        default: Some("ticketing"),
        about: "JetStream stream holding the six subjects",
    },
    EnvVar {
        name: "NATS_SUBJECT_PREFIX",
        required: false,
        default: Some(""),
        about: "put before every subject; for tests sharing one server",
    },
    EnvVar {
        name: "LISTENER_MAX_DELIVERIES",
        required: false,
        default: Some("20"),
        about: "deliveries after which an event that still cannot be applied is given up (logged, counted as events_handled{outcome=\"gave_up\"}); dependency outages do not count",
    },
];

/// Read by [`crate::telemetry::init`].
pub const TELEMETRY: [EnvVar; 2] = [
    EnvVar {
        name: "LOG_FORMAT",
        required: false,
        default: Some("pretty"),
        about: "`json` for one JSON object per line",
    },
    EnvVar {
        name: "RUST_LOG",
        required: false,
        default: Some("info"),
        about: "log filter, e.g. `info,orders=debug`",
    },
];

/// The JSON array `--env-vars` prints.
pub fn to_json(vars: &[EnvVar]) -> String {
    serde_json::to_string_pretty(vars).expect("plain structs serialise")
}

/// If the process was started as `<binary> --env-vars`, prints `vars` and returns true.
pub fn print_if_asked(vars: &[EnvVar]) -> bool {
    let asked = std::env::args()
        .nth(1)
        .is_some_and(|arg| arg == "--env-vars");
    if asked {
        println!("{}", to_json(vars));
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_config_reads_exactly_the_variables_listed() {
        let read = std::sync::Mutex::new(Vec::new());
        let _ = crate::bus::NatsConfig::from_lookup(
            |name| {
                read.lock().unwrap().push(name.to_owned());
                Some("nats://x:1".to_owned())
            },
            "svc",
        );
        let mut read = read.into_inner().unwrap();
        read.sort();
        read.dedup();
        let mut listed: Vec<_> = NATS.iter().map(|var| var.name.to_owned()).collect();
        listed.sort();
        assert_eq!(read, listed);
    }

    #[test]
    fn prints_a_json_array_of_name_required_default() {
        let json: serde_json::Value = serde_json::from_str(&to_json(&NATS)).unwrap();
        assert_eq!(json[0]["name"], "NATS_URL");
        assert_eq!(json[0]["required"], true);
        assert_eq!(json[2]["default"], "ticketing");
    }
}
