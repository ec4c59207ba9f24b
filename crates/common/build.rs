//! Records the git commit the binaries are built from, for `--version` (see `build_info`).
//!
//! `GIT_COMMIT` wins when set: the image builds pass it (`scripts/images`, skaffold), because their
//! build context has no `.git`, and it then carries `-dirty` for an unclean tree as the image's tag
//! does. Otherwise `git rev-parse --short HEAD` is asked, and this script runs again whenever HEAD
//! moves. Without either, the commit is `unknown`. Local builds do not say `-dirty`: telling it
//! would mean re-running on every edit of any file.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let commit = std::env::var("GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(head_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={}", commit.trim());
}

/// The abbreviated commit of HEAD, asking cargo to run this again when HEAD or its branch moves.
fn head_commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let git_dir = git(&["rev-parse", "--absolute-git-dir"])?;
    let git_dir = Path::new(&git_dir);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
    }
    // A branch packed by `git gc` lives here instead.
    println!(
        "cargo:rerun-if-changed={}",
        git_dir.join("packed-refs").display()
    );
    git(&["rev-parse", "--short", "HEAD"]).filter(|commit| !commit.is_empty())
}
