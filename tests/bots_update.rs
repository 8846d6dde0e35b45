//! `config/bots/update.sh` against a fake npm registry on 127.0.0.1: it installs the
//! version the registry names (list, licence, VERSION with tarball, integrity and date),
//! and a tarball whose sha512 does not match the registry's integrity, or whose list is
//! not a list of patterns, leaves the vendored files as they were.
//!
//! The script needs sh, curl, tar and python3; under CI (`CI=true`) a missing tool fails
//! the test, elsewhere it is skipped with a printed reason.

mod fixture_http;

use fixture_http::{route, FixtureServer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FILES: [&str; 3] = ["crawler-user-agents.json", "LICENSE", "VERSION"];

fn tools_present() -> bool {
    let missing: Vec<_> = ["sh", "curl", "tar"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("tests/bots_update.rs needs {missing:?}; .ci/run installs them");
        }
        eprintln!("skipping tests/bots_update.rs: {missing:?} not found");
        return false;
    }
    fixture_http::python3("tests/bots_update.rs")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of config/bots (script and vendored files) in a temp dir.
fn bots_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in FILES.iter().chain(["update.sh"].iter()) {
        std::fs::copy(repo().join("config/bots").join(name), dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    dir
}

/// An npm-style tarball (`package/...`) holding the given list and licence.
fn tarball(list: &str, licence: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let package = dir.path().join("package");
    std::fs::create_dir(&package).expect("mkdir package");
    std::fs::write(package.join("crawler-user-agents.json"), list).expect("write list");
    std::fs::write(package.join("LICENSE"), licence).expect("write licence");
    std::fs::write(
        package.join("package.json"),
        r#"{"name":"crawler-user-agents"}"#,
    )
    .expect("write package.json");
    let out = dir.path().join("pkg.tgz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path())
        .arg("package")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    std::fs::read(out).expect("read tarball")
}

/// npm's integrity string (sha512, base64) of some bytes, computed by python3's hashlib.
fn integrity(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blob");
    std::fs::write(&path, bytes).expect("write blob");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import base64, hashlib, sys; print('sha512-' + base64.b64encode(hashlib.sha512(open(sys.argv[1], 'rb').read()).digest()).decode())")
        .arg(&path)
        .output()
        .expect("run python3");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A registry: one server holds the tarball, a second serves the metadata naming its URL
/// (the first server's port is only known once it is bound). Both stop on drop.
fn registry(tgz: Vec<u8>, claimed_integrity: &str) -> (FixtureServer, FixtureServer) {
    let files = FixtureServer::start(HashMap::from([route(
        "/pkg/crawler-user-agents-9.9.9.tgz",
        200,
        tgz,
    )]));
    let meta = format!(
        r#"{{"name":"crawler-user-agents","version":"9.9.9","dist":{{"tarball":"{}/pkg/crawler-user-agents-9.9.9.tgz","integrity":"{claimed_integrity}"}}}}"#,
        files.base_url()
    );
    let meta = FixtureServer::start(HashMap::from([route(
        "/crawler-user-agents/latest",
        200,
        meta,
    )]));
    (meta, files)
}

fn run(dir: &Path, registry: &FixtureServer) -> Output {
    Command::new("sh")
        .arg(dir.join("update.sh"))
        .env("NPM_REGISTRY", registry.base_url())
        .output()
        .expect("run update.sh")
}

fn snapshot(dir: &Path) -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read vendored file"))
        .collect()
}

#[test]
fn update_installs_the_version_the_registry_names() {
    if !tools_present() {
        return;
    }
    let list = r#"[{"pattern":"TestBot\\/","instances":["TestBot/1.0"]}]"#;
    let tgz = tarball(list, "The MIT License (MIT)\n\nCopyright test\n");
    let sum = integrity(&tgz);
    let (server, tarballs) = registry(tgz, &sum);
    let dir = bots_copy();
    let out = run(dir.path(), &server);
    assert!(
        out.status.success(),
        "update.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.seen(),
        vec!["/crawler-user-agents/latest".to_string()]
    );
    assert_eq!(
        tarballs.seen(),
        vec!["/pkg/crawler-user-agents-9.9.9.tgz".to_string()]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("crawler-user-agents.json")).expect("list"),
        list
    );
    assert!(std::fs::read_to_string(dir.path().join("LICENSE"))
        .expect("licence")
        .contains("Copyright test"));
    let version = std::fs::read_to_string(dir.path().join("VERSION")).expect("VERSION");
    assert!(version.contains("version = 9.9.9"), "{version}");
    assert!(version.contains(&format!("integrity = {sum}")), "{version}");
    assert!(version.contains("tarball = http://127.0.0.1:"), "{version}");
    assert!(
        version.lines().any(|l| l.starts_with("retrieved = 20")),
        "{version}"
    );
}

#[test]
fn a_tarball_that_fails_its_integrity_changes_nothing() {
    if !tools_present() {
        return;
    }
    let tgz = tarball(r#"[{"pattern":"TestBot"}]"#, "MIT\n");
    let wrong = integrity(b"some other bytes");
    let (server, _tarballs) = registry(tgz, &wrong);
    let dir = bots_copy();
    let before = snapshot(dir.path());
    let out = run(dir.path(), &server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mismatched tarball must fail");
    assert!(stderr.contains("integrity mismatch"), "{stderr}");
    assert!(snapshot(dir.path()) == before, "vendored files changed");
}

#[test]
fn a_list_that_is_not_a_list_of_patterns_changes_nothing() {
    if !tools_present() {
        return;
    }
    let tgz = tarball(r#"{"patterns":"oops"}"#, "MIT\n");
    let sum = integrity(&tgz);
    let (server, _tarballs) = registry(tgz, &sum);
    let dir = bots_copy();
    let before = snapshot(dir.path());
    let out = run(dir.path(), &server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a malformed list must fail");
    assert!(stderr.contains("not a non-empty list"), "{stderr}");
    assert!(snapshot(dir.path()) == before, "vendored files changed");
}
