//! The metrics API: after every route, sink outcome, privacy decision, admin call and
//! spool state has happened on the real binary, every exported name is documented
//! (in `metrics::ALL`, with HELP and TYPE), every documented name is exported, no
//! impossible label pair is, and `promtool check metrics` has nothing to say.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::upstream::{Mode, Upstream};
use common::{claims, eventually, get, request_with, send, TestServer};
use http::Version;
use trackedge::metrics::{MetricKind, ALL};
use trackedge::Kind;

const WAIT: Duration = Duration::from_secs(15);

/// One scrape, by metric family: its TYPE, whether it has HELP, its sample lines.
#[derive(Default, Debug)]
struct Family {
    kind: Option<String>,
    help: bool,
    samples: Vec<String>,
}

fn families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            families.entry(name.to_owned()).or_default().help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default().to_owned();
            let kind = parts.next().unwrap_or_default().to_owned();
            if kind == "histogram" {
                histograms.insert(name.clone());
            }
            families.entry(name).or_default().kind = Some(kind);
        } else if !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| histograms.contains(*base))
                })
                .unwrap_or(name);
            families
                .entry(family.to_owned())
                .or_default()
                .samples
                .push(line.to_owned());
        }
    }
    families
}

fn kind_name(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

/// Runs `promtool check metrics` on `text`: `None` when promtool is not installed
/// (outside CI), else its exit success and everything it printed.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let promtool = common::tools::require("promtool", "prometheus")?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), printed))
}

