//! The operator's kit in `contrib/`: the alert rules pass `promtool check rules` and
//! their unit tests (one per alert); the Grafana dashboard and the rules name only
//! metrics the edge exports; and a real Prometheus (Debian's `prometheus`, on
//! loopback with a temp data dir) scraping the real binary under traffic answers
//! every dashboard query with data and evaluates every rule without error.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::{Mode, Upstream};
use common::{claims, get, TestServer};
use trackedge::Kind;

const CONTRIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib");
/// What the dashboard's `$__rate_interval` stands for against a 1 s scrape.
const RATE_INTERVAL: &str = "10s";

fn contrib(path: &str) -> PathBuf {
    Path::new(CONTRIB).join(path)
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(contrib("grafana/trackedge.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard (panel targets, and the metric of the
/// instance variable's `label_values`), with Grafana's variables filled in.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let title = panel["title"].as_str().unwrap_or_default();
            queries.push((
                format!("{title} / {}", target["refId"].as_str().unwrap_or("?")),
                expr.replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$instance", ".*"),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .expect("label_values(metric, label)");
            queries.push((format!("variable {}", variable["name"]), metric.to_owned()));
        }
    }
    queries
}

/// Metric names an expression mentions (`trackedge_*`, `process_*`), histogram
/// series reduced to their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("trackedge_") || word.starts_with("process_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

fn documented() -> BTreeSet<&'static str> {
    trackedge::metrics::ALL
        .iter()
        .map(|(name, _, _)| *name)
        .collect()
}

/// (alert name, expression) of every rule in the alert file, read from its YAML
/// text (`- alert:` then `expr:`, one line or a `|` block).
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("prometheus/trackedge-alerts.yml")).expect("rules");
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            rules.push((name.to_owned(), String::new()));
            in_block = false;
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let rule = rules.last_mut().expect("expr after alert");
            in_block = expr == "|";
            if !in_block {
                rule.1 = expr.to_owned();
            }
        } else if in_block && line.starts_with("          ") {
            let rule = rules.last_mut().expect("block in a rule");
            rule.1.push_str(trimmed);
            rule.1.push(' ');
        } else {
            in_block = false;
        }
    }
    rules
}

fn run_promtool(args: &[&str]) -> Option<String> {
    let promtool = common::tools::require("promtool", "prometheus")?;
    let output = Command::new(promtool)
        .args(args)
        .current_dir(contrib("prometheus"))
        .output()
        .expect("run promtool");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{printed}");
    Some(printed)
}

#[test]
fn the_alert_rules_pass_promtool_and_every_alert_has_a_unit_test() {
    let rules = alert_rules();
    assert!(rules.len() >= 10, "{rules:?}");
    let tests = [
        "trackedge-alerts.test.yml",
        "trackedge-alerts-geoip.test.yml",
    ]
    .map(|file| std::fs::read_to_string(contrib("prometheus").join(file)).expect(file))
    .join("\n");
    let documented = documented();
    for (name, expr) in &rules {
        assert!(!expr.is_empty(), "{name} has no expression");
        assert!(
            tests.contains(&format!("- name: {name}\n")),
            "{name} has no unit test group"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} is never evaluated in a test"
        );
        for metric in metric_names(expr) {
            assert!(
                documented.contains(metric.as_str()),
                "{name} uses {metric}, which the edge does not export"
            );
        }
    }
    let Some(checked) = run_promtool(&["check", "rules", "trackedge-alerts.yml"]) else {
        return;
    };
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{checked}"
    );
    run_promtool(&[
        "test",
        "rules",
        "trackedge-alerts.test.yml",
        "trackedge-alerts-geoip.test.yml",
    ]);
}

