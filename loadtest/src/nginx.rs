//! nginx `empty_gif` with an access log, the reference the edge should beat per
//! request: one process (`master_process off`, one worker), keep-alive, all paths
//! inside a temp dir. Skipped with a note when nginx is not installed.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

use crate::process::{self, Spawned};

/// nginx from the usual places or PATH.
pub fn locate() -> Option<PathBuf> {
    let known = [
        "/usr/sbin/nginx",
        "/usr/bin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ];
    known
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nginx"))
                    .find(|p| p.exists())
            })
        })
}

/// nginx cannot report a port it chose, so one is picked here (a tiny race with
/// other processes binding at the same moment, acceptable on a test machine).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("pick a port for nginx")?;
    Ok(listener.local_addr()?)
}

fn config(dir: &Path, addr: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/access.log combined;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
           fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           keepalive_requests 10000000;\n  keepalive_timeout 75s;\n\
           server {{\n    listen {addr};\n\
             location /o/ {{ empty_gif; add_header Cache-Control \"no-store, no-cache, must-revalidate, private\"; }}\n\
             location / {{ return 302 https://shop.example/landing/1?utm_source=mail; }}\n  }}\n}}\n"
    )
}

pub fn spawn(bin: &Path, dir: &Path, core: Option<usize>) -> anyhow::Result<Spawned> {
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let addr = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, addr))
        .with_context(|| format!("cannot write {}", conf.display()))?;
    let log = dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).context("nginx stderr log")?;
    let child = process::command(bin, core)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot start nginx")?;
    Spawned::adopt("nginx", child, addr, &log)
}