async fn admin_call(server: &TestServer, method: &str, path: &str) -> u16 {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    send(server.admin, Version::HTTP_11, request)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_is_documented_and_promtool_finds_nothing() {
    let upstream = Upstream::start(Mode::Status500).await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook.secret");
    std::fs::write(
        &secret_file,
        format!("whsec_{}\n", "c2lnbmluZy1zZWNyZXQtb2YtMzItYnl0ZXMtLS0tLS0="),
    )
    .unwrap();
    let server = TestServer::start(&format!(
        "[forward]\nsink = \"http\"\nbackoff_initial_ms = 10\nbackoff_max_ms = 50\n\
         circuit_failures = 1000\n[forward.http]\nurl = \"{}\"\nsigning_secret_file = {:?}\n\
         [privacy]\ndnt_policy = \"drop\"\nself_open_window_secs = 3600\n\
         self_open_policy = \"drop\"\n",
        upstream.url(),
        secret_file
    ));
    let public = server.public;
    let status = |path: String, headers: Vec<(&'static str, String)>, method: &'static str| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        send(
            public,
            Version::HTTP_11,
            request_with(method, &path, &headers),
        )
        .await
        .status()
        .as_u16()
    };

    // Every route, its good and bad answers.
    let open = server.path_for(&claims(Kind::Open, "m-open"));
    let click = server.path_for(&claims(Kind::Click, "m-click"));
    let download = server.path_for(&claims(Kind::Download, "m-download"));
    let unsubscribe = server.path_for(&claims(Kind::Unsubscribe, "m-unsub"));
    let sender = server.path_for(&claims(Kind::Sender, "m-sender"));
    assert_eq!(status(open.clone(), vec![], "GET").await, 200);
    assert_eq!(status(open.clone(), vec![], "POST").await, 405);
    assert_eq!(status("/o/garbage.gif".into(), vec![], "GET").await, 200);
    assert_eq!(status(click.clone(), vec![], "GET").await, 302);
    assert_eq!(status("/c/garbage".into(), vec![], "GET").await, 404);
    assert_eq!(status(download, vec![], "GET").await, 302);
    assert_eq!(status(unsubscribe.clone(), vec![], "GET").await, 200);
    let one_click = http::Request::builder()
        .method("POST")
        .uri(&unsubscribe)
        .header("host", "t.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"List-Unsubscribe=One-Click",
        )))
        .unwrap();
    assert_eq!(
        send(public, Version::HTTP_11, one_click).await.status(),
        200
    );
    assert_eq!(status("/optout".into(), vec![], "GET").await, 200);
    assert_eq!(status("/optin".into(), vec![], "POST").await, 200);
    assert_eq!(status(sender, vec![], "GET").await, 200);
    assert_eq!(status("/healthz".into(), vec![], "GET").await, 200);
    assert_eq!(status("/nowhere".into(), vec![], "GET").await, 404);

    // Every privacy decision.
    let pixel = |message: &str| server.path_for(&claims(Kind::Open, message));
    let cookie = vec![("cookie", "te_optout=1".to_owned())];
    assert_eq!(status(pixel("m-optout"), cookie, "GET").await, 200);
    let dnt = vec![("dnt", "1".to_owned())];
    assert_eq!(status(pixel("m-dnt"), dnt, "GET").await, 200);
    let mut just_sent = claims(Kind::Open, "m-self");
    just_sent.sent_at = Some(trackedge::event::now_ms() / 1000);
    assert_eq!(
        status(server.path_for(&just_sent), vec![], "GET").await,
        200
    );
    assert_eq!(
        admin_call(&server, "PUT", "/admin/suppressions/acme/rcpt-1").await,
        200
    );
    assert_eq!(status(pixel("m-suppressed"), vec![], "GET").await, 200);
    for (method, path) in [
        ("GET", "/admin/suppressions/acme/rcpt-1"),
        ("DELETE", "/admin/suppressions/acme/rcpt-1"),
        ("GET", "/admin/subjects/acme/rcpt-1/export"),
        ("DELETE", "/admin/subjects/acme/rcpt-gone"),
        ("GET", "/admin/spool"),
    ] {
        assert_eq!(
            admin_call(&server, method, path).await,
            200,
            "{method} {path}"
        );
    }
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);

    // Every sink outcome: retried (500, events held in the spool), refused for good
    // (400, dead letters), delivered.
    let held = eventually(WAIT, || async {
        let text = server.metrics().await;
        let value = |series| common::metric_value(&text, series).unwrap_or(0.0);
        value("trackedge_forward_failures_total{reason=\"status_5xx\"}") >= 1.0
            && value("trackedge_spool_events") >= 1.0
            && value("trackedge_spool_oldest_age_seconds") > 0.0
    })
    .await;
    assert!(held, "no retried batch held in the spool");
    upstream.set_mode(Mode::Status400);
    let refused = eventually(WAIT, || async {
        server.metric("trackedge_spool_dead_letters").await >= 1.0
    })
    .await;
    assert!(refused, "no dead letters after a 400");
    upstream.set_mode(Mode::Accept);
    assert_eq!(status(pixel("m-delivered"), vec![], "GET").await, 200);
    let delivered = eventually(WAIT, || async {
        server.metric("trackedge_forward_events_total").await >= 1.0
    })
    .await;
    assert!(delivered, "nothing delivered");

    let text = server.metrics().await;
    let scraped = families(&text);
    let documented: BTreeMap<&str, (MetricKind, &str)> = ALL
        .iter()
        .map(|&(name, kind, help)| (name, (kind, help)))
        .collect();
    for (name, family) in &scraped {
        let Some((kind, _)) = documented.get(name.as_str()) else {
            panic!("{name} is exported but not in metrics::ALL (nor in the README)");
        };
        assert!(family.help, "{name} has no HELP");
        assert_eq!(family.kind.as_deref(), Some(kind_name(*kind)), "{name}");
    }
    for name in documented.keys() {
        // The Kafka sink's own metric; tests/kafka.rs checks it with that sink.
        if *name == "trackedge_forward_sink_state_changes_total" {
            continue;
        }
        let exported = scraped.get(*name).is_some_and(|f| !f.samples.is_empty());
        assert!(exported, "{name} is documented but not exported");
    }

    // Only label pairs that can happen.
    let samples = |name: &str| scraped[name].samples.clone();
    let failures = samples("trackedge_token_failures_total");
    // Five token routes, nine reasons each, bad_target on the two that redirect.
    assert_eq!(failures.len(), 5 * 9 + 2, "{failures:#?}");
    for impossible in [
        "route=\"healthz\"",
        "route=\"optout\"",
        "route=\"not_found\"",
    ] {
        assert!(
            !failures.iter().any(|s| s.contains(impossible)),
            "{impossible}"
        );
    }
    assert!(!failures
        .iter()
        .any(|s| s.contains("route=\"pixel\",reason=\"bad_target\"")));
    assert!(!samples("trackedge_events_emitted_total")
        .iter()
        .any(|s| s.contains("kind=\"sender\"")));
    assert!(!samples("trackedge_forward_failures_total")
        .iter()
        .any(|s| s.contains("kafka")));
    assert!(!samples("trackedge_http_requests_total")
        .iter()
        .any(|s| s.contains("route=\"healthz\",status=\"3xx\"")));
    assert_eq!(
        common::metric_value(&text, "trackedge_token_signing_key_info{key_id=\"1\"}"),
        Some(1.0)
    );
    for (series, at_least) in [
        (
            "trackedge_privacy_not_recorded_total{reason=\"opted_out\"}",
            1.0,
        ),
        (
            "trackedge_privacy_not_recorded_total{reason=\"do_not_track\"}",
            1.0,
        ),
        (
            "trackedge_privacy_not_recorded_total{reason=\"self_open\"}",
            1.0,
        ),
        (
            "trackedge_privacy_not_recorded_total{reason=\"suppressed\"}",
            1.0,
        ),
        ("trackedge_privacy_admin_calls_total{action=\"erase\"}", 1.0),
        (
            "trackedge_forward_failures_total{reason=\"status_4xx\"}",
            1.0,
        ),
        ("trackedge_forward_dead_letters_total", 1.0),
        (
            "trackedge_http_requests_total{route=\"sender\",status=\"2xx\"}",
            1.0,
        ),
        ("process_resident_memory_bytes", 1e6),
        ("process_open_fds", 5.0),
        ("process_start_time_seconds", 1.7e9),
    ] {
        let value = common::metric_value(&text, series).unwrap_or(0.0);
        assert!(value >= at_least, "{series} = {value}");
    }

    match promtool_check(&text) {
        None => {}
        Some((ok, printed)) => {
            assert!(
                ok && printed.is_empty(),
                "promtool check metrics:\n{printed}"
            );
        }
    }
}

#[test]
fn the_readme_lists_every_metric() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section");
    for &(name, _, _) in ALL {
        assert!(
            table.contains(&format!("`{name}`")),
            "{name} is not in the README's table"
        );
    }
}
