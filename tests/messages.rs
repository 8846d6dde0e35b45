//! What an operator reads when something is wrong at start: one line, naming the
//! cause and the config key, never a Debug dump or a backtrace.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, BIN};

/// Runs `trackedge` with `args` to its exit (bounded), with backtraces asked for.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trackedge");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("trackedge {args:?} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn assert_one_clean_error(output: &Output, expect: &str) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expect), "{stderr}");
    assert_eq!(
        stderr.matches(expect).count(),
        1,
        "said more than once:\n{stderr}"
    );
    for dump in ["Os {", "kind:", "backtrace", "Caused by"] {
        assert!(!stderr.contains(dump), "{dump:?} in:\n{stderr}");
    }
    stderr
}

#[test]
fn a_second_serve_on_the_same_data_dir_says_another_trackedge_may_be_using_it() {
    let server = TestServer::start("[forward]\nsink = \"none\"\n");
    let dir = server.dir.to_str().expect("utf-8 temp dir");
    let config = server.dir.join("trackedge.toml");
    let output = run(&[
        "serve",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--public-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--data-dir",
        dir,
    ]);
    let stderr = assert_one_clean_error(&output, "another trackedge may be using it");
    assert!(stderr.contains(&server.dir.join("spool").display().to_string()));
}

#[test]
fn geoip_errors_name_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let city = common::mmdb::write_city(dir.path(), "a");
    let asn = common::mmdb::write_asn(dir.path());
    let missing = dir.path().join("missing.mmdb");
    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"not a maxmind database").unwrap();
    for (table, key) in [
        (format!("city_db = {asn:?}"), "geoip.city_db"),
        (
            format!("city_db = {city:?}\nasn_db = {city:?}"),
            "geoip.asn_db",
        ),
        (format!("asn_db = {missing:?}"), "geoip.asn_db"),
        (format!("city_db = {garbage:?}"), "geoip.city_db"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("[geoip]\n{table}\n")).unwrap();
        let output = run(&["check-config", "--config", path.to_str().unwrap()]);
        assert_one_clean_error(&output, &format!("config key `{key}`"));
    }
}
