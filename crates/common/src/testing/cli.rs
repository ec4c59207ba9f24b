//! The command-line manners every binary must have: `--help` works without any server or
//! setting, and a bad setting is one clear line and exit code 2, never a panic or a backtrace.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `program args` with only `env` (and `PATH`), stdin closed: its exit code, stdout and
/// stderr.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts that `program <help_args> --help` prints a usage mentioning each of `mentions` and
/// exits 0 with an empty environment (so with no server to reach).
pub fn assert_help(program: &Path, help_args: &[&str], mentions: &[&str]) {
    let mut args = help_args.to_vec();
    args.push("--help");
    let (code, stdout, stderr) = run(program, &args, &[]);
    assert_eq!(
        code,
        Some(0),
        "{} {args:?}: {stdout}{stderr}",
        program.display()
    );
    assert!(stdout.contains("Usage:"), "{stdout}");
    for mention in mentions {
        assert!(
            stdout.contains(mention),
            "--help does not mention {mention}:\n{stdout}"
        );
    }
}

/// Asserts that `program args` with `env` exits 2 with exactly one line on stderr, containing
/// `expected`, and no panic or backtrace.
pub fn assert_one_line_error(program: &Path, args: &[&str], env: &[(&str, &str)], expected: &str) {
    let (code, stdout, stderr) = run(program, args, env);
    assert_eq!(
        code,
        Some(2),
        "{} {args:?}: {stdout}{stderr}",
        program.display()
    );
    assert_eq!(stderr.lines().count(), 1, "one line, not:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// `base` with `extra` added: a valid environment with one setting changed.
pub fn with<'a>(base: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<_> = base
        .iter()
        .copied()
        .filter(|(k, _)| *k != extra.0)
        .collect();
    env.push(extra);
    env
}

/// Asserts that `program --version` exits 0 without any setting and prints
/// `<name> <package_version> (commit <commit>)`, the commit being the checkout's HEAD when the
/// tests run in one (as the binary was built from it), so a build that lost track of its commit
/// fails here.
pub fn assert_version(program: &Path, name: &str, package_version: &str) {
    let (code, stdout, stderr) = run(program, &["--version"], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or(head)
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        stdout.trim(),
        format!("{name} {package_version} (commit {commit})")
    );
}
