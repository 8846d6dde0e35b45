//! A fleet in network namespaces: Debian's nginx hashing consistently on the URL's
//! routing key in front of three edges, each in its own namespace with its own data
//! dir (the signing keys are the only thing they share), all forwarding to one HTTP
//! collector; a client namespace drives opens, clicks and click bursts of many
//! messages; one edge is killed with SIGKILL mid-run and restarted.
//!
//! Checked: every answered hit arrives (at least once; exactly once after
//! de-duplication by id, except hits nginx retried on another edge around the
//! failover); no two events share an id; first/duplicate flags and bursts are right
//! for every message whose hits all stayed on one live edge (the others, around the
//! failover, are counted and reported).
//!
//! Topology (addresses from 198.18.0.0/15, the range set aside for benchmarking
//! network devices, RFC 2544): namespace `hub` holds nginx on 198.18.10.1:8080 and
//! the collector on :9000; veth pairs join it to `e1..e3` (198.18.K.2) and `cli`
//! (198.18.10.2). Everything is removed at the end, also when the test fails. The
//! collector and the client are this test binary again, run inside their namespace
//! (`ip netns exec`) as the ignored tests `role_collector` and `role_client`.
//!
//! Needs root, `ip` and nginx: outside CI a missing one skips with a printed reason;
//! under `CI=true` the test fails instead.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use trackedge::{Claims, Kind};

const EDGES: usize = 3;
const MESSAGES: usize = 450;
/// One message in this many gets a burst of four distinct links within a second.
const BURST_EVERY: usize = 5;
const CLIENT_WORKERS: usize = 32;
/// The edges' `dedup.burst_window_ms`; planned clicks are spaced past it.
const BURST_WINDOW_MS: u64 = 300;
/// `spool.batch_delay_ms + flush_every_ms` of the edges: what a kill -9 may lose.
const LOSS_WINDOW_MS: u64 = 105;
const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.5 Safari/605.1.15";

fn hub_addr(link: usize) -> String {
    format!("198.18.{link}.1")
}

fn edge_addr(edge: usize) -> String {
    format!("198.18.{edge}.2")
}

const CLIENT_LINK: usize = 10;

// ---------------------------------------------------------------------------------
// Namespaces

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The namespaces and the processes in them; everything goes on drop.
struct Fleet {
    prefix: String,
    names: Vec<String>,
    children: Vec<Child>,
}

impl Fleet {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn create() -> Result<Fleet, String> {
        let prefix = format!("te{}", std::process::id());
        let mut fleet = Fleet {
            prefix,
            names: Vec::new(),
            children: Vec::new(),
        };
        let hub = fleet.ns("hub");
        fleet.add_ns(&hub)?;
        let links: Vec<(String, usize)> = (1..=EDGES)
            .map(|k| (format!("e{k}"), k))
            .chain(std::iter::once(("cli".to_owned(), CLIENT_LINK)))
            .collect();
        for (name, link) in links {
            let ns = fleet.ns(&name);
            fleet.add_ns(&ns)?;
            // veth names are limited to 15 bytes: short, unique per test process.
            let outer = format!("h{}{}", std::process::id() % 100_000, link);
            let inner = format!("v{}{}", std::process::id() % 100_000, link);
            run(
                "ip",
                &[
                    "link", "add", &outer, "netns", &hub, "type", "veth", "peer", "name", &inner,
                    "netns", &ns,
                ],
            )?;
            let hub_ip = format!("{}/24", hub_addr(link));
            let inner_ip = if link == CLIENT_LINK {
                format!("198.18.{CLIENT_LINK}.2/24")
            } else {
                format!("{}/24", edge_addr(link))
            };
            run("ip", &["-n", &hub, "addr", "add", &hub_ip, "dev", &outer])?;
            run("ip", &["-n", &hub, "link", "set", &outer, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &inner_ip, "dev", &inner])?;
            run("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
        }
        Ok(fleet)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        run("ip", &["netns", "add", name])?;
        self.names.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"])
    }

