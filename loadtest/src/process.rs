//! Servers the harness starts as child processes: pinned to a core with `taskset`
//! when asked, ready once they print their listening line, stopped by their own
//! pid with SIGTERM and a bounded wait (SIGKILL after it), never by name.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

pub struct Spawned {
    pub name: String,
    child: Child,
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stderr_log: PathBuf,
}

/// Wraps `program args` in `taskset -c CORE` when `core` is set. taskset execs the
/// program, so the child's pid is the server's own.
pub fn command(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(core.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// `name` in the usual system directories or on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let known = ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"];
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    known
        .iter()
        .map(PathBuf::from)
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs a load client to its end: its standard output, or an error carrying both of
/// its streams when it failed.
pub fn client_output(cmd: &mut Command, name: &str) -> anyhow::Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{name} failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(text)
}

/// Pins every thread of this process to `core` (threads started later inherit it).
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset could not pin the client to core {core}");
    }
    Ok(())
}

/// Waits (bounded) until `addr` accepts a connection.
pub fn wait_accepting(addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("nothing accepts on {addr}; the server's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Spawned {
    /// Starts `cmd` and waits (bounded) for a stdout line with `public=ADDR` and
    /// optionally `admin=ADDR`.
    pub fn start(name: &str, mut cmd: Command, stderr_log: &Path) -> anyhow::Result<Spawned> {
        let stderr = std::fs::File::create(stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        // Reading the line happens on a thread so a silent child cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) if !line.is_empty() => line,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
                bail!("{name} did not start ({outcome:?}); its stderr:\n{log}");
            }
        };
        let field = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        let Some(public) = field("public=") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} printed no address: {line:?}");
        };
        Ok(Spawned {
            name: name.to_owned(),
            admin: field("admin="),
            public,
            child,
            stderr_log: stderr_log.to_owned(),
        })
    }

    /// Adopts a child that has no listening line (nginx): ready once `public` accepts.
    pub fn adopt(
        name: &str,
        mut child: Child,
        public: SocketAddr,
        stderr_log: &Path,
    ) -> anyhow::Result<Spawned> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&public, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
                bail!("{name} is not accepting on {public}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Spawned {
            name: name.to_owned(),
            child,
            public,
            admin: None,
            stderr_log: stderr_log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to `grace`; SIGKILL after that. Returns whether it
    /// exited on its own (a graceful stop).
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<bool> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status.success());
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // A server that handles SIGTERM exits 0; death by the signal is not graceful.
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(false)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop(Duration::from_secs(5));
        }
    }
}
