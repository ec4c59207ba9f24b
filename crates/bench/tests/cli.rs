//! The benchmark commands' manners: `--help` needs no server, a bad argument is one line.

use std::path::Path;

use common::testing::cli;

#[test]
fn the_benchmark_commands_explain_themselves_and_name_a_bad_argument_in_one_line() {
    let orders = Path::new(env!("CARGO_BIN_EXE_orders-bench"));
    cli::assert_help(orders, &[], &["--concurrency", "MONGO_URI", "JWT_KEY"]);
    cli::assert_one_line_error(orders, &[], &[], "MONGO_URI must be set");
    cli::assert_one_line_error(
        orders,
        &["--seconds", "soon"],
        &[("MONGO_URI", "mongodb://h/x"), ("JWT_KEY", "k")],
        "--seconds=`soon` is invalid",
    );

    let expiration = Path::new(env!("CARGO_BIN_EXE_expiration-bench"));
    cli::assert_help(expiration, &[], &["burst", "steady"]);
    cli::assert_help(expiration, &["burst"], &["--jobs", "--scope", "REDIS_URL"]);
    cli::assert_one_line_error(
        expiration,
        &["burst", "--jobs", "0"],
        &[],
        "--jobs=`0` is invalid",
    );
    cli::assert_one_line_error(expiration, &["drain"], &[], "unrecognized subcommand");
    // Scope worker runs the expiration binary; a wrong path is a bad setting, said before any
    // server is needed.
    cli::assert_one_line_error(
        expiration,
        &[
            "burst",
            "--scope",
            "worker",
            "--worker-bin",
            "/nowhere/expiration",
        ],
        &[],
        "/nowhere/expiration is missing",
    );
}
