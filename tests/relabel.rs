//! Bursts and trap links relabel a machine's earlier clicks: inside the hold-back
//! before they leave the edge, after it by a `reclassify` event. Through the real
//! server and a real receiver.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::upstream::{Mode, Upstream};
use common::{admin, admin_json, claims_of, eventually, request_with, send, TestServer, BIN};
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

/// Waits (bounded) until `trackedge_classify_relabelled_events_total{outcome}`
/// reaches `count`; whether it did.
async fn relabelled(server: &TestServer, outcome: &str, count: f64) -> bool {
    let series = format!("trackedge_classify_relabelled_events_total{{outcome=\"{outcome}\"}}");
    eventually(Duration::from_secs(10), || async {
        server.metric(&series).await == count
    })
    .await
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
    // Held until the stop, so nothing can leave before the burst is seen.
    let mut server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 600000\n"));
    for n in 1..=3 {
        assert_eq!(hit(&server, &link("m-burst", n), "203.0.113.5").await, 302);
    }
    assert!(
        relabelled(&server, "relabelled", 2.0).await,
        "the first two clicks are relabelled in the spool"
    );
    assert!(
        server
            .metric("trackedge_classify_rule_hits_total{reason=\"click_burst\"}")
            .await
            >= 1.0
    );
    assert!(server.terminate().success());
    let events = arrived(&upstream);
    assert_eq!(events.len(), 3, "{events:?}");
    for event in &events {
        assert_eq!(event["kind"], "click", "no reclassify event is needed");
        assert_eq!(event["class"], "link_scanner:burst", "{event}");
        assert_eq!(event["class_reason"], "click_burst", "{event}");
        assert_eq!(event["certainty"], "probable", "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_forwards_what_the_hold_back_still_holds() {
    let upstream = Upstream::start(Mode::Accept).await;
    // Ten minutes, the longest allowed: nothing would leave before the stop.
    let mut server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 600000\n"));
    for n in 1..=4 {
        assert_eq!(
            hit(&server, &link(&format!("m-held-{n}"), 1), "198.51.100.7").await,
            302
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(arrived(&upstream).is_empty(), "held events left early");
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let events = arrived(&upstream);
    let mut messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    messages.sort_unstable();
    assert_eq!(messages, ["m-held-1", "m-held-2", "m-held-3", "m-held-4"]);
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
    assert_eq!(reclassify["certainty"], "probable");
    assert_eq!(reclassify["message"], "m-late");
    assert_eq!(
        reclassify["recipient"], "r",
        "the subject of the clicks it names"
    );
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
    let mut server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 600000\n"));
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
    for reason in ["trap_link", "trap_network"] {
        let series = format!("trackedge_classify_rule_hits_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&series).await, 1.0, "{series}");
    }
    assert!(
        relabelled(&server, "relabelled", 1.0).await,
        "the click before the trap is relabelled in the spool"
    );
    assert!(server.terminate().success());
    let events = arrived(&upstream);
    assert_eq!(events.len(), 4, "{events:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_the_click_left_sends_a_reclassify_that_erasure_reaches() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&config(&upstream, ""));
    assert_eq!(hit(&server, &link("m-gone", 1), "203.0.113.5").await, 302);
    let left = eventually(Duration::from_secs(15), || async {
        arrived(&upstream).len() == 1
    })
    .await;
    assert!(left);
    let click_id = arrived(&upstream)[0]["id"].clone();
    let trap = Claims {
        link: 9,
        ..claims_of(Kind::Trap, "r", "m-gone")
    };
    assert_eq!(hit(&server, &trap, "203.0.113.77").await, 404);
    let told = eventually(Duration::from_secs(15), || async {
        arrived(&upstream).iter().any(|e| e["kind"] == "reclassify")
    })
    .await;
    assert!(told, "{:?}", arrived(&upstream));
    let events = arrived(&upstream);
    let reclassify = events.iter().find(|e| e["kind"] == "reclassify").unwrap();
    assert_eq!(reclassify["ids"], serde_json::json!([click_id]));
    assert_eq!(reclassify["class"], "link_scanner:trap");
    assert_eq!(reclassify["class_reason"], "trap_network");
    assert_eq!(reclassify["certainty"], "probable");
    assert!(relabelled(&server, "reclassify", 1.0).await);
    // The reclassify event is the recipient's data too: export lists it while the
    // edge holds it, and erasure leaves nothing of it behind.
    let erased = admin_json(&server, "DELETE", "/admin/subjects/acme/r").await;
    assert!(erased.is_object(), "{erased}");
    let export = admin(&server, "GET", "/admin/subjects/acme/r/export").await;
    assert_eq!(export.status(), 200);
    assert!(
        !String::from_utf8_lossy(export.body()).contains("m-gone"),
        "nothing of the erased recipient is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_recipients_trap_hit_is_not_recorded_and_relabels_nothing() {
    let upstream = Upstream::start(Mode::Accept).await;
    let mut server = TestServer::start(&config(&upstream, "[classify]\nhold_back_ms = 600000\n"));
    assert_eq!(hit(&server, &link("m-optout", 1), "203.0.113.5").await, 302);
    let trap = Claims {
        link: 9,
        ..claims_of(Kind::Trap, "r", "m-optout")
    };
    let request = request_with(
        "GET",
        &server.path_for(&trap),
        &[
            ("user-agent", BROWSER),
            ("x-forwarded-for", "203.0.113.77"),
            ("cookie", "te_optout=1"),
        ],
    );
    assert_eq!(
        send(server.public, Version::HTTP_11, request)
            .await
            .status(),
        404
    );
    // A trap token is a click-path token: the pixel path refuses it.
    let pixel = request_with(
        "GET",
        &format!("/o/{}.gif", &server.path_for(&trap)["/c/".len()..]),
        &[("user-agent", BROWSER)],
    );
    assert_eq!(
        send(server.public, Version::HTTP_11, pixel).await.status(),
        200
    );
    assert!(server.terminate().success());
    let events = arrived(&upstream);
    assert_eq!(events.len(), 1, "only the click: {events:?}");
    assert_eq!(events[0]["kind"], "click");
    assert_eq!(events[0]["class"], "human");
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
