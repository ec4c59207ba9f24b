//! The `orders` binary: configuration errors and a clean stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::testing::{TestStream, mongo_uri};

use super::helpers::{full_env, orders_binary};

#[test]
fn help_needs_no_server_and_a_bad_setting_is_one_line_and_exit_code_2() {
    use common::testing::cli;
    let orders = std::path::Path::new(env!("CARGO_BIN_EXE_orders"));
    cli::assert_help(
        orders,
        &[],
        &[
            "MONGO_URI",
            "JWT_KEY",
            "NATS_URL",
            "EXPIRATION_WINDOW_SECONDS",
            "HTTP_MAX_CONNECTIONS",
            "HTTP_MAX_HEADER_BYTES",
        ],
    );
    let unreachable = [
        ("JWT_KEY", "k"),
        ("MONGO_URI", "mongodb://admin:hunter2@127.0.0.1:1/x"),
        ("NATS_URL", "nats://127.0.0.1:1"),
    ];
    cli::assert_one_line_error(
        orders,
        &[],
        &cli::with(&unreachable, ("EXPIRATION_WINDOW_SECONDS", "soon")),
        "EXPIRATION_WINDOW_SECONDS=`soon` is invalid: expected a whole number of seconds",
    );
    cli::assert_one_line_error(
        orders,
        &[],
        &cli::with(&unreachable, ("PORT", "70000")),
        "PORT=`70000` is invalid",
    );
    cli::assert_one_line_error(
        orders,
        &[],
        &cli::with(&unreachable, ("HTTP_MAX_HEADER_BYTES", "4096")),
        "HTTP_MAX_HEADER_BYTES=`4096` is invalid: expected a whole number from 8192 to 1048576",
    );
    cli::assert_one_line_error(orders, &[], &[], "MONGO_URI must be set");
    // Valid settings, but no database there: it cannot start, says why, exits 1.
    let (code, stdout, stderr) = cli::run(orders, &[], &unreachable);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("does not answer"), "{stdout}{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    cli::assert_one_line_error(orders, &["--bogus"], &unreachable, "unexpected argument");
    cli::assert_version(orders, "orders", env!("CARGO_PKG_VERSION"));
    let (code, stdout, _) = cli::run(orders, &["--env-vars"], &[]);
    assert_eq!(code, Some(0));
    let vars: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let port = vars
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == "PORT")
        .unwrap();
    assert_eq!(
        (&port["default"], &port["required"]),
        (&"3000".into(), &false.into())
    );
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_jwt_key_or_mongo_uri_and_names_it() {
    let stream = TestStream::new().await;
    for missing in ["JWT_KEY", "MONGO_URI"] {
        let env: Vec<_> = full_env(&stream)
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let output = orders_binary(&env).output().unwrap();
        assert!(!output.status.success(), "started without {missing}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("{missing} must be set")),
            "{stderr}"
        );
    }
    stream.delete().await;
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm_without_logging_the_key() {
    let stream = TestStream::new().await;
    let env = full_env(&stream);
    let mut child = orders_binary(&env)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it says it listens.
    let started = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("orders service listening"))
    {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("never listened: {lines:?}"));
        lines.push(line);
    }
    let pid = child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "did not stop within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    lines.extend(lines_rx.iter());
    let all = lines.join("\n");
    assert!(all.contains("orders service listening"), "{all}");
    assert!(all.contains("orders service stopped"), "{all}");
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON logs: {all}"
    );
    assert!(!all.contains("a-secret-that-must-not-be-logged"));
    assert!(started.elapsed() < Duration::from_secs(20));
    let _ = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .unwrap()
        .database(&stream.spec.name)
        .drop()
        .await;
    stream.delete().await;
}

#[tokio::test]
async fn the_service_starts_again_on_a_database_it_created_and_beside_a_second_replica() {
    use super::helpers::{init_logs, start, test_config};
    init_logs();
    let stream = TestStream::new().await;
    let config = test_config(&stream.spec, &common::testing::nats_url());
    let (_, db, first_stop, first) = start(config.clone()).await;
    // A second replica on the same database while the first runs, then a restart of the first.
    let (_, _, second_stop, second) = start(config.clone()).await;
    first_stop.cancel();
    first.await.unwrap().unwrap();
    let (_, _, again_stop, again) = start(config).await;
    let mut names = db
        .collection::<mongodb::bson::Document>("orders")
        .list_index_names()
        .await
        .unwrap();
    names.sort();
    assert_eq!(
        names,
        ["_id_", "outbox.id_1", "reservation_1", "userId_1__id_1"]
    );
    second_stop.cancel();
    again_stop.cancel();
    second.await.unwrap().unwrap();
    again.await.unwrap().unwrap();
    let _ = db.drop().await;
    stream.delete().await;
}