    /// Starts `program args` inside namespace `ns`; the child is killed on drop.
    fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], env: &[(&str, String)]) -> usize {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(ns)])
            .arg(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.children
            .push(command.spawn().expect("spawn in namespace"));
        self.children.len() - 1
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes the veth ends in it.
        for name in self.names.iter().rev() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("network namespaces need root".into());
    }
    let ip = common::broker::on_path("ip")
        .or_else(|| Some(PathBuf::from("/usr/sbin/ip")).filter(|p| p.is_file()))
        .ok_or("no `ip` command (apt-get install iproute2)")?;
    let nginx = common::broker::on_path("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or("no nginx (apt-get install nginx)")?;
    Ok((ip, nginx))
}

// ---------------------------------------------------------------------------------
// The plan: what the client sends

/// One request of the plan; `message` groups them (sent in order, one at a time).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Step {
    message: usize,
    kind: String,
    link: u32,
    path: String,
    /// Milliseconds to wait before this step (bursts use 0).
    pause_ms: u64,
}

/// What the client saw for one step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Seen {
    message: usize,
    kind: String,
    link: u32,
    status: u16,
    /// nginx's `$upstream_addr`: the edge that answered (two when it retried).
    edge: String,
    at_ms: u64,
}

fn message_id(n: usize) -> String {
    format!("msg-{n}")
}

fn plan(keys: &trackedge::KeyRing) -> Vec<Step> {
    let mut steps = Vec::new();
    for n in 0..MESSAGES {
        let claims = |kind: Kind, link: u32| Claims {
            kind,
            tenant: "acme".into(),
            campaign: "fleet".into(),
            message: message_id(n),
            recipient: Some(format!("r-{n}")),
            link,
            target: kind
                .has_target()
                .then(|| format!("https://shop.example/{n}/{link}")),
            expires_at: None,
            sent_at: None,
        };
        let mut step = |kind: Kind, link: u32, pause_ms: u64| {
            let url = trackedge::mint_url("", keys, &claims(kind, link)).expect("sign");
            steps.push(Step {
                message: n,
                kind: kind.as_str().into(),
                link,
                path: url,
                pause_ms,
            });
        };
        // Two opens, a click on link 1 twice and one on link 2, spaced past the
        // burst window so only the planned bursts are bursts.
        step(Kind::Open, 0, 0);
        step(Kind::Open, 0, 30);
        step(Kind::Click, 1, 30);
        step(Kind::Click, 1, BURST_WINDOW_MS + 50);
        step(Kind::Click, 2, 30);
        if n % BURST_EVERY == 0 {
            // A scanner: four distinct links within a second, after the window of
            // the earlier clicks has passed.
            for link in 3..=6 {
                step(
                    Kind::Click,
                    link,
                    if link == 3 { BURST_WINDOW_MS + 50 } else { 5 },
                );
            }
        }
    }
    steps
}

// ---------------------------------------------------------------------------------
// Roles run inside namespaces

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut sender = tokio::time::timeout(Duration::from_secs(5), common::keep_alive(addr))
        .await
        .map_err(|_| "connect timeout".to_owned())??;
    let request = http::Request::builder()
        .uri(path)
        .header("host", "t.example")
        .header("user-agent", UA)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "response timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let edge = response
        .headers()
        .get("x-edge")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok((status, edge))
}

