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

/// A tool the comparison needs: required under CI (which installs it), otherwise
/// its part is left out with a printed reason.
fn tool(name: &str) -> bool {
    let found = trackedge_loadtest::process::find_program(name).is_some();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is missing under CI: .ci/run installs it"
        );
        eprintln!("{name} is not installed: its part of the comparison is skipped");
    }
    found
}

#[test]
fn compare_measures_every_mode_against_the_real_servers() {
    let temp = tempfile::tempdir().expect("temp dir");
    let json = temp.path().join("compare.json");
    let (wrk, h2load, nginx) = (tool("wrk"), tool("h2load"), tool("nginx"));
    let mut modes = vec!["saturation", "tls_full", "tls_resume"];
    if h2load {
        modes.extend(["tls_keepalive", "h2c", "h2"]);
    }
    let mut command = Command::new(HARNESS);
    command
        .arg("compare")
        .arg("--server-bin")
        .arg(trackedge_bin())
        .args(["--modes", &modes.join(",")])
        .args(["--rounds", "1", "--max-seconds", "1", "--connections", "8"])
        .args(["--settle-seconds", "1"])
        .args([
            "--tls-connections",
            "4",
            "--h2-connections",
            "2",
            "--h2-streams",
            "4",
        ])
        .args(["--geoip-networks", "3000", "--quiet", "--no-pin"])
        .arg("--json")
        .arg(&json);
    if !wrk {
        command.arg("--no-wrk");
    }
    if !nginx {
        command.arg("--no-nginx");
    }
    let output = command.output().expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "harness failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written"))
            .expect("report is JSON");
    let measurements = report["measurements"].as_array().expect("measurements");
    let servers: &[&str] = if nginx {
        &["floor", "trackedge", "nginx"]
    } else {
        &["floor", "trackedge"]
    };
    for mode in &modes {
        for server in servers {
            let m = measurements
                .iter()
                .find(|m| m["phase"] == *mode && m["server"] == *server)
                .unwrap_or_else(|| panic!("no {server} {mode} in {stdout}"));
            assert!(m["completed"].as_u64().expect("completed") > 0, "{m}");
            assert!(m["cpu_us"].as_f64().expect("cpu") > 0.0, "{m}");
            assert!(m["memory_peak"]["rss"].as_f64().expect("rss") > 1.0, "{m}");
            assert_eq!(m["errors"], 0, "{m}");
            let resumed = m["resumed_share"].as_f64();
            match *mode {
                "tls_full" => assert_eq!(resumed, Some(0.0), "{m}"),
                // The first connection of each client has no ticket yet.
                "tls_resume" => assert!(resumed.expect("resumed") > 0.5, "{m}"),
                _ => assert!(resumed.is_none()),
            }
        }
    }
    let phases = report["summary"]["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), modes.len());
    let ratio = &phases[0]["ratios"][0];
    assert_eq!(ratio["name"], "trackedge/floor cpu per unit");
    assert!(ratio["median"].as_f64().expect("ratio") > 0.0);
    assert!(stdout.contains("== saturation"), "{stdout}");
}
