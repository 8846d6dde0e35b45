//! External tools some tests run (promtool, prometheus, systemd-analyze): found on
//! PATH; missing outside CI the test is skipped with a printed reason, missing under
//! CI (`CI=true`, where `.ci/run` installs them) the test fails.
#![allow(dead_code)]

use std::path::PathBuf;

/// `name` on PATH, or in the sbin directories a non-root PATH may lack.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tool, or `None` after saying why the calling test does nothing (outside CI).
pub fn require(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = find(name) {
        return Some(path);
    }
    let why = format!("{name} not found (Debian package `{package}`; .ci/run installs it)");
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}
