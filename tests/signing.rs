//! Signed batches: the real binary forwards to a receiver on 127.0.0.1 that verifies
//! every batch's Standard Webhooks signature on the raw body (written here from the
//! spec, independent of the edge's code) before it decompresses anything, refuses a
//! batch changed on the way, and follows a secret rotation.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Sha256;
use tokio::net::TcpListener;

use common::{claims, eventually, get, TestServer};
use trackedge::Kind;

const WAIT: Duration = Duration::from_secs(20);
/// How far a batch's timestamp may be from the receiver's clock.
const TOLERANCE_SECS: u64 = 300;

/// Why a receiver refuses a batch.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    MissingHeader,
    StaleTimestamp,
    NoMatchingSignature,
}

/// A receiver's check, from the Standard Webhooks spec: the timestamp is recent and
/// some `v1,` signature in the header is the HMAC-SHA256 of `id.timestamp.body`
/// under a secret the receiver holds (compared in constant time by `verify_slice`).
fn verify(secrets: &[Vec<u8>], headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(Refusal::MissingHeader)
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let sent: u64 = timestamp.parse().map_err(|_| Refusal::StaleTimestamp)?;
    let now = trackedge::event::now_ms() / 1000;
    if sent.abs_diff(now) > TOLERANCE_SECS {
        return Err(Refusal::StaleTimestamp);
    }
    for signature in signatures.split(' ') {
        let Some(encoded) = signature.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = STANDARD.decode(encoded) else {
            continue;
        };
        for secret in secrets {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            if mac.verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
    }
    Err(Refusal::NoMatchingSignature)
}

#[derive(Default)]
struct Log {
    /// Every event id accepted.
    ids: HashSet<String>,
    accepted_batches: u64,
    refused: Vec<Refusal>,
    /// Signatures per accepted request's header.
    signature_counts: Vec<usize>,
    /// (webhook-id, Idempotency-Key) of accepted batches.
    id_pairs: Vec<(String, String)>,
    /// The last accepted request, to tamper with afterwards.
    last: Option<(HeaderMap, Bytes)>,
}

struct Receiver {
    addr: SocketAddr,
    secrets: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Flips a body byte before verifying, as a party on the way would.
    tamper: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    async fn start(secrets: Vec<Vec<u8>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            secrets: Arc::new(Mutex::new(secrets)),
            tamper: Default::default(),
            log: Default::default(),
        };
        let (secrets, tamper, log) = (
            receiver.secrets.clone(),
            receiver.tamper.clone(),
            receiver.log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (secrets, tamper, log) = (secrets.clone(), tamper.clone(), log.clone());
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (secrets, tamper, log) = (secrets.clone(), tamper.clone(), log.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let mut body = body.collect().await.unwrap().to_bytes();
                            if tamper.load(std::sync::atomic::Ordering::SeqCst) {
                                let mut changed = body.to_vec();
                                let last = changed.len() - 1;
                                changed[last] ^= 1;
                                body = Bytes::from(changed);
                            }
                            let secrets = secrets.lock().unwrap().clone();
                            Ok::<_, Infallible>(receive(&secrets, &parts.headers, body, &log))
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }
}

fn receive(
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: Bytes,
    log: &Mutex<Log>,
) -> Response<Full<Bytes>> {
    let mut log = log.lock().unwrap();
    if let Err(refusal) = verify(secrets, headers, &body) {
        log.refused.push(refusal);
        return status(StatusCode::UNAUTHORIZED);
    }
    // Only a verified body is decompressed.
    let mut text = String::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .is_err()
    {
        return status(StatusCode::BAD_REQUEST);
    }
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        log.ids.insert(event["id"].as_str().unwrap().to_owned());
    }
    let value = |name: &str| headers[name].to_str().unwrap().to_owned();
    log.accepted_batches += 1;
    let count = value("webhook-signature").split(' ').count();
    log.signature_counts.push(count);
    let pair = (value("webhook-id"), value("idempotency-key"));
    log.id_pairs.push(pair);
    log.last = Some((headers.clone(), body));
    status(StatusCode::OK)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

fn whsec(secret: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(secret))
}

async fn open(server: &TestServer, message: &str) {
    let path = server.path_for(&claims(Kind::Open, message));
    assert_eq!(get(server.public, &path).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_is_signed_a_tampered_one_is_refused_and_secrets_rotate() {
    let old = vec![1u8; 32];
    let new = vec![2u8; 32];
    let receiver = Receiver::start(vec![old.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    // Rotation, step 1: the edge signs with the new secret and still with the old one.
    std::fs::write(
        &secret_file,
        format!("# new first\n{}\n{}\n", whsec(&new), whsec(&old)),
    )
    .unwrap();
    let server = TestServer::start(&format!(
        "[forward]\nsink = \"http\"\nmax_batch_events = 5\nbackoff_initial_ms = 10\n\
         backoff_max_ms = 50\n[forward.http]\nurl = \"{}\"\nsigning_secret_file = {:?}\n",
        receiver.url(),
        secret_file
    ));

    for n in 0..20 {
        open(&server, &format!("m-{n}")).await;
    }
    let all = eventually(WAIT, || async {
        receiver.log.lock().unwrap().ids.len() == 20
    })
    .await;
    assert!(all, "not every event arrived verified");
    {
        let log = receiver.log.lock().unwrap();
        assert!(log.refused.is_empty(), "{:?}", log.refused);
        assert!(log.accepted_batches >= 1);
        assert!(log.signature_counts.iter().all(|n| *n == 2));
        assert!(log
            .id_pairs
            .iter()
            .all(|(id, key)| id == key && !id.is_empty()));
    }

    // The last verified batch, changed in any signed part, no longer verifies.
    let (headers, body) = receiver.log.lock().unwrap().last.clone().unwrap();
    let secrets = [old.clone()];
    assert_eq!(verify(&secrets, &headers, &body), Ok(()));
    let mut flipped = body.to_vec();
    flipped[body.len() / 2] ^= 0x20;
    assert_eq!(
        verify(&secrets, &headers, &flipped),
        Err(Refusal::NoMatchingSignature)
    );
    let mut other_id = headers.clone();
    other_id.insert("webhook-id", "edge-x-1-2".parse().unwrap());
    assert_eq!(
        verify(&secrets, &other_id, &body),
        Err(Refusal::NoMatchingSignature)
    );
    let mut later = headers.clone();
    let sent: u64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    later.insert("webhook-timestamp", (sent + 1).into());
    assert_eq!(
        verify(&secrets, &later, &body),
        Err(Refusal::NoMatchingSignature)
    );
    let mut stale = headers.clone();
    stale.insert("webhook-timestamp", (sent - 3600).into());
    assert_eq!(
        verify(&secrets, &stale, &body),
        Err(Refusal::StaleTimestamp)
    );
    assert_eq!(
        verify(&[new.clone(), vec![9; 32]], &headers, &body),
        Ok(()),
        "the other signature verifies under the other secret"
    );

    // The README's receiver snippet agrees, on the same real batch.
    let readme_says =
        |headers: &HeaderMap, body: &[u8]| readme_receiver(&[whsec(&old)], headers, body);
    if let Some(verdict) = readme_says(&headers, &body) {
        assert!(verdict, "the README's snippet refused a real batch");
        assert_eq!(readme_says(&headers, &flipped), Some(false));
        assert_eq!(readme_says(&later, &body), Some(false));
    }

    // Changed on the way: refused, so the edge keeps it as a dead letter.
    receiver
        .tamper
        .store(true, std::sync::atomic::Ordering::SeqCst);
    open(&server, "m-tampered").await;
    let refused = eventually(WAIT, || async {
        server.metric("trackedge_forward_dead_letters_total").await >= 1.0
    })
    .await;
    assert!(refused, "a tampered batch was not refused");
    {
        let log = receiver.log.lock().unwrap();
        assert_eq!(log.refused, vec![Refusal::NoMatchingSignature]);
        assert_eq!(log.ids.len(), 20, "nothing of the tampered batch was taken");
    }
    receiver
        .tamper
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Step 2: the receiver moves to the new secret; step 3: the edge drops the old
    // one (the file is re-read without a restart) and signs once.
    *receiver.secrets.lock().unwrap() = vec![new.clone()];
    open(&server, "m-receiver-moved").await;
    std::fs::write(&secret_file, format!("{}\n", whsec(&new))).unwrap();
    let reloaded = eventually(WAIT, || async {
        server
            .metric("trackedge_forward_signing_reloads_total{result=\"ok\"}")
            .await
            >= 1.0
            || {
                // The reload happens at the next attempt: give it one.
                open(&server, "m-after-rotation").await;
                false
            }
    })
    .await;
    assert!(reloaded, "the rewritten secret file was not picked up");
    let single = eventually(WAIT, || async {
        open(&server, "m-single").await;
        let log = receiver.log.lock().unwrap();
        log.signature_counts.last() == Some(&1)
    })
    .await;
    assert!(single, "batches still carry two signatures");
    let log = receiver.log.lock().unwrap();
    assert_eq!(
        log.refused.len(),
        1,
        "only the tampered batch was refused: {:?}",
        log.refused
    );
    assert!(log.ids.len() > 21);
}

/// Runs the README's Python `verify` on one request: `None` without python3
/// (outside CI).
fn readme_receiver(secrets: &[String], headers: &HeaderMap, body: &[u8]) -> Option<bool> {
    let python = common::tools::require("python3", "python3")?;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let snippet = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a python block in the README");
    assert!(snippet.contains("def verify("), "{snippet}");
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).unwrap();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let driver = format!(
        "{snippet}\nimport json, sys\nargs = json.load(sys.stdin)\n\
         body = open(args['body'], 'rb').read()\n\
         print(verify(args['secrets'], args['headers'], body))\n"
    );
    let input = serde_json::json!({
        "secrets": secrets,
        "body": body_path,
        "headers": {
            "webhook-id": header("webhook-id"),
            "webhook-timestamp": header("webhook-timestamp"),
            "webhook-signature": header("webhook-signature"),
        },
    });
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(driver)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        input.to_string().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.trim() {
        "True" => Some(true),
        "False" => Some(false),
        _ => panic!(
            "the README's snippet failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[test]
fn a_broken_secret_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "not-a-secret\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[forward]\nsink = \"http\"\n[forward.http]\nurl = \"http://127.0.0.1:9/\"\n\
             signing_secret_file = {secret_file:?}\n"
        ),
    )
    .unwrap();
    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--public-addr", "127.0.0.1:0", "--admin-addr"])
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("forward.http.signing_secret_file") && stderr.contains("line 1"),
        "{stderr}"
    );
}
