//! nginx `empty_gif` with an access log, the reference the edge should beat per
//! request: one process (`master_process off`, one worker), keep-alive, all paths
//! inside a temp dir. Skipped with a note when nginx is not installed.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

use crate::certs::TlsFiles;
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

/// The listeners of one nginx: HTTP/1.1, h2c (prior knowledge needs its own port in
/// nginx) and, with a certificate, TLS with ALPN h2 and http/1.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub plain: SocketAddr,
    pub h2c: SocketAddr,
    pub tls: Option<SocketAddr>,
}

/// The answers mirror the floor's and trackedge's: a 43-byte GIF with the same
/// caching headers for `/o/`, a 302 elsewhere; every request goes to the access
/// log (nginx's default `combined` format, written per request as nginx does by
/// default). TLS: the same certificate, TLS 1.2 and 1.3, session tickets on (the
/// default), X25519 first like rustls.
fn config(dir: &Path, ports: &Ports, tls: Option<&TlsFiles>) -> String {
    let d = dir.display();
    let tls_server = match (ports.tls, tls) {
        (Some(addr), Some(files)) => format!(
            "    listen {addr} ssl http2;\n\
             ssl_certificate {};\n    ssl_certificate_key {};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_ecdh_curve X25519:prime256v1;\n\
             ssl_session_tickets on;\n",
            files.cert.display(),
            files.key.display()
        ),
        _ => String::new(),
    };
    let locations = "    location /o/ { empty_gif;\n\
          add_header Cache-Control \"no-store, no-cache, must-revalidate, private\";\n\
          add_header CDN-Cache-Control no-store;\n      add_header Surrogate-Control no-store;\n\
          add_header Pragma no-cache;\n      add_header Expires 0;\n\
          add_header X-Content-Type-Options nosniff; }\n\
        location / { return 302 https://shop.example/landing/1?utm_source=mail; }\n";
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/access.log combined;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
           fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           keepalive_requests 10000000;\n  keepalive_timeout 75s;\n  server_tokens off;\n\
           server {{\n    listen {plain};\n    listen {h2c} http2;\n{tls_server}{locations}  }}\n}}\n",
        plain = ports.plain,
        h2c = ports.h2c,
    )
}

/// Starts nginx with its listeners; ready once every one of them accepts.
pub fn spawn(
    bin: &Path,
    dir: &Path,
    core: Option<usize>,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<(Spawned, Ports)> {
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let ports = Ports {
        plain: free_port()?,
        h2c: free_port()?,
        tls: tls.map(|_| free_port()).transpose()?,
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, &ports, tls))
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
    let spawned = Spawned::adopt("nginx", child, ports.plain, &log)?;
    for addr in [Some(ports.h2c), ports.tls].into_iter().flatten() {
        process::wait_accepting(addr, &log)?;
    }
    Ok((spawned, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_every_listener_and_the_same_headers() {
        let ports = Ports {
            plain: "127.0.0.1:1001".parse().unwrap(),
            h2c: "127.0.0.1:1002".parse().unwrap(),
            tls: Some("127.0.0.1:1003".parse().unwrap()),
        };
        let files = TlsFiles {
            cert: "/x/c.pem".into(),
            key: "/x/k.pem".into(),
        };
        let text = config(Path::new("/d"), &ports, Some(&files));
        assert!(text.contains("listen 127.0.0.1:1001;"));
        assert!(text.contains("listen 127.0.0.1:1002 http2;"));
        assert!(text.contains("listen 127.0.0.1:1003 ssl http2;"));
        assert!(text.contains("ssl_certificate /x/c.pem;"));
        assert!(text.contains("access_log /d/access.log combined;"));
        for header in [
            "CDN-Cache-Control",
            "Surrogate-Control",
            "Pragma",
            "Expires",
            "X-Content-Type-Options",
        ] {
            assert!(text.contains(header), "{header}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(!config(Path::new("/d"), &ports, None).contains("ssl"));
    }
}
