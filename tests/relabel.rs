//! Bursts and trap links relabel a machine's earlier clicks: inside the hold-back
//! before they leave the edge, after it by a `reclassify` event. Through the real
//! server and a real receiver.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::upstream::{Mode, Upstream};
use common::{claims_of, eventually, request_with, send, TestServer, BIN};
use http::Version;
use trackedge::{Claims, Kind};

const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

fn config(upstream: &Upstream, extra: &str) -> String {
    format!(
        "[forward]\nsink = \"http\"\n[forward.http]\nurl = \"{}\"\ngzip = false\n\
         [client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nenabled = false\n{extra}",
        upstream.url()
    )
}

fn link(message: &str, link: u32) -> Claims {
    Claims {
        link,
        target: Some(format!("https://shop.example/p/{link}")),
        ..claims_of(Kind::Click, "r", message)
    }
}

/// Follows `claims` from `client` (an address the trusted loopback proxy reports).
async fn hit(server: &TestServer, claims: &Claims, client: &str) -> u16 {
    let path = server.path_for(claims);
    let request = request_with(
        "GET",
        &path,
        &[("user-agent", BROWSER), ("x-forwarded-for", client)],
    );
    send(server.public, Version::HTTP_11, request)
        .await
        .status()
        .as_u16()
}

fn arrived(upstream: &Upstream) -> Vec<serde_json::Value> {
    upstream.received.lock().unwrap().events.clone()
}

/// Each event's final class at the receiver: its own, then what reclassify
/// events say of it, in arrival order.
fn final_classes(events: &[serde_json::Value]) -> HashMap<String, String> {
    let mut classes = HashMap::new();
    for event in events {
        let class = event["class"].as_str().unwrap_or_default().to_owned();
        if event["kind"] == "reclassify" {
            for id in event["ids"].as_array().into_iter().flatten() {
                classes.insert(id.as_str().unwrap().to_owned(), class.clone());
            }
        } else {
            classes
                .entry(event["id"].as_str().unwrap().to_owned())
                .or_insert(class);
        }
    }
    classes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_the_hold_back_a_burst_leaves_labelled_as_a_burst() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 2000\n"));
    for n in 1..=3 {
        assert_eq!(hit(&server, &link("m-burst", n), "203.0.113.5").await, 302);
    }
    let all = eventually(Duration::from_secs(20), || async {
        arrived(&upstream).len() == 3
    })
    .await;
    assert!(all, "three clicks arrive: {:?}", arrived(&upstream));
    let events = arrived(&upstream);
    for event in &events {
        assert_eq!(event["class"], "link_scanner:burst", "{event}");
    }
    assert!(
        events.iter().all(|e| e["kind"] == "click"),
        "no reclassify event is needed: {events:?}"
    );
    assert_eq!(
        server
            .metric("trackedge_classify_relabelled_events_total{outcome=\"relabelled\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hold_back_a_reclassify_event_names_the_clicks_that_left() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&config(&upstream, "[dedup]\nburst_window_ms = 20000\n"));
    assert_eq!(hit(&server, &link("m-late", 1), "203.0.113.5").await, 302);
    let first = eventually(Duration::from_secs(15), || async {
        arrived(&upstream).len() == 1
    })
    .await;
    assert!(first);
    assert_eq!(
        arrived(&upstream)[0]["class"],
        "human",
        "one click is a person's"
    );
    for n in 2..=3 {
        assert_eq!(hit(&server, &link("m-late", n), "203.0.113.5").await, 302);
    }
    let told = eventually(Duration::from_secs(15), || async {
        arrived(&upstream).iter().any(|e| e["kind"] == "reclassify")
    })
    .await;
    assert!(told, "a reclassify event arrives: {:?}", arrived(&upstream));
    let events = arrived(&upstream);
    let reclassify = events.iter().find(|e| e["kind"] == "reclassify").unwrap();
    assert_eq!(reclassify["class"], "link_scanner:burst");
    assert_eq!(reclassify["class_reason"], "click_burst");
    assert_eq!(reclassify["message"], "m-late");
    let first_id = &events[0]["id"];
    assert!(
        reclassify["ids"].as_array().unwrap().contains(first_id),
        "{reclassify}"
    );
    let all = eventually(Duration::from_secs(15), || async {
        let events = arrived(&upstream);
        let classes = final_classes(&events);
        events.iter().filter(|e| e["kind"] == "click").count() == 3
            && classes.values().all(|c| c == "link_scanner:burst")
    })
    .await;
    assert!(
        all,
        "every click of the burst ends up a burst: {:?}",
        arrived(&upstream)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_hit_relabels_its_networks_clicks_and_spares_another_network() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 2000\n"));
    assert_eq!(hit(&server, &link("m-trap", 1), "203.0.113.5").await, 302);
    assert_eq!(hit(&server, &link("m-trap", 1), "198.51.100.7").await, 302);
    let trap = Claims {
        link: 9,
        ..claims_of(Kind::Trap, "r", "m-trap")
    };
    // A trap is served under the click path and answered like a link not found.
    let trap_path = server.path_for(&trap);
    assert!(trap_path.starts_with("/c/"), "{trap_path}");
    assert_eq!(hit(&server, &trap, "203.0.113.77").await, 404);
    assert_eq!(hit(&server, &link("m-trap", 2), "203.0.113.9").await, 302);
    let all = eventually(Duration::from_secs(20), || async {
        arrived(&upstream).len() == 4
    })
    .await;
    assert!(all, "four events arrive: {:?}", arrived(&upstream));
    let events = arrived(&upstream);
    let by = |kind: &str, ip: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["ip"] == ip)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} from {ip}: {events:?}"))
    };
    let trap = by("trap", "203.0.113.0");
    assert_eq!(trap["class"], "link_scanner:trap");
    assert_eq!(trap["class_reason"], "trap_link");
    let before: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "click" && e["ip"] == "203.0.113.0")
        .collect();
    assert_eq!(before.len(), 2);
    for click in before {
        assert_eq!(click["class"], "link_scanner:trap", "{click}");
        assert_eq!(click["class_reason"], "trap_network");
    }
    assert_eq!(by("click", "198.51.100.0")["class"], "human");
}

#[test]
fn sign_trap_prints_a_click_path_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["sign", "trap", "--tenant", "acme", "--campaign", "c"])
        .args(["--message", "m-1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = String::from_utf8(output.stdout).unwrap();
    assert!(url.contains("/c/"), "{url}");
    let with_target = Command::new(BIN)
        .args(["sign", "trap", "--tenant", "acme", "--campaign", "c"])
        .args([
            "--message",
            "m-1",
            "--target",
            "https://x.example/",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!with_target.status.success(), "a trap carries no target");
}
