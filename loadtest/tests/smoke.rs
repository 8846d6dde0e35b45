//! One short accounting run of the real harness against the real trackedge binary:
//! about a second of open-loop load on 127.0.0.1, then the report's arithmetic is
//! checked. `cargo test` at the workspace root builds `trackedge` into the same
//! target directory as this package's binary, which is where it is looked for.

use std::path::PathBuf;
use std::process::Command;

const HARNESS: &str = env!("CARGO_BIN_EXE_trackedge-loadtest");

fn trackedge_bin() -> PathBuf {
    let dir = PathBuf::from(HARNESS)
        .parent()
        .expect("the harness binary lives in a directory")
        .to_owned();
    let bin = dir.join("trackedge");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p trackedge` (plain `cargo test` at the workspace root does)",
        bin.display()
    );
    bin
}

#[test]
fn one_second_of_load_is_fully_accounted_for() {
    let temp = tempfile::tempdir().expect("temp dir");
    let json = temp.path().join("report.json");
    let output = Command::new(HARNESS)
        .arg("account")
        .arg("--server-bin")
        .arg(trackedge_bin())
        .args(["--rate", "400", "--duration", "1", "--connections", "8"])
        .args(["--bad-share", "0.05", "--geoip-networks", "3000", "--quiet"])
        .args(["--drain-timeout", "20"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "harness failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written"))
            .expect("report is JSON");
    let accounting = &report["accounting"];
    let sent = accounting["sent"].as_u64().expect("sent");
    // 400/s for 1 s; a starved client on a busy CI machine may send fewer.
    assert!((50..=401).contains(&sent), "sent {sent}");
    assert_eq!(accounting["ok"], true, "{stdout}");
    assert_eq!(accounting["lost"]["unexplained"], 0);
    assert_eq!(accounting["duplicates"], 0);
    let expected = accounting["expected_events"].as_u64().expect("expected");
    assert_eq!(accounting["delivered"].as_u64(), Some(expected));
    assert_eq!(accounting["recorded_by_edge"].as_u64(), Some(expected));
    let bad = accounting["lost"]["bad_token"].as_u64().expect("bad");
    assert!(bad > 0, "some bad tokens were sent and none recorded");
    assert_eq!(
        expected + bad,
        accounting["answered"].as_u64().expect("answered")
    );
    assert!(report["load"]["latency"]["p50_us"].as_f64().expect("p50") > 0.0);
}