#[test]
fn the_dashboard_is_well_formed_and_uses_only_exported_metrics() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "trackedge");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24,
            "{} is wider than the dashboard",
            panel["title"]
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("title");
        assert!(titles.insert(title.to_owned()), "{title} twice");
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title} has no description"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds must be unique");
    }
    let documented = documented();
    let mut used = BTreeSet::new();
    for (what, expr) in dashboard_queries(&dashboard) {
        for metric in metric_names(&expr) {
            assert!(
                documented.contains(metric.as_str()),
                "{what} uses {metric}, which the edge does not export"
            );
            used.insert(metric);
        }
    }
    // What the issue asks the dashboard to show.
    for metric in [
        "trackedge_http_requests_total",
        "trackedge_http_request_duration_seconds",
        "trackedge_enrich_classified_total",
        "trackedge_privacy_not_recorded_total",
        "trackedge_spool_events",
        "trackedge_spool_oldest_age_seconds",
        "trackedge_spool_bytes",
        "trackedge_forward_latency_seconds",
        "trackedge_forward_failures_total",
        "trackedge_spool_dead_letters",
        "trackedge_geoip_database_build_timestamp_seconds",
        "trackedge_token_key_reloads_total",
        "trackedge_tls_reloads_total",
        "trackedge_http_connection_errors_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            used.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
}

/// A Prometheus server on loopback with its own temp data dir; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, scrape: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        let rules = contrib("prometheus/trackedge-alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: trackedge\n    static_configs:\n      \
                 - targets: ['{scrape}']\n"
            ),
        )
        .expect("write prometheus.yml");
        // A free loopback port: bound and released (the window for another process
        // to take it is short and would only fail this test).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let mut sender = common::keep_alive(self.addr).await.ok()?;
        let request = http::Request::builder()
            .uri(path)
            .header("host", self.addr.to_string())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    }

    /// The samples of an instant query (empty while there are none).
    async fn query(&self, expr: &str) -> Vec<f64> {
        let Some(answer) = self
            .api(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await
        else {
            return Vec::new();
        };
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sample| sample["value"][1].as_str()?.parse().ok())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query_with_data() {
    let Some(binary) = common::tools::require("prometheus", "prometheus") else {
        return;
    };
    let upstream = Upstream::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let city = common::mmdb::write_city(dir.path(), "a");
    let asn = common::mmdb::write_asn(dir.path());
    let secret = dir.path().join("webhook.secret");
    std::fs::write(
        &secret,
        "whsec_c2lnbmluZy1zZWNyZXQtb2YtMzItYnl0ZXMtLS0tLS0=\n",
    )
    .unwrap();
    let server = Arc::new(TestServer::start(&format!(
        "[forward]\nsink = \"http\"\n[forward.http]\nurl = \"{}\"\nsigning_secret_file = {secret:?}\n\
         [geoip]\ncity_db = {city:?}\nasn_db = {asn:?}\n",
        upstream.url()
    )));
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);

    // Traffic of every kind, good and bad, until the queries are answered (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let paths = [
                server.path_for(&claims(Kind::Open, "m-1")),
                server.path_for(&claims(Kind::Click, "m-1")),
                server.path_for(&claims(Kind::Download, "m-1")),
                "/c/garbage".to_owned(),
                "/nowhere".to_owned(),
            ];
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for path in &paths {
                    get(server.public, path).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let prometheus = Prometheus::start(&binary, server.admin);
    let queries = dashboard_queries(&dashboard());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for (what, expr) in &queries {
            let samples = prometheus.query(expr).await;
            if !samples.iter().any(|value| !value.is_nan()) {
                missing.push(format!("{what}: {expr} -> {samples:?}"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} dashboard queries returned no data:\n{}\nprometheus log:\n{}",
        missing.len(),
        queries.len(),
        missing.join("\n"),
        prometheus.log()
    );

    // The alert rules load into the same server and evaluate without error.
    let rules = prometheus.api("/api/v1/rules").await.expect("rules API");
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), alert_rules().len(), "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let firing = prometheus.query("ALERTS{alertstate=\"firing\"}").await;
    assert!(
        firing.is_empty(),
        "alerts fire on a healthy edge: {firing:?}"
    );
}