/// The client: sends the plan through nginx, each message's steps in order, many
/// messages at once; writes what it saw, one JSON line per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a role of the fleet test, run by it inside the client namespace"]
async fn role_client() {
    let plan_path = std::env::var("FLEET_PLAN").expect("FLEET_PLAN");
    let out_path = std::env::var("FLEET_SEEN").expect("FLEET_SEEN");
    let target: SocketAddr = std::env::var("FLEET_TARGET")
        .expect("FLEET_TARGET")
        .parse()
        .expect("address");
    let steps: Vec<Step> = std::fs::read_to_string(plan_path)
        .expect("plan")
        .lines()
        .map(|l| serde_json::from_str(l).expect("step"))
        .collect();
    let mut by_message: BTreeMap<usize, Vec<Step>> = BTreeMap::new();
    for step in steps {
        by_message.entry(step.message).or_default().push(step);
    }
    let queue: Arc<Vec<Vec<Step>>> = Arc::new(by_message.into_values().collect());
    let next = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..CLIENT_WORKERS {
        let (queue, next, seen) = (queue.clone(), next.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(steps) = queue.get(index) else {
                    return;
                };
                for step in steps {
                    tokio::time::sleep(Duration::from_millis(step.pause_ms)).await;
                    let (status, edge) = http_get(target, &step.path)
                        .await
                        .unwrap_or((0, String::new()));
                    seen.lock().unwrap().push(Seen {
                        message: step.message,
                        kind: step.kind.clone(),
                        link: step.link,
                        status,
                        edge,
                        at_ms: trackedge::event::now_ms(),
                    });
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let mut out = std::fs::File::create(out_path).expect("seen file");
    for seen in seen.lock().unwrap().iter() {
        writeln!(out, "{}", serde_json::to_string(seen).unwrap()).expect("write");
    }
}

/// The collector: common::upstream's receiver on 0.0.0.0:9000 of the hub
/// namespace, appending every accepted event to a file as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a role of the fleet test, run by it inside the hub namespace"]
async fn role_collector() {
    let out_path = std::env::var("FLEET_COLLECTED").expect("FLEET_COLLECTED");
    let upstream = common::upstream::Upstream::start_on(
        "0.0.0.0:9000".parse().unwrap(),
        common::upstream::Mode::Accept,
    )
    .await;
    println!("collector listening");
    let mut out = std::fs::File::create(&out_path).expect("collected file");
    let mut written = 0;
    // Runs until the fleet test kills it.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let received = upstream.received.lock().unwrap();
        for event in &received.events[written..] {
            writeln!(out, "{event}").expect("write");
        }
        written = received.events.len();
        out.flush().expect("flush");
    }
}

// ---------------------------------------------------------------------------------
// The test

fn nginx_config(dir: &Path) -> String {
    let servers: String = (1..=EDGES)
        .map(|k| {
            format!(
                "        server {}:8080 max_fails=1 fail_timeout=2s;\n",
                edge_addr(k)
            )
        })
        .collect();
    let d = dir.display();
    format!(
        r#"worker_processes 1;
user root;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    # The routing key: the 8 characters after the route letter (docs/fleet.md).
    # URLs without one hash on their whole path.
    map $uri $trackedge_route_key {{
        "~^/[ocfus]/(?<key>[A-Za-z0-9_-]{{8}})/" $key;
        default $uri;
    }}
    upstream edges {{
        hash $trackedge_route_key consistent;
{servers}        keepalive 32;
    }}
    server {{
        listen {hub}:8080;
        location / {{
            proxy_pass http://edges;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
            add_header X-Edge $upstream_addr always;
        }}
    }}
}}
"#,
        hub = hub_addr(CLIENT_LINK),
    )
}

fn edge_config(k: usize) -> String {
    format!(
        "node_id = \"edge-{k}\"\n\
         [client_ip]\ntrusted_proxies = [\"{hub}\"]\n\
         [rate_limit]\nenabled = false\n\
         [dedup]\nburst_window_ms = {BURST_WINDOW_MS}\n\
         [spool]\nbatch_delay_ms = 5\nflush_every_ms = 100\n\
         [forward]\nsink = \"http\"\nbackoff_initial_ms = 20\nbackoff_max_ms = 500\n\
         [forward.http]\nurl = \"http://{hub}:9000/ingest\"\n",
        hub = hub_addr(k),
    )
}

/// Reads the edge's `trackedge listening` line (it prints it once both listeners
/// are bound); the rest of its stdout is drained in the background.
fn wait_listening(child: &mut Child, what: &str) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read stdout");
    assert!(line.contains("listening"), "{what} did not start: {line:?}");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
}

fn drain_stderr(child: &mut Child, path: PathBuf) {
    let mut stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        if let Ok(mut file) = std::fs::File::create(path) {
            let _ = std::io::copy(&mut stderr, &mut file);
        }
    });
}

