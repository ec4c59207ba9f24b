//! What a binary was built from: its package version and the git commit, for `--version` and
//! the images' labels (`org.opencontainers.image.version`, `.revision`).

/// The git commit the binary was built from: `GIT_COMMIT` at build time (the images pass their
/// tag, `<short sha>` or `<short sha>-dirty`), else the abbreviated HEAD of the checkout, else
/// `unknown` (see `build.rs`).
pub const GIT_COMMIT: &str = env!("BUILD_GIT_COMMIT");

/// `<version> (commit <commit>)`: what `--version` prints after the binary's name.
pub fn long_version(package_version: &str) -> String {
    format!("{package_version} (commit {GIT_COMMIT})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_package_version_and_the_commit() {
        assert_eq!(
            long_version("1.2.3"),
            format!("1.2.3 (commit {GIT_COMMIT})")
        );
        assert!(!GIT_COMMIT.is_empty());
    }
}
