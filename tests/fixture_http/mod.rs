//! A loopback HTTP server for tests of the operator scripts: fixed responses by request
//! path, one request per connection, the paths asked for recorded. std only.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves fixed responses by request path, one request per connection, and records
/// the paths asked for. Stops on drop.
pub struct FixtureServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    handle: Option<JoinHandle<()>>,
}

impl FixtureServer {
    pub fn start(routes: HashMap<String, (u16, Vec<u8>)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, seen_paths) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            // Bounded: a test makes a handful of requests.
            for stream in listener.incoming().take(64) {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &routes, &seen_paths);
                }
            }
        });
        FixtureServer {
            addr,
            stop,
            seen,
            handle: Some(handle),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn serve(stream: TcpStream, routes: &HashMap<String, (u16, Vec<u8>)>, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    if path.is_empty() {
        return;
    }
    seen.lock().expect("seen lock").push(path.clone());
    let (status, body) = routes
        .get(&path)
        .cloned()
        .unwrap_or((404, b"not found".to_vec()));
    let reason = if status == 200 { "OK" } else { "Error" };
    let mut out = &stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(&body);
}

/// One route: a path and its status and body.
pub fn route(path: &str, status: u16, body: impl Into<Vec<u8>>) -> (String, (u16, Vec<u8>)) {
    (path.to_string(), (status, body.into()))
}

/// Whether python3 (3.11+, for tomllib) runs; under CI its absence fails the test.
pub fn python3(test: &str) -> bool {
    let works = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys, tomllib; sys.exit(0 if sys.version_info >= (3, 11) else 1)")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !works && std::env::var("CI").as_deref() == Ok("true") {
        panic!("python3 (3.11 or newer) is required by {test}; .ci/run installs it");
    }
    if !works {
        eprintln!("skipping {test}: python3 3.11+ not found");
    }
    works
}
