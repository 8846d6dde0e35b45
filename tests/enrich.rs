//! Enrichment through the real binary: client address from a trusted proxy, GeoIP
//! and ASN from fixture databases (with reloads), user agent, class, first flags.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{claims, eventually, mmdb, request_with, send, TestServer};
use http::Version;
use trackedge::Kind;

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
const GMAIL: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";

fn geo_config(dir: &Path, extra: &str) -> String {
    let city = mmdb::write_city(dir, "a");
    let asn = mmdb::write_asn(dir);
    format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [geoip]\ncity_db = {:?}\nasn_db = {:?}\nreload_interval_ms = 100\n{extra}",
        city.display().to_string(),
        asn.display().to_string(),
    )
}

async fn hit(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> u16 {
    send(
        server.public,
        Version::HTTP_11,
        request_with("GET", path, headers),
    )
    .await
    .status()
    .as_u16()
}

fn now_secs() -> u64 {
    trackedge::event::now_ms() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_through_a_trusted_proxy_lands_with_geo_client_and_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &geo_config(dir.path(), ""));
    let open = server.path_for(&claims(Kind::Open, "m-1"));
    let forwarded = [
        ("x-forwarded-for", "6.6.6.6, 81.2.69.160"),
        ("user-agent", IPHONE),
    ];
    assert_eq!(hit(&server, &open, &forwarded).await, 200);
    assert_eq!(hit(&server, &open, &forwarded).await, 200);
    let gmail = [("x-forwarded-for", "2001:db8:1::77"), ("user-agent", GMAIL)];
    assert_eq!(hit(&server, &open, &gmail).await, 200);
    // A click seconds after the send from a data-centre network is a scanner.
    let mut click = claims(Kind::Click, "m-1");
    click.sent_at = Some(now_secs());
    let click = server.path_for(&click);
    let scanner = [("x-forwarded-for", "203.0.113.50"), ("user-agent", IPHONE)];
    assert_eq!(hit(&server, &click, &scanner).await, 302);
    assert!(server.terminate().success());

    let events = server.events();
    assert_eq!(events.len(), 4);
    let first = &events[0];
    assert_eq!(first["ip"], "81.2.69.0", "the forwarded address, truncated");
    assert_eq!(
        first["geo"],
        serde_json::json!({"country": "CH", "region": "ZH", "city": "Zürich",
                           "lat": 47.4, "lon": 8.5, "tz": "Europe/Zurich"})
    );
    assert_eq!(
        first["asn"],
        serde_json::json!({"number": 64500, "org": "Example Transit AG"})
    );
    assert_eq!(first["ua"], IPHONE);
    assert_eq!(first["client"]["os"], "iPhone");
    assert_eq!(first["client"]["os_version"], "17.5");
    assert_eq!(first["client"]["category"], "smartphone");
    assert_eq!(first["class"], "human");
    assert_eq!(first["class_reason"], "no_signal");
    assert_eq!(first["first"], true);
    assert_eq!(events[1]["first"], false, "the same message opened again");

    let proxy = &events[2];
    assert_eq!(proxy["ip"], "2001:db8:1::");
    assert_eq!(proxy["geo"]["city"], "São Paulo");
    assert_eq!(proxy["asn"], serde_json::json!({"number": 64501}));
    assert_eq!(proxy["class"], "proxy_open:gmail");
    assert_eq!(proxy["class_reason"], "google_image_proxy");
    assert_eq!(
        proxy["client"]["browser"], "Firefox",
        "woothee's view is kept"
    );

    let scan = &events[3];
    assert_eq!(scan["kind"], "click");
    assert_eq!(scan["class"], "link_scanner:datacenter");
    assert_eq!(scan["class_reason"], "fast_click_from_datacenter");
    assert_eq!(scan["geo"]["city"], "Москва");
    assert_eq!(scan["first"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_untrusted_peers_are_ignored_and_malformed_ones_counted() {
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.1 is not trusted here: the header is a spoof attempt.
    let config = geo_config(dir.path(), "").replace("[\"127.0.0.1\"]", "[\"10.0.0.0/8\"]");
    let mut server = TestServer::start_in(dir.path(), &config);
    let open = server.path_for(&claims(Kind::Open, "m"));
    assert_eq!(
        hit(&server, &open, &[("x-forwarded-for", "81.2.69.160")]).await,
        200
    );
    assert_eq!(
        server
            .metric("trackedge_enrich_client_ip_total{source=\"peer\"}")
            .await,
        1.0
    );
    assert!(server.terminate().success());
    let events = server.events();
    assert_eq!(events[0]["ip"], "127.0.0.0");
    assert!(events[0].get("geo").is_none());

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &geo_config(dir.path(), ""));
    let open = server.path_for(&claims(Kind::Open, "m"));
    assert_eq!(
        hit(&server, &open, &[("x-forwarded-for", "not-an-address")]).await,
        200
    );
    assert_eq!(
        server
            .metric("trackedge_enrich_client_ip_malformed_total")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geoip_reloads_a_new_file_and_keeps_serving_through_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &geo_config(dir.path(), ""));
    let open = server.path_for(&claims(Kind::Open, "m"));
    let from = [("x-forwarded-for", "81.2.69.160")];
    assert_eq!(hit(&server, &open, &from).await, 200);

    // Replaced on disk: picked up by the change poll.
    mmdb::write_city(dir.path(), "b");
    let reloaded = eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_geoip_reloads_total{db=\"city\",result=\"ok\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(reloaded, "{}", server.stderr());
    assert_eq!(hit(&server, &open, &from).await, 200);

    // A corrupt file, announced by SIGHUP: counted, and the old reader stays.
    std::fs::write(
        dir.path().join("city.mmdb"),
        b"\xab\xcd\xefMaxMind.com garbage",
    )
    .unwrap();
    server.signal("HUP");
    let refused = eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_geoip_reloads_total{db=\"city\",result=\"invalid\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(refused, "{}", server.stderr());
    assert_eq!(hit(&server, &open, &from).await, 200);
    assert!(server.terminate().success());

    let cities: Vec<_> = server
        .events()
        .iter()
        .map(|e| e["geo"]["city"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(cities, ["Zürich", "Genève", "Genève"]);
    assert!(server.stderr().contains("GeoIP reload failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_geo_is_empty_and_a_warning_is_logged() {
    let mut server = TestServer::start("");
    let open = server.path_for(&claims(Kind::Open, "m"));
    assert_eq!(hit(&server, &open, &[("user-agent", IPHONE)]).await, 200);
    assert!(server.terminate().success());
    let events = server.events();
    assert!(events[0].get("geo").is_none() && events[0].get("asn").is_none());
    assert_eq!(events[0]["class"], "human");
    assert_eq!(events[0]["client"]["category"], "smartphone");
    assert!(server.stderr().contains("no GeoIP database configured"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_links_of_one_message_clicked_together_are_a_scanner_burst() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nclass = \"link_scanner:acme-gw\"\nreason = \"acme_gateway\"\nua_contains = [\"AcmeScan\"]\n",
    )
    .unwrap();
    // Held back a minute, so the burst relabels its first clicks before they leave
    // (a graceful stop forwards everything regardless).
    let config = format!(
        "[dedup]\nburst_window_ms = 60000\n[classify]\nrules_file = {:?}\nhold_back_ms = 60000\n",
        rules.display().to_string()
    );
    let mut server = TestServer::start_in(dir.path(), &config);
    for link in [1, 2, 3, 3] {
        let mut click = claims(Kind::Click, "m-burst");
        click.link = link;
        let path = server.path_for(&click);
        assert_eq!(hit(&server, &path, &[("user-agent", IPHONE)]).await, 302);
    }
    let open = server.path_for(&claims(Kind::Open, "m-other"));
    assert_eq!(
        hit(&server, &open, &[("user-agent", "AcmeScan/1.0")]).await,
        200
    );
    assert!(server.terminate().success());
    let events = server.events();
    let summary: Vec<(String, bool)> = events
        .iter()
        .map(|e| {
            (
                e["class"].as_str().unwrap().to_owned(),
                e["first"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("link_scanner:burst".to_owned(), true),
            ("link_scanner:burst".to_owned(), true),
            ("link_scanner:burst".to_owned(), true),
            ("link_scanner:burst".to_owned(), false),
            ("link_scanner:acme-gw".to_owned(), true),
        ]
    );
    assert_eq!(events[4]["class_reason"], "acme_gateway");
}

#[test]
fn check_config_loads_the_rules_file_and_databases() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nclass = \"proxy_open\"\nasns = [1]\n").unwrap();
    let config = dir.path().join("trackedge.toml");
    let check = |text: String| {
        std::fs::write(&config, text).unwrap();
        std::process::Command::new(common::BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let bad_rules = check(format!(
        "[classify]\nrules_file = {:?}\n",
        rules.display().to_string()
    ));
    assert!(!bad_rules.status.success());
    let stderr = String::from_utf8_lossy(&bad_rules.stderr);
    assert!(
        stderr.contains("rules.toml") && stderr.contains("rule 1"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("broken.mmdb"), b"nothing").unwrap();
    let bad_db = check(format!(
        "[geoip]\ncity_db = {:?}\n",
        dir.path().join("broken.mmdb").display().to_string()
    ));
    assert!(!bad_db.status.success());
    assert!(String::from_utf8_lossy(&bad_db.stderr).contains("broken.mmdb"));

    let good = check(geo_config(dir.path(), ""));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("geoip on"));
}