#[test]
fn a_balanced_fleet_keeps_every_hit_and_every_message_on_one_edge() {
    let (_ip, nginx) = match prerequisites() {
        Ok(found) => found,
        Err(why) => {
            common::broker::require::<()>(Err(why), "fleet");
            return;
        }
    };
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut fleet = Fleet::create().unwrap_or_else(|e| panic!("namespaces: {e}"));

    // The signing keys: the only state the edges share.
    let keys_text = "1:fleet-shared-secret-of-at-least-32-bytes-0001\n";
    let keys_file = dir.join("keys.txt");
    std::fs::write(&keys_file, keys_text).unwrap();
    let keys = trackedge::keys::load(&keys_file, false).expect("keys");

    // Collector in the hub.
    let me = std::env::current_exe().expect("test binary");
    let collected = dir.join("collected.ndjson");
    let collector = fleet.spawn(
        "hub",
        &me,
        &["--ignored", "--exact", "role_collector", "--nocapture"],
        &[("FLEET_COLLECTED", collected.display().to_string())],
    );
    drain_stderr(&mut fleet.children[collector], dir.join("collector.log"));
    {
        let stdout = fleet.children[collector].stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("collector listening")
        {
            line.clear();
        }
        assert!(
            line.contains("collector listening"),
            "collector did not start"
        );
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    }

    // Three edges, each with its own data dir and a copy of the key file.
    let edge_bin = PathBuf::from(common::BIN);
    let mut edge_index = [0usize; EDGES + 1];
    let start_edge = |fleet: &mut Fleet, k: usize, run: u32| -> usize {
        let data = dir.join(format!("edge-{k}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("keys.txt"), keys_text).unwrap();
        std::fs::write(data.join("trackedge.toml"), edge_config(k)).unwrap();
        let config = data.join("trackedge.toml").display().to_string();
        let data_arg = data.display().to_string();
        let public = format!("{}:8080", edge_addr(k));
        let index = fleet.spawn(
            &format!("e{k}"),
            &edge_bin,
            &[
                "serve",
                "--config",
                &config,
                "--data-dir",
                &data_arg,
                "--public-addr",
                &public,
                "--admin-addr",
                "127.0.0.1:9090",
            ],
            &[],
        );
        drain_stderr(
            &mut fleet.children[index],
            data.join(format!("stderr-{run}.log")),
        );
        wait_listening(&mut fleet.children[index], &format!("edge {k}"));
        index
    };
    for (k, slot) in edge_index.iter_mut().enumerate().skip(1) {
        *slot = start_edge(&mut fleet, k, 0);
    }

    // nginx in the hub.
    std::fs::write(dir.join("nginx.conf"), nginx_config(dir)).unwrap();
    let nginx_conf = dir.join("nginx.conf").display().to_string();
    let hub = fleet.ns("hub");
    run(
        "ip",
        &[
            "netns",
            "exec",
            &hub,
            nginx.to_str().unwrap(),
            "-t",
            "-q",
            "-c",
            &nginx_conf,
        ],
    )
    .unwrap_or_else(|e| panic!("nginx config: {e}"));
    let lb = fleet.spawn("hub", &nginx, &["-c", &nginx_conf], &[]);
    drain_stderr(&mut fleet.children[lb], dir.join("nginx.stderr"));
    let lb_addr = format!("{}:8080", hub_addr(CLIENT_LINK));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("nginx.pid")).is_ok_and(|p| !p.trim().is_empty()) {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The client, in its namespace, runs the plan while edge 2 is killed and
    // restarted.
    let steps = plan(&keys);
    let plan_path = dir.join("plan.jsonl");
    let mut out = std::fs::File::create(&plan_path).unwrap();
    for step in &steps {
        writeln!(out, "{}", serde_json::to_string(step).unwrap()).unwrap();
    }
    let seen_path = dir.join("seen.jsonl");
    let client = fleet.spawn(
        "cli",
        &me,
        &["--ignored", "--exact", "role_client", "--nocapture"],
        &[
            ("FLEET_PLAN", plan_path.display().to_string()),
            ("FLEET_SEEN", seen_path.display().to_string()),
            ("FLEET_TARGET", lb_addr.clone()),
        ],
    );
    drain_stderr(&mut fleet.children[client], dir.join("client.log"));
    let victim = 2;
    std::thread::sleep(Duration::from_secs(4));
    let killed_at = trackedge::event::now_ms();
    let _ = fleet.children[edge_index[victim]].kill();
    let _ = fleet.children[edge_index[victim]].wait();
    std::thread::sleep(Duration::from_secs(1));
    edge_index[victim] = start_edge(&mut fleet, victim, 1);
    let client_deadline = Instant::now() + Duration::from_secs(120);
    let client_status = loop {
        if let Some(status) = fleet.children[client].try_wait().expect("client") {
            break status;
        }
        assert!(
            Instant::now() < client_deadline,
            "the client did not finish in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        client_status.success(),
        "client failed: {}",
        std::fs::read_to_string(dir.join("client.log")).unwrap_or_default()
    );

    // Graceful stops deliver what the edges hold; then the collector stops growing.
    for &index in &edge_index[1..] {
        let pid = fleet.children[index].id().to_string();
        run("kill", &["-TERM", &pid]).expect("SIGTERM");
    }
    for (k, &index) in edge_index.iter().enumerate().skip(1) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.children[index].try_wait().expect("edge").is_none() {
            assert!(Instant::now() < deadline, "edge {k} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    let seen: Vec<Seen> = std::fs::read_to_string(&seen_path)
        .expect("seen")
        .lines()
        .map(|l| serde_json::from_str(l).expect("seen line"))
        .collect();
    let events: Vec<Value> = std::fs::read_to_string(&collected)
        .expect("collected")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let report = check(&seen, &events, killed_at, victim);
    println!(
        "fleet: {} requests in {:.1} s through nginx to {EDGES} edges ({MESSAGES} messages, \
         {} bursts), edge {victim} killed at +{:.1} s and back after 1 s; {report}",
        seen.len(),
        started.elapsed().as_secs_f64(),
        MESSAGES.div_ceil(BURST_EVERY),
        4.0,
    );
    drop(fleet);
}

/// Everything the issue lists, from what the client saw and what the collector got.
fn check(seen: &[Seen], events: &[Value], killed_at: u64, victim: usize) -> String {
    let victim_addr = format!("{}:8080", edge_addr(victim));
    // Zero id collisions: one id, one event (copies from retries are identical).
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    let mut copies = 0;
    for event in events {
        let id = event["id"].as_str().expect("id");
        match by_id.get(id) {
            None => {
                by_id.insert(id, event);
            }
            Some(first) => {
                assert_eq!(*first, event, "two different events share the id {id}");
                copies += 1;
            }
        }
    }
    let unique: Vec<&Value> = by_id.values().copied().collect();
    for event in &unique {
        assert_eq!(event["id"].as_str().map(str::len), Some(26));
    }

    // Which edge each message met, and whether it was near the failover.
    let mut edges_of: HashMap<usize, HashSet<&str>> = HashMap::new();
    let mut around_failover: HashSet<usize> = HashSet::new();
    let mut answered = 0;
    for hit in seen {
        let ok =
            (hit.kind == "open" && hit.status == 200) || (hit.kind == "click" && hit.status == 302);
        if ok {
            answered += 1;
        }
        edges_of
            .entry(hit.message)
            .or_default()
            .insert(hit.edge.as_str());
        let on_victim = hit.edge.contains(&victim_addr);
        // Unanswered, retried by nginx on a second edge, or answered by the victim in
        // its loss window or after its restart (which forgot what it had seen).
        if !ok || hit.edge.contains(',') || (on_victim && hit.at_ms + LOSS_WINDOW_MS >= killed_at)
        // (the victim forgot at its restart what it had seen: flags start over)
        {
            around_failover.insert(hit.message);
        }
    }
    for (message, edges) in &edges_of {
        if edges.len() > 1 {
            around_failover.insert(*message);
        }
    }
    assert_eq!(
        answered,
        seen.len() - seen.iter().filter(|h| h.status == 0).count(),
        "every hit that got an answer got the right one"
    );

    // Per message: events by (kind, link) against hits answered.
    let mut got: HashMap<(usize, String, u32), Vec<&Value>> = HashMap::new();
    for event in &unique {
        let message: usize = event["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("msg-"))
            .and_then(|n| n.parse().ok())
            .expect("message id");
        let kind = event["kind"].as_str().unwrap().to_owned();
        let link = event["link"].as_u64().unwrap() as u32;
        got.entry((message, kind, link)).or_default().push(event);
    }
    let mut want: HashMap<(usize, String, u32), usize> = HashMap::new();
    for hit in seen.iter().filter(|h| h.status == 200 || h.status == 302) {
        *want
            .entry((hit.message, hit.kind.clone(), hit.link))
            .or_default() += 1;
    }
    let mut missing_around = 0;
    let mut extra_around = 0;
    let mut nodes = HashSet::new();
    for (key, wanted) in &want {
        let events = got.get(key).map_or(&[][..], Vec::as_slice);
        for event in events {
            nodes.insert(event["node"].as_str().unwrap_or_default().to_owned());
        }
        if around_failover.contains(&key.0) {
            missing_around += wanted.saturating_sub(events.len());
            extra_around += events.len().saturating_sub(*wanted);
            continue;
        }
        assert_eq!(
            events.len(),
            *wanted,
            "message {} {} link {}: {wanted} hits answered, {} events arrived",
            key.0,
            key.1,
            key.2,
            events.len()
        );
    }
    assert_eq!(nodes.len(), EDGES, "every edge recorded: {nodes:?}");
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &unique {
        *per_node
            .entry(event["node"].as_str().unwrap_or_default())
            .or_default() += 1;
    }

    // A burst's first clicks are relabelled after they left, by reclassify events.
    let mut relabelled: HashMap<&str, &str> = HashMap::new();
    for event in unique.iter().filter(|e| e["kind"] == "reclassify") {
        for id in event["ids"].as_array().into_iter().flatten() {
            relabelled.insert(
                id.as_str().unwrap_or_default(),
                event["class"].as_str().unwrap_or_default(),
            );
        }
    }

    // Flags and bursts, for every message that stayed on one live edge.
    let mut checked = 0;
    let mut bursts = 0;
    for message in 0..MESSAGES {
        if around_failover.contains(&message) {
            continue;
        }
        checked += 1;
        let mut opens: Vec<&Value> = got
            .get(&(message, "open".into(), 0))
            .cloned()
            .unwrap_or_default();
        opens.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
        let firsts: Vec<bool> = opens.iter().map(|e| e["first"] == true).collect();
        assert_eq!(
            firsts,
            [true, false],
            "message {message}: first open, then a repeat"
        );
        let mut clicks: Vec<&Value> = (1..=6)
            .flat_map(|link| {
                got.get(&(message, "click".into(), link))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        clicks.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
        let summary: Vec<(u64, bool, String)> = clicks
            .iter()
            .map(|e| {
                let id = e["id"].as_str().unwrap_or_default();
                let class = relabelled
                    .get(id)
                    .copied()
                    .unwrap_or(e["class"].as_str().unwrap_or_default());
                (
                    e["link"].as_u64().unwrap(),
                    e["first"] == true,
                    class.to_owned(),
                )
            })
            .collect();
        let human = || "human".to_owned();
        let burst = || "link_scanner:burst".to_owned();
        let mut expected = vec![(1, true, human()), (1, false, human()), (2, true, human())];
        if message % BURST_EVERY == 0 {
            bursts += 1;
            // The clicks that opened the burst too, once relabelled.
            expected.extend([
                (3, true, burst()),
                (4, true, burst()),
                (5, true, burst()),
                (6, true, burst()),
            ]);
        }
        assert_eq!(
            summary, expected,
            "message {message}: clicks, flags and classes"
        );
    }
    assert!(
        checked * 2 > MESSAGES,
        "most messages never came near the failover ({checked} of {MESSAGES})"
    );
    format!(
        "{answered} hits answered, {} distinct events ({copies} resent copies), 0 id \
         collisions; {checked} messages checked exactly (flags, {bursts} bursts); {} around \
         the failover: {missing_around} hits lost in the kill's loss window, \
         {extra_around} recorded twice (nginx retried them on another edge); events per \
         edge {per_node:?}",
        unique.len(),
        around_failover.len(),
    )
}
