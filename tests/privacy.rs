//! The privacy promises, each driven through the real server: opt-out, DNT/GPC,
//! IP handling on disk and upstream, self-opens, suppression, erasure, export,
//! retention, and the admin API's token.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::upstream::{Mode, Upstream};
use common::{eventually, get, send, TestServer};
use http::{Request, Response, Version};
use http_body_util::Full;
use trackedge::{Claims, Kind};

const ADMIN_TOKEN: &str = "admin-s3cret";

fn open_claims(recipient: &str, message: &str) -> Claims {
    common::claims_of(Kind::Open, recipient, message)
}

async fn hit(server: &TestServer, claims: &Claims, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut request = Request::builder()
        .uri(server.path_for(claims))
        .header("host", "t.example")
        .header("user-agent", "Mozilla/5.0 (privacy test)");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = send(
        server.public,
        Version::HTTP_11,
        request.body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert!(response.status().is_success() || response.status().is_redirection());
    response
}

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Response<Bytes> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(
        server.admin,
        Version::HTTP_11,
        request.body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

async fn post(server: &TestServer, path: &str, cookie: Option<&str>) -> Response<Bytes> {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "t.example");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    send(
        server.public,
        Version::HTTP_11,
        request.body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

fn json(response: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

fn messages(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_out_browser_is_answered_but_never_recorded_until_it_opts_in() {
    let mut server = TestServer::start("");
    let page = get(server.public, "/optout").await;
    assert_eq!(page.status(), 200);
    assert!(String::from_utf8_lossy(page.body()).contains("Stop recording me"));

    let opted_out = post(&server, "/optout", None).await;
    let set_cookie = opted_out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in [
        "te_optout=1",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=157680000",
        "Path=/",
    ] {
        assert!(
            set_cookie.contains(attribute),
            "{set_cookie} lacks {attribute}"
        );
    }
    let cookie = "te_optout=1";
    let answer = hit(
        &server,
        &open_claims("r1", "while-out"),
        &[("cookie", cookie)],
    )
    .await;
    assert_eq!(answer.body().len(), 43, "still the pixel");
    let click = Claims {
        kind: Kind::Click,
        target: Some("https://shop.example/".into()),
        ..open_claims("r1", "click-while-out")
    };
    assert_eq!(
        hit(&server, &click, &[("cookie", "x=1; te_optout=1")])
            .await
            .status(),
        302
    );
    let page = send(
        server.public,
        Version::HTTP_11,
        Request::get("/optout")
            .header("host", "t.example")
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(String::from_utf8_lossy(page.body()).contains("Record me again"));

    let opted_in = post(&server, "/optin", Some(cookie)).await;
    assert!(opted_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("te_optout=; Max-Age=0"));
    hit(&server, &open_claims("r1", "after-in"), &[]).await;

    assert_eq!(
        server
            .metric("trackedge_privacy_not_recorded_total{reason=\"opted_out\"}")
            .await,
        2.0
    );
    assert!(server.terminate().success());
    assert_eq!(messages(&server.events()), ["after-in"]);
    assert!(
        !server.stderr().contains("r1"),
        "opted-out hits are not logged with identifiers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnt_and_gpc_are_ignored_flagged_or_dropped_as_configured() {
    for (policy, expected) in [("ignore", 3), ("flag", 3), ("drop", 1)] {
        let mut server = TestServer::start(&format!("[privacy]\ndnt_policy = \"{policy}\"\n"));
        hit(&server, &open_claims("r", "dnt"), &[("dnt", "1")]).await;
        hit(&server, &open_claims("r", "gpc"), &[("sec-gpc", "1")]).await;
        hit(&server, &open_claims("r", "plain"), &[]).await;
        assert!(server.terminate().success());
        let events = server.events();
        assert_eq!(events.len(), expected, "{policy}");
        let find = |m: &str| events.iter().find(|e| e["message"] == m).cloned();
        match policy {
            "ignore" => {
                assert!(events
                    .iter()
                    .all(|e| e["dnt"] == false && e["gpc"] == false));
            }
            "flag" => {
                assert_eq!(find("dnt").unwrap()["dnt"], true);
                assert_eq!(find("gpc").unwrap()["gpc"], true);
                assert_eq!(find("plain").unwrap()["dnt"], false);
            }
            _ => assert_eq!(messages(&events), ["plain"]),
        }
    }
}

/// Every file under `dir`, concatenated (the sled directory).
fn bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(bytes_under(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

/// The records of every segment in a stopped edge's spool, decompressed: segments
/// are stored compressed, so a plain search of the files would prove nothing.
fn spooled_records(dir: &std::path::Path) -> Vec<u8> {
    let store = trackedge::store::Store::open(dir, 1 << 20).unwrap();
    let mut all = Vec::new();
    for entry in store.iter() {
        let (_, bytes) = entry.unwrap();
        let segment = trackedge::record::decode(&bytes).unwrap();
        all.extend_from_slice(segment.body().unwrap());
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ip_mode_holds_on_disk_and_upstream() {
    // The test client's address is 127.0.0.1; only `full` may keep it.
    const FULL: &str = "127.0.0.1";
    for mode in ["truncate", "full", "hash", "none"] {
        let upstream = Upstream::start(Mode::Hangup).await;
        let config = format!(
            "[privacy]\nip_mode = \"{mode}\"\n[spool]\ndurability = \"batch\"\n\
             [forward]\nsink = \"http\"\nbackoff_initial_ms = 10\nbackoff_max_ms = 100\ncircuit_open_ms = 200\n\
             shutdown_grace_ms = 200\n[forward.http]\nurl = \"{}\"\ngzip = false\n",
            upstream.url()
        );
        let mut first = TestServer::start(&config);
        for n in 0..5 {
            hit(&first, &open_claims("r", &format!("m{n}")), &[]).await;
        }
        // The gauge is published after the commit's fsync, so the files hold them.
        let held = eventually(Duration::from_secs(10), || async {
            first.metric("trackedge_spool_events").await >= 5.0
        })
        .await;
        assert!(held);
        // The files hold segments compressed, so only a plain-stored one could show
        // the address here; the decompressed check below is the real one.
        if mode != "full" {
            assert!(
                !contains(&bytes_under(&first.dir.join("spool")), FULL),
                "{mode}: full address in the spool files"
            );
        }
        // Stopped, the upstream still hanging up: the events stay in the spool.
        assert!(first.terminate().success());
        let on_disk = spooled_records(&first.dir.join("spool"));
        assert!(
            contains(&on_disk, "m4"),
            "{mode}: the events are in the spool"
        );
        assert_eq!(
            contains(&on_disk, FULL),
            mode == "full",
            "{mode}: full address on disk"
        );

        // A second edge on the same spool forwards what the first one held.
        let _second = TestServer::start_in(&first.dir, &config);
        upstream.set_mode(Mode::Accept);
        let arrived = eventually(Duration::from_secs(20), || async {
            upstream.distinct_ids() == 5
        })
        .await;
        assert!(arrived, "{mode}");
        let received = upstream.received.lock().unwrap();
        let upstream_text = serde_json::to_string(&received.events).unwrap();
        assert_eq!(
            upstream_text.contains(FULL),
            mode == "full",
            "{mode}: full address upstream"
        );
        let ip = &received.events[0]["ip"];
        match mode {
            "truncate" => assert_eq!(ip, "127.0.0.0"),
            "full" => assert_eq!(ip, FULL),
            "hash" => {
                let hash = ip.as_str().unwrap();
                assert_eq!(hash.len(), 32);
                assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
                assert!(
                    received.events.iter().all(|e| e["ip"] == *ip),
                    "stable within a day"
                );
            }
            _ => assert!(ip.is_null()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agents_are_kept_only_in_full_mode() {
    let mut server = TestServer::start("[privacy]\nua_mode = \"parsed_only\"\n");
    hit(&server, &open_claims("r", "m"), &[]).await;
    assert!(server.terminate().success());
    assert!(server.events()[0]["ua"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_opens_are_known_by_the_sender_cookie_and_by_the_send_window() {
    let mut server = TestServer::start("[privacy]\nself_open_window_secs = 60\n");
    let sender = Claims {
        kind: Kind::Sender,
        message: "sender-app".into(),
        recipient: None,
        ..open_claims("x", "x")
    };
    let marked = get(server.public, &server.path_for(&sender)).await;
    assert_eq!(marked.status(), 200);
    let set_cookie = marked.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("te_sender="), "{set_cookie}");
    assert_eq!(get(server.public, "/s/forged-token").await.status(), 404);

    hit(
        &server,
        &open_claims("r", "by-cookie"),
        &[("cookie", &cookie)],
    )
    .await;
    let other_tenant = Claims {
        tenant: "globex".into(),
        ..open_claims("r", "other-tenant")
    };
    hit(&server, &other_tenant, &[("cookie", &cookie)]).await;
    let now = trackedge::event::now_ms() / 1000;
    let just_sent = Claims {
        sent_at: Some(now),
        ..open_claims("r", "in-window")
    };
    hit(&server, &just_sent, &[]).await;
    let long_ago = Claims {
        sent_at: Some(now - 3600),
        ..open_claims("r", "later")
    };
    hit(&server, &long_ago, &[]).await;
    assert!(server.terminate().success());
    let events = server.events();
    let is_self = |m: &str| events.iter().find(|e| e["message"] == m).unwrap()["self"].clone();
    assert_eq!(is_self("by-cookie"), true);
    assert_eq!(
        is_self("other-tenant"),
        false,
        "the cookie names the sender's tenants"
    );
    assert_eq!(is_self("in-window"), true);
    assert_eq!(is_self("later"), false);

    let mut server =
        TestServer::start("[privacy]\nself_open_window_secs = 60\nself_open_policy = \"drop\"\n");
    hit(&server, &just_sent, &[]).await;
    hit(&server, &long_ago, &[]).await;
    assert!(server.terminate().success());
    assert_eq!(messages(&server.events()), ["later"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_survives_a_restart_and_can_be_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), "");
    let put = call(&server, "PUT", "/admin/suppressions/acme/r%201", None).await;
    assert_eq!(put.status(), 200);
    assert_eq!(json(&put)["changed"], true);
    hit(&server, &open_claims("r 1", "suppressed-1"), &[]).await;
    hit(&server, &open_claims("r 2", "other"), &[]).await;
    assert!(server.terminate().success());

    let mut server = TestServer::start_in(dir.path(), "");
    assert_eq!(
        call(&server, "GET", "/admin/suppressions/acme/r%201", None)
            .await
            .status(),
        200
    );
    hit(&server, &open_claims("r 1", "suppressed-2"), &[]).await;
    assert_eq!(
        server
            .metric("trackedge_privacy_suppressed_recipients")
            .await,
        1.0
    );
    assert_eq!(
        call(&server, "DELETE", "/admin/suppressions/acme/r%201", None)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&server, "GET", "/admin/suppressions/acme/r%201", None)
            .await
            .status(),
        404
    );
    hit(&server, &open_claims("r 1", "lifted"), &[]).await;
    assert!(server.terminate().success());
    assert_eq!(messages(&server.events()), ["other", "lifted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_exactly_one_recipient_and_export_returns_exactly_theirs() {
    let mut server = TestServer::start("[forward]\nsink = \"none\"\n");
    for n in 0..3 {
        hit(&server, &open_claims("r1", &format!("r1-{n}")), &[]).await;
    }
    for n in 0..2 {
        hit(&server, &open_claims("r2", &format!("r2-{n}")), &[]).await;
    }
    let other_tenant = Claims {
        tenant: "globex".into(),
        ..open_claims("r1", "globex-r1")
    };
    hit(&server, &other_tenant, &[]).await;
    let held = eventually(Duration::from_secs(5), || async {
        server.metric("trackedge_spool_events").await == 6.0
    })
    .await;
    assert!(held);

    let export = call(&server, "GET", "/admin/subjects/acme/r1/export", None).await;
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let exported: Vec<serde_json::Value> = String::from_utf8_lossy(export.body())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages(&exported), ["r1-0", "r1-1", "r1-2"]);

    let erased = call(&server, "DELETE", "/admin/subjects/acme/r1", None).await;
    assert_eq!(erased.status(), 200);
    let erased = json(&erased);
    assert_eq!(erased["removed"], 3);
    assert_eq!(erased["suppressed"], true);
    assert_eq!(erased["erasure_record_queued"], true);
    let again = json(&call(&server, "DELETE", "/admin/subjects/acme/r1", None).await);
    assert_eq!(again["removed"], 0, "erasure is idempotent");

    let export = call(&server, "GET", "/admin/subjects/acme/r1/export", None).await;
    assert!(export.body().is_empty(), "nothing of r1 is held any more");
    let export = call(&server, "GET", "/admin/subjects/acme/r2/export", None).await;
    assert_eq!(String::from_utf8_lossy(export.body()).lines().count(), 2);
    hit(&server, &open_claims("r1", "after-erasure"), &[]).await;
    assert!(
        server.stderr().contains("trackedge::audit"),
        "every privacy call leaves an audit line"
    );
    assert!(
        !server.stderr().contains("r1-"),
        "audit lines carry no recipient data"
    );
    assert!(server.terminate().success());

    // What is left: r2's two events, globex's, and the erasure records for upstream.
    let store = trackedge::store::Store::open(&server.dir.join("spool"), 1 << 20).unwrap();
    let mut left = Vec::new();
    for entry in store.iter() {
        let (_, segment) = entry.unwrap();
        for record in trackedge::record::decode(&segment)
            .unwrap()
            .records()
            .unwrap()
        {
            left.push(serde_json::from_slice::<serde_json::Value>(record.json).unwrap());
        }
    }
    let kinds = |kind: &str| left.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(kinds("erasure"), 2);
    let erasure = left.iter().find(|e| e["kind"] == "erasure").unwrap();
    assert_eq!(
        (erasure["tenant"].as_str(), erasure["recipient"].as_str()),
        (Some("acme"), Some("r1"))
    );
    let mut kept = messages(
        &left
            .iter()
            .filter(|e| e["kind"] == "open")
            .cloned()
            .collect::<Vec<_>>(),
    );
    kept.sort();
    assert_eq!(kept, ["globex-r1", "r2-0", "r2-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_reaches_dead_letters_and_the_upstream_hears_of_it() {
    let upstream = Upstream::start(Mode::Status400).await;
    let server = TestServer::start(&format!(
        "[forward]\nsink = \"http\"\n[forward.http]\nurl = \"{}\"\n",
        upstream.url()
    ));
    hit(&server, &open_claims("r1", "dead-1"), &[]).await;
    hit(&server, &open_claims("r2", "dead-2"), &[]).await;
    let dead = eventually(Duration::from_secs(10), || async {
        server.metric("trackedge_spool_dead_letters").await >= 2.0
    })
    .await;
    assert!(dead);
    upstream.set_mode(Mode::Accept);
    let erased = json(&call(&server, "DELETE", "/admin/subjects/acme/r1", None).await);
    assert_eq!(erased["dead_letters"], 1);
    let told = eventually(Duration::from_secs(10), || async {
        upstream
            .received
            .lock()
            .unwrap()
            .events
            .iter()
            .any(|e| e["kind"] == "erasure" && e["recipient"] == "r1")
    })
    .await;
    assert!(told, "the erasure record reaches the upstream");
    let export = call(&server, "GET", "/admin/subjects/acme/r2/export", None).await;
    assert_eq!(
        String::from_utf8_lossy(export.body()).lines().count(),
        1,
        "r2's dead letter stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_events_and_dead_letters() {
    let upstream = Upstream::start(Mode::Status400).await;
    let server = TestServer::start(&format!(
        "[retention]\nmax_age_secs = 1\n[forward]\nsink = \"http\"\n[forward.http]\nurl = \"{}\"\n",
        upstream.url()
    ));
    hit(&server, &open_claims("r", "to-dead-letters"), &[]).await;
    // A counter, not the gauge: with a one-second retention the gauge may be back to 0.
    let dead = eventually(Duration::from_secs(10), || async {
        server.metric("trackedge_forward_dead_letters_total").await >= 1.0
    })
    .await;
    assert!(dead);
    upstream.set_mode(Mode::Hangup);
    hit(&server, &open_claims("r", "never-forwarded"), &[]).await;
    let expired = eventually(Duration::from_secs(15), || async {
        server
            .metric("trackedge_events_dropped_total{reason=\"retention\"}")
            .await
            == 1.0
            && server
                .metric("trackedge_events_dropped_total{reason=\"retention_dead_letter\"}")
                .await
                == 1.0
    })
    .await;
    assert!(expired, "old events and dead letters were not deleted");
    let report = json(&call(&server, "GET", "/admin/spool", None).await);
    assert_eq!(
        (report["events"].as_u64(), report["dead_letters"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_the_right_token_get_401_and_change_nothing() {
    let server = TestServer::start(&format!(
        "[admin]\nbearer_token = \"{ADMIN_TOKEN}\"\n[forward]\nsink = \"none\"\n"
    ));
    hit(&server, &open_claims("r1", "kept"), &[]).await;
    for token in [None, Some("wrong-token"), Some("admin-s3cre")] {
        for (method, path) in [
            ("PUT", "/admin/suppressions/acme/r1"),
            ("DELETE", "/admin/subjects/acme/r1"),
            ("GET", "/admin/subjects/acme/r1/export"),
            ("GET", "/admin/spool"),
        ] {
            let answer = call(&server, method, path, token).await;
            assert_eq!(answer.status(), 401, "{method} {path} with {token:?}");
            assert!(!String::from_utf8_lossy(answer.body()).contains("kept"));
        }
    }
    let status = call(
        &server,
        "GET",
        "/admin/suppressions/acme/r1",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status.status(), 404, "not suppressed");
    let export = call(
        &server,
        "GET",
        "/admin/subjects/acme/r1/export",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(export.body()).lines().count(),
        1,
        "not erased"
    );
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);
}
