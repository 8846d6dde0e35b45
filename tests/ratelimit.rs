//! The per-network recording limit through the real server: answers never change,
//! events over the limit are marked or dropped as configured, and counted.

mod common;

use common::{claims, get, TestServer};
use trackedge::Kind;

const LIMIT: &str = "[rate_limit]\nburst = 3\nevents_per_sec = 0.001\n";

async fn five_opens(server: &TestServer) {
    for n in 0..5 {
        let path = server.path_for(&claims(Kind::Open, &format!("m{n}")));
        let response = get(server.public, &path).await;
        assert_eq!(response.status(), 200, "every open is answered");
        assert_eq!(response.headers()["content-type"], "image/gif");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_events_are_marked_and_still_answered() {
    let mut server = TestServer::start(LIMIT);
    five_opens(&server).await;
    assert_eq!(
        server
            .metric("trackedge_ratelimit_events_total{result=\"marked\"}")
            .await,
        2.0
    );
    assert!(server.terminate().success());
    let events = server.events();
    assert_eq!(events.len(), 5, "mark loses nothing");
    let marked: Vec<bool> = events
        .iter()
        .map(|event| event.get("rate_limited") == Some(&serde_json::Value::Bool(true)))
        .collect();
    assert_eq!(marked, [false, false, false, true, true]);
    assert!(
        events[..3].iter().all(|e| e.get("rate_limited").is_none()),
        "the field is absent under the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_events_are_dropped_when_configured() {
    let mut server = TestServer::start(&format!("{LIMIT}action = \"drop\"\n"));
    five_opens(&server).await;
    assert_eq!(
        server
            .metric("trackedge_ratelimit_events_total{result=\"dropped\"}")
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("trackedge_ratelimit_events_total{result=\"allowed\"}")
            .await,
        3.0
    );
    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 3, "only the burst was recorded");
}

/// Through a trusted proxy: each client network has its own bucket, and a network
/// whose ASN is exempt (a mail image proxy's) is never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_per_client_network_and_exempt_asns_are_never_limited() {
    let dir = tempfile::tempdir().unwrap();
    let asn = trackedge::mmdb_fixtures::write_asn(dir.path());
    let config = format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [geoip]\nasn_db = {:?}\n\
         {LIMIT}action = \"drop\"\nexempt_asns = [64500]\n",
        asn.display().to_string()
    );
    let mut server = TestServer::start(&config);
    let mut n = 0;
    for (client, opens) in [
        ("81.2.69.10", 6),   // AS64500 in the fixture: exempt
        ("192.0.2.1", 6),    // limited: 3 recorded
        ("192.0.2.200", 1),  // same /24: over the limit
        ("198.51.100.7", 2), // another network: its own bucket
    ] {
        for _ in 0..opens {
            n += 1;
            let path = server.path_for(&claims(Kind::Open, &format!("m{n}")));
            let response = common::send(
                server.public,
                http::Version::HTTP_11,
                common::request_with("GET", &path, &[("x-forwarded-for", client)]),
            )
            .await;
            assert_eq!(response.status(), 200);
        }
    }
    assert_eq!(
        server
            .metric("trackedge_ratelimit_events_total{result=\"dropped\"}")
            .await,
        4.0
    );
    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 6 + 3 + 2);
}

/// A dropped event leaves nothing behind: the same message opened later from
/// another network is still its first open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_event_does_not_use_up_the_first_open() {
    let config =
        format!("[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n{LIMIT}action = \"drop\"\n");
    let mut server = TestServer::start(&config);
    let open_from = |message: &str, client: &'static str| {
        let path = server.path_for(&claims(Kind::Open, message));
        let public = server.public;
        async move {
            common::send(
                public,
                http::Version::HTTP_11,
                common::request_with("GET", &path, &[("x-forwarded-for", client)]),
            )
            .await
            .status()
        }
    };
    for n in 0..3 {
        assert_eq!(open_from(&format!("burst-{n}"), "192.0.2.1").await, 200);
    }
    assert_eq!(
        open_from("shared", "192.0.2.1").await,
        200,
        "dropped, still answered"
    );
    assert_eq!(open_from("shared", "198.51.100.1").await, 200);
    assert!(server.terminate().success());
    let events = server.events();
    assert_eq!(events.len(), 4);
    let shared = events
        .iter()
        .find(|e| e["message"] == "shared")
        .expect("the second network's open");
    assert_eq!(shared["first"], serde_json::Value::Bool(true), "{shared}");
}
