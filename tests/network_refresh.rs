//! `scripts/refresh-networks.py` against a fixture server on 127.0.0.1: the vendors' list
//! formats are rewritten into the catalogue files (prefixes, sources, dates), and a list
//! that is missing, malformed or suspiciously small leaves the old file byte for byte,
//! with an error naming the source.
//!
//! The script is Python 3.11+ (standard library). Under CI (`CI=true`) a missing
//! `python3` fails the test; elsewhere it is skipped with a printed reason.

mod fixture_http;

use fixture_http::{route, FixtureServer};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DATE: &str = "2031-02-03";

fn python3() -> Option<&'static str> {
    fixture_http::python3("tests/network_refresh.rs").then_some("python3")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp dir holding copies of the shipped catalogue files named.
fn catalogue_copy(stems: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for stem in stems {
        let from = repo().join("config/networks").join(format!("{stem}.toml"));
        std::fs::copy(&from, dir.path().join(format!("{stem}.toml")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    dir
}

fn run(python: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(python)
        .arg(repo().join("scripts/refresh-networks.py"))
        .arg("--networks-dir")
        .arg(dir)
        .args(["--date", DATE, "--timeout", "10"])
        .args(args)
        .output()
        .expect("run scripts/refresh-networks.py")
}

fn load(dir: &Path, stem: &str) -> toml::Table {
    let text =
        std::fs::read_to_string(dir.join(format!("{stem}.toml"))).expect("read network file");
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{stem}.toml is not valid TOML after the refresh: {e}"))
}

fn cidrs_from(table: &toml::Table, source: &str) -> BTreeSet<String> {
    table["cidrs"]
        .as_array()
        .expect("cidrs array")
        .iter()
        .filter(|c| c["source"].as_str() == Some(source))
        .map(|c| c["cidr"].as_str().expect("cidr string").to_string())
        .collect()
}

fn source<'a>(table: &'a toml::Table, id: &str) -> &'a toml::Table {
    table["sources"]
        .as_array()
        .expect("sources array")
        .iter()
        .filter_map(|s| s.as_table())
        .find(|s| s["id"].as_str() == Some(id))
        .unwrap_or_else(|| panic!("source {id} missing"))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const APPLE_CSV: &str = "172.224.226.0/27,US,US-CA,Los Angeles,\n172.224.226.32/27,US,US-CA,Los Angeles,\n2a02:26f7:b3c0:4000::/64,US,US-CA,Los Angeles,\n";
const GOOGLEBOT_JSON: &str = r#"{"creationTime":"2031-02-01T00:00:00","prefixes":[{"ipv6Prefix":"2001:4860:4801:10::/64"},{"ipv4Prefix":"66.249.64.0/27"}]}"#;
const AWS_JSON: &str = r#"{"syncToken":"1","prefixes":[{"ip_prefix":"3.5.140.0/22","region":"ap-northeast-2","service":"AMAZON"},{"ip_prefix":"3.5.140.0/22","region":"ap-northeast-2","service":"S3"}],"ipv6_prefixes":[{"ipv6_prefix":"2600:1f18::/33","region":"us-east-1","service":"EC2"}]}"#;
const O365_JSON: &str = r#"[{"id":1,"serviceArea":"Exchange","urls":["outlook.office.com"],"ips":["40.96.0.0/13","2603:1006::/40"]},{"id":10,"serviceArea":"Exchange","urls":["*.mail.protection.outlook.com"],"ips":["40.92.0.0/15","104.47.0.0/17","2a01:111:f403::/48"]},{"id":46,"serviceArea":"Common","ips":["52.108.0.0/14"]}]"#;

#[test]
fn refresh_rewrites_each_vendor_format_into_its_catalogue_file() {
    let Some(python) = python3() else { return };
    let server = FixtureServer::start(HashMap::from([
        route("/mask-api.icloud.com/egress-ip-ranges.csv", 200, APPLE_CSV),
        route("/developers.google.com/static/crawling/ipranges/common-crawlers.json", 200, GOOGLEBOT_JSON),
        route("/ip-ranges.amazonaws.com/ip-ranges.json", 200, AWS_JSON),
        route(
            "/endpoints.office.com/endpoints/worldwide?clientrequestid=b10c5ed1-bad1-445f-b386-b919946339a7",
            200,
            O365_JSON,
        ),
    ]));
    let stems = [
        "apple-private-relay-egress",
        "google-crawlers",
        "aws",
        "microsoft-eop",
        "microsoft-exchange-online",
    ];
    let dir = catalogue_copy(&stems);
    let aws_before = load(dir.path(), "aws");
    let out = run(
        python,
        dir.path(),
        &[
            "--base-url",
            &server.base_url(),
            "--max-shrink",
            "1",
            "--only",
            "apple-egress-csv",
            "--only",
            "google-common-crawlers-json",
            "--only",
            "aws-ip-ranges",
            "--only",
            "ms-o365-endpoints",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "refresh failed: {stderr}");

    let apple = load(dir.path(), "apple-private-relay-egress");
    // Adjacent /27s merge; IPv6 kept.
    assert_eq!(
        cidrs_from(&apple, "apple-egress-csv"),
        set(&["172.224.226.0/26", "2a02:26f7:b3c0:4000::/64"])
    );
    let apple_src = source(&apple, "apple-egress-csv");
    assert_eq!(
        apple_src["url"].as_str(),
        Some("https://mask-api.icloud.com/egress-ip-ranges.csv")
    );
    assert_eq!(apple_src["retrieved"].as_str(), Some(DATE));
    // Sources that were not refreshed keep their dates.
    assert_ne!(
        source(&apple, "wttw-mpp-relay")["retrieved"].as_str(),
        Some(DATE)
    );
    assert_eq!(apple["name"].as_str(), Some("apple-private-relay-egress"));

    let google = load(dir.path(), "google-crawlers");
    assert_eq!(
        cidrs_from(&google, "google-common-crawlers-json"),
        set(&["66.249.64.0/27", "2001:4860:4801:10::/64"])
    );
    assert_eq!(
        source(&google, "google-common-crawlers-json")["retrieved"].as_str(),
        Some(DATE)
    );

    let aws = load(dir.path(), "aws");
    assert_eq!(
        cidrs_from(&aws, "aws-ip-ranges"),
        set(&["3.5.140.0/22", "2600:1f18::/33"])
    );
    // The ASNs, their source and the data-centre flag are left alone.
    assert_eq!(aws["asns"], aws_before["asns"]);
    assert_eq!(aws["datacenter"].as_bool(), Some(true));
    assert_eq!(
        source(&aws, "routeviews-rir-asn")["retrieved"],
        source(&aws_before, "routeviews-rir-asn")["retrieved"]
    );

    // One Microsoft list feeds two files, each with its own endpoint set.
    let eop = load(dir.path(), "microsoft-eop");
    assert_eq!(
        cidrs_from(&eop, "ms-o365-endpoints"),
        set(&["40.92.0.0/15", "104.47.0.0/17", "2a01:111:f403::/48"])
    );
    let exo = load(dir.path(), "microsoft-exchange-online");
    assert_eq!(
        cidrs_from(&exo, "ms-o365-endpoints"),
        set(&["40.96.0.0/13", "2603:1006::/40"])
    );
    assert!(source(&exo, "ms-o365-endpoints")["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://endpoints.office.com/")));

    let seen = server.seen();
    assert!(
        seen.contains(&"/mask-api.icloud.com/egress-ip-ranges.csv".to_string()),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 4, "one request per list: {seen:?}");
}

#[test]
fn a_missing_or_malformed_list_leaves_the_old_file_and_names_the_source() {
    let Some(python) = python3() else { return };
    let server = FixtureServer::start(HashMap::from([
        // An error page served with 200.
        route(
            "/ip-ranges.amazonaws.com/ip-ranges.json",
            200,
            "<html><body>Service Unavailable</body></html>",
        ),
        // Truncated JSON.
        route(
            "/developers.google.com/static/crawling/ipranges/common-crawlers.json",
            200,
            r#"{"prefixes":[{"ipv4Prefix":"66.249.64.0/27"}"#,
        ),
        // Not a prefix.
        route(
            "/core.telegram.org/resources/cidr.txt",
            200,
            "91.108.4.0/22\nnot-an-address\n",
        ),
        // Apple's list is not served at all: 404.
    ]));
    let stems = [
        "aws",
        "google-crawlers",
        "apple-private-relay-egress",
        "telegram",
    ];
    let dir = catalogue_copy(&stems);
    let before: Vec<Vec<u8>> = stems
        .iter()
        .map(|s| std::fs::read(dir.path().join(format!("{s}.toml"))).expect("read"))
        .collect();
    let out = run(
        python,
        dir.path(),
        &[
            "--base-url",
            &server.base_url(),
            "--only",
            "aws-ip-ranges",
            "--only",
            "google-common-crawlers-json",
            "--only",
            "apple-egress-csv",
            "--only",
            "telegram-cidr",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "failures must exit 1: {stderr}");
    for (needle, why) in [
        ("error: aws-ip-ranges", "HTML error page"),
        ("returned HTML", "HTML error page"),
        ("error: google-common-crawlers-json", "truncated JSON"),
        ("not valid JSON", "truncated JSON"),
        ("error: apple-egress-csv", "missing list"),
        ("HTTP 404", "missing list"),
        ("error: telegram-cidr", "bad prefix"),
        ("'not-an-address' is not an IP prefix", "bad prefix"),
        ("left unchanged", "every failure says the file stayed"),
    ] {
        assert!(
            stderr.contains(needle),
            "{why}: expected {needle:?} in stderr:\n{stderr}"
        );
    }
    for (stem, old) in stems.iter().zip(before) {
        let now = std::fs::read(dir.path().join(format!("{stem}.toml"))).expect("read");
        assert!(now == old, "{stem}.toml changed although its list failed");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".refresh-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn a_list_that_lost_most_of_its_prefixes_is_refused_unless_allowed() {
    let Some(python) = python3() else { return };
    let server = FixtureServer::start(HashMap::from([route(
        "/ip-ranges.amazonaws.com/ip-ranges.json",
        200,
        AWS_JSON,
    )]));
    let dir = catalogue_copy(&["aws"]);
    let old = std::fs::read(dir.path().join("aws.toml")).expect("read");
    let base = server.base_url();
    let out = run(
        python,
        dir.path(),
        &["--base-url", &base, "--only", "aws-ip-ranges"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing a shrink"), "{stderr}");
    assert!(std::fs::read(dir.path().join("aws.toml")).expect("read") == old);

    let out = run(
        python,
        dir.path(),
        &[
            "--base-url",
            &base,
            "--only",
            "aws-ip-ranges",
            "--max-shrink",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cidrs_from(&load(dir.path(), "aws"), "aws-ip-ranges"),
        set(&["3.5.140.0/22", "2600:1f18::/33"])
    );
}

#[test]
fn a_per_source_url_override_is_fetched_but_the_vendor_url_is_recorded() {
    let Some(python) = python3() else { return };
    let server = FixtureServer::start(HashMap::from([route(
        "/mirror/common-crawlers.json",
        200,
        GOOGLEBOT_JSON,
    )]));
    let dir = catalogue_copy(&["google-crawlers"]);
    let url = format!(
        "google-common-crawlers-json={}/mirror/common-crawlers.json",
        server.base_url()
    );
    let out = run(
        python,
        dir.path(),
        &[
            "--url",
            &url,
            "--only",
            "google-common-crawlers-json",
            "--max-shrink",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let google = load(dir.path(), "google-crawlers");
    let src = source(&google, "google-common-crawlers-json");
    assert_eq!(
        src["url"].as_str(),
        Some("https://developers.google.com/static/crawling/ipranges/common-crawlers.json")
    );
    assert_eq!(src["retrieved"].as_str(), Some(DATE));
    assert_eq!(
        server.seen(),
        vec!["/mirror/common-crawlers.json".to_string()]
    );
}
