//! Classification through the real binary: the operator's rules file and network
//! directory reloaded on change and on SIGHUP (a broken file keeps the rules in force,
//! counted and logged), the verdict's fields and metrics, `geoip build-asn`'s answers
//! to bad input, and ASN rules: a warning at start without `geoip.asn_db`, a match with
//! a database that `geoip build-asn` wrote.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{claims, eventually, request_with, send, TestServer, BIN};
use http::Version;
use trackedge::Kind;

const SCANNER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn rules(name: &str, network: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nclass = \"link_scanner\"\nwho = \"acme\"\ncertainty = \"certain\"\n\
         kinds = [\"click\"]\nnetworks = [\"{network}\"]\n"
    )
}

fn set(name: &str, cidr: &str) -> String {
    format!(
        "name = \"{name}\"\nvendor = \"Acme\"\npurpose = \"link scanning\"\n\
         cidrs = [{{ cidr = \"{cidr}\" }}]\n"
    )
}

/// Clicks once from `ip` (through the trusted loopback proxy) with a browser agent.
async fn click(server: &TestServer, message: &str, ip: &str) {
    let path = server.path_for(&claims(Kind::Click, message));
    let response = send(
        server.public,
        Version::HTTP_11,
        request_with(
            "GET",
            &path,
            &[("x-forwarded-for", ip), ("user-agent", SCANNER_UA)],
        ),
    )
    .await;
    assert_eq!(response.status(), 302);
}

async fn reloads(server: &TestServer, result: &str) -> f64 {
    server
        .metric(&format!(
            "trackedge_classify_reloads_total{{result=\"{result}\"}}"
        ))
        .await
}

async fn wait_for(server: &TestServer, result: &str, at_least: f64) {
    let reached = eventually(Duration::from_secs(10), || async {
        reloads(server, result).await >= at_least
    })
    .await;
    assert!(reached, "no {result} reload: {}", server.stderr());
}

/// The operator's files in `dir` (a `nets` directory holding set `acme-one`, and
/// `rules.toml` classing it) and a config that watches them every
/// `reload_interval_ms`; returns the directory, the rules file and the config.
fn operator_files(dir: &Path, reload_interval_ms: u64) -> (PathBuf, PathBuf, String) {
    let nets = dir.join("nets");
    std::fs::create_dir(&nets).unwrap();
    std::fs::write(nets.join("acme-one.toml"), set("acme-one", "192.0.2.0/25")).unwrap();
    let rules_path = dir.join("rules.toml");
    std::fs::write(&rules_path, rules("acme-one", "acme-one")).unwrap();
    let config = format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [classify]\nrules_file = {:?}\nnetworks_dir = {:?}\nreload_interval_ms = {reload_interval_ms}\n",
        rules_path.display().to_string(),
        nets.display().to_string()
    );
    (nets, rules_path, config)
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed into place, as an operator's deploy would.
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rules_and_network_sets_reload_on_change_and_a_broken_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let (nets, rules_path, config) = operator_files(dir.path(), 100);
    let mut server = TestServer::start_in(dir.path(), &config);
    assert_eq!(
        server
            .metric("trackedge_classify_rules{source=\"operator\"}")
            .await,
        1.0
    );
    click(&server, "m1", "192.0.2.9").await;

    // A changed rules file and a new set in the directory, seen by the poll. The
    // rules come first: alone they name a set that does not exist yet and fail to
    // compile, so the first good reload is the one with both.
    write(&rules_path, &rules("acme-two", "acme-two"));
    std::fs::write(
        nets.join("acme-two.toml"),
        set("acme-two", "192.0.2.128/25"),
    )
    .unwrap();
    wait_for(&server, "ok", 1.0).await;
    click(&server, "m2", "192.0.2.9").await;
    click(&server, "m3", "192.0.2.200").await;

    // A broken file: counted and logged, the rules in force stay.
    let errors = reloads(&server, "error").await;
    write(&rules_path, "[[rule]]\nname = \"half-written\"\n");
    wait_for(&server, "error", errors + 1.0).await;
    click(&server, "m4", "192.0.2.200").await;

    let hits = |reason: &str| format!("trackedge_classify_rule_hits_total{{reason=\"{reason}\"}}");
    let hits_two = server.metric(&hits("acme-two")).await;
    let hits_browser = server.metric(&hits("browser")).await;
    let scanners = server
        .metric("trackedge_enrich_classified_total{class=\"link_scanner\",certainty=\"certain\"}")
        .await;
    assert!(server.terminate().success());

    let summary: Vec<(String, String, String, String)> = server
        .events()
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap().to_owned();
            (
                text("message"),
                text("class"),
                text("class_reason"),
                text("certainty"),
            )
        })
        .collect();
    eprintln!("{summary:?}");
    let row = |m: &str, c: &str, r: &str, s: &str| {
        (m.to_owned(), c.to_owned(), r.to_owned(), s.to_owned())
    };
    assert_eq!(
        summary,
        [
            row("m1", "link_scanner:acme", "acme-one", "certain"),
            // 192.0.2.9 is not in the new set: a person's browser again.
            row("m2", "human", "browser", "probable"),
            row("m3", "link_scanner:acme", "acme-two", "certain"),
            row("m4", "link_scanner:acme", "acme-two", "certain"),
        ]
    );
    assert_eq!((hits_two, hits_browser, scanners), (2.0, 1.0, 3.0));
    let stderr = server.stderr();
    assert!(
        stderr.contains("classification rules reload failed") && stderr.contains("rules.toml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    // The poll is an hour away: only the signal can bring the new file in.
    let (_nets, rules_path, config) = operator_files(dir.path(), 3_600_000);
    let mut server = TestServer::start_in(dir.path(), &config);
    write(
        &rules_path,
        &rules("acme-hup", "acme-one").replace("\"certain\"", "\"probable\""),
    );
    click(&server, "m1", "192.0.2.9").await;
    server.signal("HUP");
    wait_for(&server, "ok", 1.0).await;
    click(&server, "m2", "192.0.2.9").await;
    // A broken file announced by SIGHUP keeps the rules in force.
    write(&rules_path, "not toml [");
    server.signal("HUP");
    wait_for(&server, "error", 1.0).await;
    click(&server, "m3", "192.0.2.9").await;
    assert!(server.terminate().success());
    let reasons: Vec<String> = server
        .events()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["class_reason"].as_str().unwrap(),
                e["certainty"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        reasons,
        ["acme-one certain", "acme-hup probable", "acme-hup probable"]
    );
}

#[test]
fn geoip_build_asn_names_the_bad_row_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("asn-ipv4.csv");
    let out = dir.path().join("asn.mmdb");
    std::fs::write(
        &csv,
        "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n1.0.4.0,1.0.7.x,38803,Gtelecom\n",
    )
    .unwrap();
    let output = std::process::Command::new(BIN)
        .args(["geoip", "build-asn", "--csv"])
        .arg(&csv)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("asn-ipv4.csv:2") && stderr.contains("end_ip \"1.0.7.x\""),
        "{stderr}"
    );
    assert!(!out.exists());

    std::fs::write(&csv, "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n").unwrap();
    let output = std::process::Command::new(BIN)
        .args(["geoip", "build-asn", "--csv"])
        .arg(&csv)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 rows, 1 networks"));
    // The result is what geoip.asn_db accepts: check-config loads it.
    let config = dir.path().join("trackedge.toml");
    std::fs::write(
        &config,
        format!("[geoip]\nasn_db = {:?}\n", out.display().to_string()),
    )
    .unwrap();
    let check = std::process::Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("asn loaded"));
}

