//! The demo command's manners: `--help` needs no server, a bad argument is one line.

use common::testing::cli;

#[test]
fn the_demo_explains_itself_and_names_a_bad_argument_in_one_line() {
    let demo = e2e::process::binary("demo");
    cli::assert_help(&demo, &[], &["--window", "--keep-running"]);
    cli::assert_one_line_error(&demo, &["--window", "0"], &[], "--window=`0` is invalid");
}