/// Runs `trackedge geoip build-asn` on one CSV.
fn build_asn(csv: &Path, out: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["geoip", "build-asn", "--csv"])
        .arg(csv)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asn_rules_warn_at_start_without_an_asn_database_and_match_with_one_from_build_asn() {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(
        &rules_path,
        "[[rule]]\nname = \"acme-asn\"\nclass = \"link_scanner\"\nwho = \"acme\"\n\
         certainty = \"probable\"\nkinds = [\"click\"]\nasns = [64511]\n",
    )
    .unwrap();
    let csv = dir.path().join("asn-ipv4.csv");
    std::fs::write(
        &csv,
        "192.0.2.0,192.0.2.255,64511,\"Acme Scanning, Inc.\"\n",
    )
    .unwrap();
    let db = dir.path().join("asn.mmdb");
    let built = build_asn(&csv, &db);
    assert!(built.status.success(), "{built:?}");
    // No exempt ASNs: the rule alone must bring the warning.
    let base = format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nexempt_asns = []\n\
         [classify]\nrules_file = {:?}\n",
        rules_path.display().to_string()
    );

    let mut without = TestServer::start(&base);
    click(&without, "m1", "192.0.2.9").await;
    assert!(without.terminate().success());
    let stderr = without.stderr();
    assert!(
        stderr.contains("geoip.asn_db is not set") && stderr.contains("rule acme-asn"),
        "{stderr}"
    );
    let events = without.events();
    assert_eq!(
        (&events[0]["class"], &events[0]["class_reason"]),
        (&"human".into(), &"browser".into())
    );

    let mut with = TestServer::start(&format!(
        "{base}[geoip]\nasn_db = {:?}\n",
        db.display().to_string()
    ));
    click(&with, "m2", "192.0.2.9").await;
    assert!(with.terminate().success());
    assert!(!with.stderr().contains("geoip.asn_db is not set"));
    let events = with.events();
    assert_eq!(events[0]["asn"]["number"], 64511);
    assert_eq!(events[0]["asn"]["org"], "Acme Scanning, Inc.");
    assert_eq!(
        (
            &events[0]["class"],
            &events[0]["class_reason"],
            &events[0]["certainty"]
        ),
        (
            &"link_scanner:acme".into(),
            &"acme-asn".into(),
            &"probable".into()
        )
    );
}
